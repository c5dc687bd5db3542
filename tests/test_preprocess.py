"""The Ray Data preprocessing job on a real local Ray (2 CPUs): samples, failures, round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray
import torch

from conftest import REAL_CLIPS, needs_shared, start_local_ray
from crashchat.config import PreprocessConfig
from crashchat.data.annotations import make_record, write_annotation_file
from crashchat.data.synth.labels import PROMPTS
from crashchat.data.validation import load_annotations
from crashchat.video.pipeline import PreprocessInputs, run_preprocess
from crashchat.video.samples import (
    collate_rows,
    load_manifest,
    pixel_norm,
    read_failures,
    read_samples,
    read_samples_table,
    row_to_model_inputs,
)
from media import (
    copy,
    write_audio_only,
    write_random_bytes,
    write_text,
    write_truncated,
    write_video,
    write_zero_byte,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BAD = {
    "zero.mp4": "empty file",
    "random.mp4": "not a readable video container",
    "notes.mp4": "not a readable video container",
    "truncated.mp4": "not a readable video container",
    "truncated_faststart.mp4": "decode error",
    "audio_only.mp4": "no video stream",
    "huge.mp4": "resolution 4112x4112 is above",
    "missing.mp4": "not found",
    "crashme.mp4": "decoder process died",
}


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> Path:
    """The synthetic dataset plus an annotation file naming every kind of bad video."""
    root = tmp_path_factory.mktemp("bad_media")
    copy_tree = root / "videos"
    copy_tree.mkdir()
    for p in (synth_dir / "videos").glob("*.mp4"):
        copy(p, copy_tree / p.name)
    for p in synth_dir.glob("crashchat_*.json"):
        copy(p, root / p.name)
    good = sorted(copy_tree.glob("*crash.mp4"))[0]
    write_zero_byte(copy_tree / "zero.mp4")
    write_random_bytes(copy_tree / "random.mp4")
    write_text(copy_tree / "notes.mp4")
    write_truncated(good, copy_tree / "truncated.mp4")
    fast = write_video(root / "fast.mp4", 112, 112, 40, options={"movflags": "faststart"})
    write_truncated(fast, copy_tree / "truncated_faststart.mp4", 0.4)
    write_audio_only(copy_tree / "audio_only.mp4")
    write_video(copy_tree / "huge.mp4", 4112, 4112, 2)
    # Its own content: a copy of a good clip would share its stored clip and never be decoded.
    write_video(copy_tree / "crashme.mp4", 112, 112, 30)
    prompt = PROMPTS["crash_recognition"]
    records = [make_record(f"videos/{name}", prompt, "Yes", "BAD") for name in BAD]
    records.append(make_record("videos/also_bad_answer.mp4", prompt, "1.0 - 2.0 seconds", "BAD"))
    write_annotation_file(root / "crashchat_bad_crash_recognition_test.json", records)
    return root


@pytest.fixture(scope="module")
def preprocessed(
    local_ray, bad_media: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    out = tmp_path_factory.mktemp("pre")
    cfg = PreprocessConfig(fault_injection="crashme", decode_retries=1)
    result = run_preprocess(
        cfg, PreprocessInputs([bad_media], bad_media, tiny_model_dir, out), address=None
    )
    return out, result


def _unique_good_records(synth_dir: Path) -> set[str]:
    return {s.record_id for f in load_annotations([synth_dir]) for s in f.samples}


def test_every_good_sample_is_written_once(preprocessed: Any, synth_dir: Path) -> None:
    out, result = preprocessed
    table = read_samples_table(out)
    ids = table["record_id"].to_pylist()
    assert len(ids) == len(set(ids)), (
        "a record given in a task file and a group file must be one row"
    )
    assert set(ids) == _unique_good_records(synth_dir)
    assert result.samples == table.num_rows
    manifest = load_manifest(out)
    assert manifest["counts"]["samples"] == table.num_rows
    assert sum(manifest["counts"]["per_task"].values()) == table.num_rows
    assert set(manifest["counts"]["per_split"]) == {"train", "val", "test"}
    assert len(manifest["annotations"]) == len(list(synth_dir.glob("crashchat_*.json"))) + 1
    assert (
        json.loads((out / "prompts.json").read_text())["crash_recognition"]
        == PROMPTS["crash_recognition"]
    )


def test_each_bad_item_is_in_the_failures_table_with_a_reason(preprocessed: Any) -> None:
    out, _ = preprocessed
    failures = read_failures(out)
    by_video = {f["video"]: f for f in failures if f["video"]}
    for name, reason in BAD.items():
        f = by_video[f"videos/{name}"]
        assert reason in f["reason"], (name, f)
        assert (
            f["record_id"]
            and f["task"] == "crash_recognition"
            and f["stage"] in ("probe", "decode")
        )
    assert by_video["videos/crashme.mp4"]["stage"] == "decode"
    ann = [f for f in failures if f["stage"] == "annotation"]
    assert (
        len(ann) == 1
        and ann[0]["index"] == len(BAD)
        and ann[0]["field"] == "conversations[1].value"
    )
    assert "expected 'Yes' or 'No'" in ann[0]["reason"]


def test_samples_hold_model_inputs_with_answer_masked_labels(
    preprocessed: Any, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    out, _ = preprocessed
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = read_samples_table(out).to_pylist()
    for row in rows:
        answer_ids = [t for t in row["labels"] if t != -100]
        assert tok.decode(answer_ids) == row["answer"] + "<|im_end|>"
        assert row["labels"][: len(row["labels"]) - len(answer_ids)] == [-100] * (
            len(row["labels"]) - len(answer_ids)
        )
        assert row["num_frames"] == len(row["timestamps"]) == row["video_grid_thw"][0]
        assert row["timestamps"][1] == pytest.approx(0.1)  # 10 fps clips, real timestamps
        video_tokens = row["input_ids"].count(tok.convert_tokens_to_ids("<|video_pad|>"))
        assert video_tokens == sum(row["video_compression_mask"]) == row["num_frames"] * 4


def test_round_trip_into_a_forward_pass_matches_direct_processing(
    preprocessed: Any, tiny_model_dir: Path, bad_media: Path
) -> None:
    from crashchat.models.loading import load_model
    from crashchat.video.decode import DecodeSpec, decode_clip
    from crashchat.video.model_inputs import InputBuilder

    out, _ = preprocessed
    loaded = load_model(tiny_model_dir)
    norm = pixel_norm(load_manifest(out))
    row = next(r for r in read_samples_table(out).to_pylist() if r["task"] == "crash_localization")
    inputs = row_to_model_inputs(row, norm)
    with torch.no_grad():
        loss = loaded.model(**inputs).loss
    assert torch.isfinite(loss)
    # The same record processed directly (decode + processor in this process) gives the same loss.
    builder = InputBuilder(loaded.processor)
    clip = decode_clip(
        str(bad_media / row["video"]), 112, 112, row["num_frames"], DecodeSpec(frame_size=56)
    )
    vid = builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames)
    ids, labels = builder.tokens(vid, row["prompt"], row["answer"])
    assert ids == row["input_ids"] and labels == row["labels"]
    direct = loaded.processor.video_processor(
        videos=[clip.frames], do_sample_frames=False, return_tensors="pt"
    )
    assert torch.allclose(inputs["pixel_values_videos"], direct["pixel_values_videos"], atol=1e-6)
    # A batch of rows collates into one forward pass too.
    rows = read_samples_table(out).slice(0, 3).to_pylist()
    batch = collate_rows(rows, norm, loaded.processor.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batch).loss)


def test_ray_data_reader_filters_a_mixture(preprocessed: Any) -> None:
    out, _ = preprocessed
    ds = read_samples(out, tasks=["pre_crash_localization", "crash_localization"], splits=["train"])
    rows = ds.take_all()
    assert rows and {r["task"] for r in rows} == {"pre_crash_localization", "crash_localization"}
    assert {r["split"] for r in rows} == {"train"}


def test_rerun_gives_the_same_rows(
    preprocessed: Any, bad_media: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, _ = preprocessed
    cfg = PreprocessConfig(fault_injection="crashme", decode_retries=0)
    run_preprocess(
        cfg, PreprocessInputs([bad_media], bad_media, tiny_model_dir, tmp_path), address=None
    )
    first, second = read_samples_table(out), read_samples_table(tmp_path)
    drop = ["decode_node"]
    assert first.drop(drop).equals(second.drop(drop))
    key = lambda f: (f["video"] or "", f["record_id"] or "")  # noqa: E731
    strip = lambda fs: sorted(({k: v for k, v in f.items() if k != "reason"} for f in fs), key=key)  # noqa: E731
    assert strip(read_failures(out)) == strip(read_failures(tmp_path))


def test_cli_strict_mode_exits_non_zero_listing_failures(
    local_ray, bad_media: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from crashchat.cli import app

    only_bad = tmp_path / "ann"
    only_bad.mkdir()
    copy(
        bad_media / "crashchat_bad_crash_recognition_test.json",
        only_bad / "crashchat_bad_crash_recognition_test.json",
    )
    # In process on the module's Ray (the command joins a connected Ray); the console script
    # itself is run by test_packaging.
    base = [
        "preprocess",
        "--annotations",
        str(only_bad),
        "--video-root",
        str(bad_media),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "out"),
        "--set",
        "fault_injection=crashme",
        "--set",
        "decode_retries=0",
    ]
    lenient = CliRunner().invoke(app, base)
    assert lenient.exit_code == 0, lenient.output[-2000:]
    summary = json.loads(lenient.stdout)
    assert summary["samples"] == 0 and summary["failures"] == len(BAD) + 1
    # Strict mode over one bad clip that fails its probe: the same exit, without a decoder crash
    # (and the restart of its processor) a second time.
    only_zero = tmp_path / "zero"
    only_zero.mkdir()
    write_annotation_file(
        only_zero / "crashchat_zero_crash_recognition_test.json",
        [make_record("videos/zero.mp4", PROMPTS["crash_recognition"], "Yes", "BAD")],
    )
    strict_args = [*base[:1], "--annotations", str(only_zero), *base[3:], "--strict"]
    strict = CliRunner().invoke(app, strict_args)
    assert strict.exit_code == 1
    assert "strict mode" in strict.stderr and "zero.mp4" in strict.stderr


@needs_shared(REAL_CLIPS)
def test_real_clips_preprocess_without_error(
    local_ray, tiny_model_dir: Path, tmp_path: Path
) -> None:
    prompt = PROMPTS["crash_recognition"]
    clips = sorted(REAL_CLIPS.glob("*.mp4"))
    write_annotation_file(
        tmp_path / "crashchat_real_crash_recognition_test.json",
        [make_record(p.name, prompt, "Yes", "REAL") for p in clips],
    )
    result = run_preprocess(
        None,
        PreprocessInputs([tmp_path], REAL_CLIPS, tiny_model_dir, tmp_path / "out"),
        address=None,
    )
    assert result.failures == [] and result.samples == 3
    rows = {r["video"]: r for r in read_samples_table(tmp_path / "out").to_pylist()}
    motorbike = rows["cctv_motorbike_car_640x352_25fps.mp4"]  # 21.2 s at 25 fps -> capped at 96
    assert motorbike["num_frames"] == 96 and motorbike["timestamps"][-1] == pytest.approx(
        21.1, abs=0.1
    )
    rollover = rows["cctv_rollover_1280x720_10fps.mp4"]  # 38 frames at 10 fps
    assert rollover["num_frames"] == 38
    assert isinstance(pa.table({"x": [1]}), pa.Table)


def test_a_hung_decoder_is_cancelled_and_the_rest_finishes(
    local_ray, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    ann = synth_dir / "crashchat_synth_crash_recognition_train.json"
    records = json.loads(ann.read_text())
    hung = records[0]["video"][0]
    cfg = PreprocessConfig(fault_injection=f"hang:{Path(hung).name}", decode_timeout_s=5, fps=2)
    result = run_preprocess(
        cfg, PreprocessInputs([ann], synth_dir, tiny_model_dir, tmp_path), address=None
    )
    assert result.samples == len(records) - 1
    # This Ray has no node with the decode resource: the work ran anywhere, and says so.
    assert "no node offers resource 'cpu_decode'" in result.manifest["placement"]
    [failure] = result.failures
    assert failure["video"] == hung and failure["stage"] == "decode"
    assert "timed out after 5 s" in failure["reason"]


def test_each_clip_is_stored_once_and_records_refer_to_it(
    preprocessed: Any, synth_dir: Path
) -> None:
    import pyarrow.parquet as pq

    from crashchat.video.samples import RECORD_SCHEMA, read_records_table, stored_clip_keys

    out, _ = preprocessed
    records = read_records_table(out)
    keys = set(records["clip_key"].to_pylist())
    videos = set(records["video"].to_pylist())
    assert stored_clip_keys(out) == keys and len(keys) == len(videos)
    assert records.num_rows > 2 * len(keys)  # several records per clip, its pixels once
    for part in (out / "samples").glob("*.parquet"):  # no pixels in the records table
        assert pq.read_schema(part).names == RECORD_SCHEMA.names
    counts = load_manifest(out)["counts"]
    assert counts["clips_written"] == len(keys) and counts["clips_decoded"] == len(keys)


def test_joined_rows_hold_the_tensors_direct_processing_gives(
    preprocessed: Any, tiny_model_dir: Path, bad_media: Path
) -> None:
    """Every record's joined row: the same pixels, grid, mask, ids and labels as decoding and
    processing its clip directly (what schema version 1 stored with every record)."""
    from crashchat.models.loading import load_model
    from crashchat.video.clip_processing import tokenizing_builder
    from crashchat.video.decode import DecodeSpec, decode_clip
    from crashchat.video.model_inputs import InputBuilder
    from crashchat.video.samples import pack_pixels, unpack_pixels

    out, _ = preprocessed
    # The workers tokenized with the tokenizer alone; the ids below come from the processor.
    assert tokenizing_builder(str(tiny_model_dir)).processor is None
    builder = InputBuilder(load_model(tiny_model_dir).processor)
    rows = read_samples_table(out).to_pylist()
    direct: dict[str, Any] = {}
    for row in rows:
        if row["video"] not in direct:
            clip = decode_clip(
                str(bad_media / row["video"]), 112, 112, 40, DecodeSpec(frame_size=56)
            )
            direct[row["video"]] = (
                clip,
                builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames),
            )
        clip, vid = direct[row["video"]]
        assert row["pixel_values"] == pack_pixels(vid.pixels)  # stored pixel-major
        assert (unpack_pixels(row["pixel_values"], row["pixel_shape"]) == vid.pixels).all()
        assert row["video_grid_thw"] == vid.grid_thw
        assert row["video_compression_mask"] == vid.compression_mask
        assert row["frame_indices"] == clip.indices and row["num_frames"] == len(clip.indices)
        ids, labels = builder.tokens(vid, row["prompt"], row["answer"])
        assert row["input_ids"] == ids and row["labels"] == labels


def test_adding_clips_decodes_only_the_new_ones(
    local_ray, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from crashchat.video.samples import stored_clip_keys

    source = synth_dir / "crashchat_synth_crash_recognition_train.json"
    first = json.loads(source.read_text())
    assert len(first) >= 4
    head, tail = first[:-2], first[-2:]
    ann = tmp_path / "ann"
    ann.mkdir()
    write_annotation_file(ann / source.name, head)
    out = tmp_path / "out"
    cfg = PreprocessConfig(fps=2)  # reuse is what is tested: few frames keep it quick
    run_preprocess(cfg, PreprocessInputs([ann], synth_dir, tiny_model_dir, out), address=None)
    before = {k: (out / "clips" / f"{k}.parquet").stat().st_mtime_ns for k in stored_clip_keys(out)}
    write_annotation_file(ann / source.name, head + tail)
    again = run_preprocess(
        cfg, PreprocessInputs([ann], synth_dir, tiny_model_dir, out), address=None
    )
    counts = again.manifest["counts"]
    assert (counts["clips_decoded"], counts["clips_reused"]) == (2, len(head))
    for key, mtime in before.items():  # the stored clips were not rewritten
        assert (out / "clips" / f"{key}.parquet").stat().st_mtime_ns == mtime
    assert again.samples == len(first)
    # Dropping records drops their clips.
    write_annotation_file(ann / source.name, head[:1])
    third = run_preprocess(
        cfg, PreprocessInputs([ann], synth_dir, tiny_model_dir, out), address=None
    )
    assert third.manifest["counts"]["clips_removed"] == len(first) - 1
    assert len(stored_clip_keys(out)) == 1


@pytest.mark.parametrize("version", [1, 2])  # pixels with every record; channel-major clips
def test_a_dataset_in_the_old_layout_is_refused_with_how_to_rebuild(
    tmp_path: Path, version: int
) -> None:
    from crashchat.video.samples import DatasetVersionError

    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": version, "counts": {}}))
    with pytest.raises(
        DatasetVersionError, match=rf"schema version {version}.*crashchat preprocess"
    ):
        load_manifest(tmp_path)


def test_stored_pixels_are_pixel_major_and_round_trip() -> None:
    import numpy as np

    from crashchat.video.samples import pack_pixels, unpack_pixels

    patches = np.random.default_rng(0).integers(0, 256, (5, 3 * 4), dtype=np.uint8)
    stored = pack_pixels(patches)
    # A patch's values are 3 channel planes of 4 pixels; stored, each pixel's R, G, B adjoin.
    assert list(stored[:6]) == [patches[0, 0], patches[0, 4], patches[0, 8],
                                patches[0, 1], patches[0, 5], patches[0, 9]]  # fmt: skip
    back = unpack_pixels(stored, [5, 12])
    assert back.flags.c_contiguous and (back == patches).all()
    with pytest.raises(ValueError, match="not 3 equal channel planes"):
        pack_pixels(patches[:, :11])


def test_a_layout_the_tokenizer_alone_cannot_render_gets_the_whole_processor(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from crashchat.video.clip_processing import input_builder, tokenizing_builder
    from crashchat.video.model_inputs import VideoInputs, placeholder_text

    legacy = tmp_path / "legacy"  # the template in the old chat_template.json, as older exports
    shutil.copytree(tiny_model_dir, legacy)
    template = (legacy / "chat_template.jinja").read_text()
    (legacy / "chat_template.jinja").unlink()
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    builder = tokenizing_builder(str(legacy))
    assert builder.processor is not None
    fast = tokenizing_builder(str(tiny_model_dir))
    assert fast.processor is None
    full = input_builder(str(tiny_model_dir))
    video = VideoInputs(None, [2, 4, 4], 1, [True] * 32, placeholder_text(
        full.video_token, [0.0, 0.5], [3, 3]), [3, 3])  # fmt: skip
    for prompt in PROMPTS.values():
        assert fast.tokens(video, prompt, "Yes") == full.tokens(video, prompt, "Yes")
        assert builder.tokens(video, prompt, "Yes") == full.tokens(video, prompt, "Yes")
