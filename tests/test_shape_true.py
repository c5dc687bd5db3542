"""A shape-true run of the 7B path on the CPU: VideoLLaMA3-7B's widths at depth 1.

An upstream-layout checkpoint at the 7B's widths (text hidden 3584, 28 heads / 4 KV heads,
intermediate 18944; SigLIP hidden 1152, 16 heads, intermediate 4304; the 4.3k-parameter-wide
projector) with a reduced vocabulary is imported through ``checkpoint import-base``; the three
real clips are preprocessed at the 7B's per-frame visual budget (upstream's 10,240 tokens over 96
frames, here over 4 frames: the same 91 tokens for an HD frame); one Ray Train + DeepSpeed ZeRO-1
LoRA step (r 64 on every LLM linear, gradient checkpointing, as the 7B config) trains on them;
the checkpoint verifies and generates. Asserted: the RoPE base, the visual tokens per frame that
``crashchat plan`` predicts, and a finite loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray
import torch
from typer.testing import CliRunner

from conftest import REAL_CLIPS, needs_shared, start_local_ray
from crashchat.cli import app
from crashchat.config import PreprocessConfig, TrainConfig, load_config
from crashchat.data.annotations import make_record, write_annotation_file
from crashchat.data.synth.labels import PROMPTS, all_label_text
from crashchat.data.tasks import get_mixture
from crashchat.models.checkpoint import load_checkpoint, verify_checkpoint
from crashchat.planning.resource_plan import build_plan
from crashchat.training.runner import TrainInputs, run_training
from crashchat.video.clip_processing import input_builder, tokenizing_builder
from crashchat.video.pipeline import PreprocessInputs, run_preprocess
from crashchat.video.samples import (
    load_manifest,
    read_clip_meta,
    read_samples_table,
    row_to_model_inputs,
)
from upstream_fixture import seven_b_widths, write_upstream_checkpoint

REPO = Path(__file__).resolve().parents[1]
FRAMES = 4
BUDGET = math.ceil(10240 * FRAMES / 96)  # the 7B's training budget per frame, for 4 frames
CLIPS = {
    "cctv_rollover_1280x720_10fps.mp4": (1280, 720, 3.8, "0.9 - 2.4 seconds"),
    "cctv_motorbike_car_640x352_25fps.mp4": (640, 352, 21.2, "7.0 - 9.0 seconds"),
    "cctv_intersection_mpeg4_432x288_24fps.mp4": (432, 288, 5.8, "2.0 - 3.5 seconds"),
}

pytestmark = [needs_shared(REAL_CLIPS), pytest.mark.slow]


def _annotations(folder: Path) -> Path:
    """Both tasks in train; localization in val with other intervals (a record's id is its
    clip, task and answer, so a val copy of a train record would be the same record)."""
    folder.mkdir()
    rec = [make_record(v, PROMPTS["crash_recognition"], "Yes", "CCTV") for v in CLIPS]
    loc = [make_record(v, PROMPTS["crash_localization"], a, "CCTV") for v, (*_, a) in CLIPS.items()]
    val = [
        make_record(v, PROMPTS["crash_localization"], "1.0 - 2.0 seconds", "CCTV") for v in CLIPS
    ]
    write_annotation_file(folder / "crashchat_real_crash_recognition_train.json", rec)
    write_annotation_file(folder / "crashchat_real_crash_localization_train.json", loc)
    write_annotation_file(folder / "crashchat_real_crash_localization_val.json", val)
    return folder


def _train_config(tmp: Path) -> TrainConfig:
    cfg = load_config(REPO / "jobs/configs/videollama3-7b.yaml", TrainConfig)
    cfg.precision = "fp32"  # bf16 matmuls crawl on this CPU; the widths are what is tested
    cfg.scaling = cfg.scaling.model_validate(
        {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 2, "data_cpus": 0.5}
    )  # two threads for the 7B-wide matmuls (a third logical CPU for the data and preprocessing)
    cfg.schedule = cfg.schedule.model_validate(
        {"global_batch_size": 1, "micro_batch_size": 1, "max_steps": 1, "eval_every": 1,
         "save_every": 1, "eval_max_samples": 2}
    )  # fmt: skip
    cfg.tracking.uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg.tracking.registered_model = None
    cfg.tracking.log_checkpoint = False
    return cfg


@pytest.mark.timeout(1200)
def test_7b_widths_import_preprocess_train_and_generate(tmp_path: Path) -> None:
    src = tmp_path / "upstream-7b-widths"
    write_upstream_checkpoint(src, seven_b_widths(layers=1, vision_layers=1), all_label_text())
    native = tmp_path / "native"
    # In process (the console script itself is run by test_packaging): no second start-up of
    # torch and transformers.
    done = CliRunner().invoke(
        app, ["checkpoint", "import-base", "--src", str(src), "--out", str(native)]
    )
    assert done.exit_code == 0, done.output[-3000:]
    config = json.loads((native / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert (config["text_config"]["hidden_size"], config["vision_config"]["hidden_size"]) == (
        3584,
        1152,
    )

    start_local_ray(3)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        data = tmp_path / "preprocessed"
        pre = PreprocessConfig(fps=10, max_frames=FRAMES, max_visual_tokens=BUDGET)
        inputs = PreprocessInputs([_annotations(tmp_path / "ann")], REAL_CLIPS, native, data)
        result = run_preprocess(pre, inputs, None)
        assert result.failures == [] and result.samples == 9
        cfg = _train_config(tmp_path)
        rows = read_samples_table(data).to_pylist()
        # The data workers tokenized with the tokenizer alone (the imported layout allows it):
        # the same ids and labels the whole processor gives.
        assert tokenizing_builder(str(native)).processor is None
        full = input_builder(str(native))
        for row in rows:
            video = full.video_from_meta(read_clip_meta(data, row["clip_key"]))
            ids, labels = full.tokens(video, row["prompt"], row["answer"])
            assert (row["input_ids"], row["labels"]) == (ids, labels), row["record_id"]
        for video, (width, height, seconds, _) in CLIPS.items():
            cfg.plan = cfg.plan.model_copy(
                update={"clip_width": width, "clip_height": height, "clip_seconds": seconds,
                        "fps": 10, "max_frames": FRAMES, "max_visual_tokens": BUDGET}
            )  # fmt: skip
            predicted = build_plan(cfg, native).tokens["training"]["visual_tokens_per_frame"]
            for row in (r for r in rows if r["video"] == video):
                _, gh, gw = row["video_grid_thw"]
                assert gh * gw // 4 == predicted, (video, row["video_grid_thw"], predicted)
        assert {r["video_grid_thw"][1] * r["video_grid_thw"][2] // 4 for r in rows} == {91, 96}
        # With --data the plan reads the dataset: its real tokens and bytes, pixels once per clip.
        measured = build_plan(cfg, native, data)
        assert measured.tokens["training"]["visual_tokens_per_frame"] == 96
        assert measured.tokens["training"]["sequence_tokens"] == max(
            len(r["input_ids"]) for r in rows
        )
        storage = measured.storage
        assert "measured" in storage["source"] and storage["clips"] == 3
        assert storage["bytes_per_record"] < storage["bytes_per_clip"] / 2  # 3 records a clip

        mixtures = [get_mixture("crash_localization")]
        results, _ = run_training(cfg, TrainInputs(data, str(native), tmp_path / "out", mixtures))
    finally:
        ray.shutdown()
    (res,) = results
    assert res.error is None, res.error
    assert res.steps == 1 and math.isfinite(res.history[0]["train_loss"])
    assert res.best_eval_loss is not None and math.isfinite(res.best_eval_loss)
    ckpt = tmp_path / "out" / "crash_localization"
    verify_checkpoint(ckpt)
    loaded = load_checkpoint(ckpt)
    assert loaded.model.config.text_config.rope_parameters["rope_theta"] == 1_000_000.0
    row = next(r for r in rows if r["task"] == "crash_recognition")
    ids = list(row["input_ids"])
    start = next(i for i, lab in enumerate(row["labels"]) if lab != -100)
    inputs = row_to_model_inputs({**row, "input_ids": ids[:start]}, _norm(data), with_labels=False)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > start


def _norm(data: Path):  # type: ignore[no-untyped-def]
    from crashchat.video.samples import pixel_norm

    return pixel_norm(load_manifest(data))
