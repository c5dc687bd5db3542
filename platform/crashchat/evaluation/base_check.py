"""A fixed, cheap check of what a model has learned: its loss on a few seeded synthetic clips.

The kept tiny base (``models/tiny_base.py``) records this figure in its manifest when it is
packed; its test recomputes it. Rebuilds of the base are not bit-identical, but the same weights
give the same loss on the same clips, and a pre-trained base scores far below a random one.
Runs in-process (no Ray): the clips are decoded, sampled and tokenized exactly as preprocessing
does, and each answer is scored teacher-forced, as validation during training scores it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from crashchat.config import PreprocessConfig, SynthConfig

# The clips: the distribution the base was pre-trained on (synth-learn.yaml), another seed.
CHECK_SYNTH = SynthConfig(
    videos=12,
    seed=7,
    width=112,
    height=112,
    fps=10,
    min_duration=4.0,
    max_duration=6.0,
    val_fraction=0.0,
    test_fraction=0.0,
)
# What the base was pre-trained on (the perception tasks of make learn's LEARN_MIX).
CHECK_TASKS = ("crash_recognition", "crash_localization", "pre_crash_localization")


def check_loss(
    model_dir: str | Path, work: str | Path, preprocess: PreprocessConfig
) -> dict[str, Any]:
    """Mean teacher-forced loss of ``model_dir`` on the check clips, overall and per task.

    Args:
        model_dir: A model folder (``load_model`` reads it; fp32, SDPA, CPU).
        work: Folder the check clips are written to.
        preprocess: Frame sampling (the one the model was trained with).

    Returns:
        ``{"clips", "records", "loss", "per_task", "synth_seed"}``.
    """
    from crashchat.data.synth import generate_dataset
    from crashchat.data.validation import collect_samples
    from crashchat.models.loading import load_model
    from crashchat.models.metadata import model_frame_size
    from crashchat.video.decode import decode_spec, decode_task
    from crashchat.video.model_inputs import InputBuilder, to_model_inputs
    from crashchat.video.probe import probe_video

    work = Path(work)
    generate_dataset(work, CHECK_SYNTH)
    files, issues = collect_samples([work])
    if issues:
        raise ValueError(f"check clips: {issues[0]}")
    loaded = load_model(model_dir, dtype="fp32", attention="sdpa", device="cpu")
    builder = InputBuilder(loaded.processor)
    spec = decode_spec(preprocess, model_frame_size(model_dir))
    videos: dict[str, Any] = {}
    losses: dict[str, list[float]] = {t: [] for t in CHECK_TASKS}
    samples = sorted(
        {(s.video, s.task, s.prompt, s.answer) for f in files for s in f.samples}, key=str
    )
    for video, task, prompt, answer in samples:
        if task not in CHECK_TASKS:
            continue
        if video not in videos:
            path = str(work / video)
            clip = decode_task(path, probe_video(path), spec)
            videos[video] = builder.video(
                clip.frames, clip.indices, clip.source_fps, clip.source_frames
            )
        inputs = videos[video]
        ids, labels = builder.tokens(inputs, prompt, answer)
        assert inputs.pixels is not None
        batch = to_model_inputs(
            ids, inputs.pixels, inputs.grid_thw, inputs.merge_size, inputs.compression_mask,
            builder.norm, labels,
        )  # fmt: skip
        with torch.no_grad():
            losses[task].append(float(loaded.model(**batch).loss))
    every = [v for vs in losses.values() for v in vs]
    if not every or any(not math.isfinite(v) for v in every):
        raise ValueError(f"{model_dir}: no finite check loss ({len(every)} records)")
    return {
        "clips": len(videos),
        "records": len(every),
        "loss": sum(every) / len(every),
        "per_task": {t: sum(v) / len(v) for t, v in losses.items() if v},
        "synth_seed": CHECK_SYNTH.seed,
    }
