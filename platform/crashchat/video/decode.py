"""Decode sampled frames with decord at the size the model needs.

:func:`decode_clip` is what runs inside a Ray task: if decord crashes the process, only that task's
worker dies and the caller records the clip as failed after bounded retries.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crashchat.video.frame_sampling import sample_frames
from crashchat.video.probe import VideoProbe

if TYPE_CHECKING:
    from crashchat.config import PreprocessConfig


@dataclass(frozen=True)
class DecodeSpec:
    """How to sample and size a clip's frames."""

    fps: float = 10.0
    max_frames: int = 96
    min_frames: int = 4
    frame_size: int | None = None
    max_visual_tokens: int = 16384
    patch_size: int = 14
    merge_size: int = 2
    fault_injection: str | None = None


def decode_spec(cfg: PreprocessConfig, model_frame_size: int | None) -> DecodeSpec:
    """The :class:`DecodeSpec` of a preprocessing config for a model (preprocessing, serving and
    checks sample and size frames the same way).

    Args:
        cfg: The sampling settings.
        model_frame_size: A tiny model's square frame size (``models.metadata``), used when
            ``cfg.frame_size`` is not set; None for real models.
    """
    return DecodeSpec(
        cfg.fps,
        cfg.max_frames,
        cfg.min_frames,
        cfg.frame_size or model_frame_size,
        cfg.max_visual_tokens,
        fault_injection=cfg.fault_injection,
    )


@dataclass
class DecodedClip:
    """Frames (T, H, W, 3) uint8 with their source indices and timestamps."""

    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    source_fps: float
    source_frames: int
    node_id: str = ""


def resolve_frame_size(
    width: int, height: int, num_frames: int, spec: DecodeSpec
) -> tuple[int, int]:
    """Target (height, width): the fixed square size, else VideoLLaMA3's per-frame pixel budget.

    The budget is the processor's arithmetic (``smart_resize`` with ``max_visual_tokens`` tokens
    shared by all frames), so frames decoded at this size pass the processor unresized.
    """
    if spec.frame_size:
        return spec.frame_size, spec.frame_size
    # Imported here: decode workers with a fixed frame size never pay for importing transformers.
    from transformers.models.video_llama_3.video_processing_video_llama_3 import smart_resize

    factor = spec.patch_size * spec.merge_size
    per_frame = max(spec.max_visual_tokens * factor * factor // max(num_frames, 1), factor * factor)
    return smart_resize(
        height, width, factor=factor, min_pixels=factor * factor, max_pixels=per_frame
    )


def decode_clip(
    path: str,
    width: int,
    height: int,
    expected_frames: int,
    spec: DecodeSpec,
    source_fps: float | None = None,
) -> DecodedClip:
    """Open ``path`` with decord at the target size, sample frames and decode only those.

    The frame size depends on how many frames are sampled (the visual budget is shared by the
    clip's frames), which the probe's frame count and frame rate predict; decord must know the
    size when it opens the file. When decord's own count disagrees with the prediction, the clip
    is reopened at the size for the real count.

    Args:
        path: Video file.
        width: Probed frame width.
        height: Probed frame height.
        expected_frames: Probed frame count.
        spec: Sampling and sizing.
        source_fps: Probed frame rate (default: 10 fps, the CrashChat clips' rate).

    Raises:
        RuntimeError: on a decoder error, with decord's message.
    """
    if spec.fault_injection:
        _inject_fault(path, spec.fault_injection)
    import decord

    expected = sample_frames(
        max(expected_frames, 1), source_fps or 10.0, spec.fps, spec.max_frames, spec.min_frames
    )
    h, w = resolve_frame_size(width, height, len(expected.indices), spec)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=w, height=h)
        total = len(reader)
        fps = float(reader.get_avg_fps())
        sample = sample_frames(total, fps, spec.fps, spec.max_frames, spec.min_frames)
        if len(sample.indices) != len(expected.indices):
            resized = resolve_frame_size(width, height, len(sample.indices), spec)
            if resized != (h, w):
                h, w = resized
                reader = decord.VideoReader(
                    path, ctx=decord.cpu(0), num_threads=1, width=w, height=h
                )
        frames = reader.get_batch(sample.indices).asnumpy()
    except decord.DECORDError as exc:
        raise RuntimeError(f"decode error: {str(exc).splitlines()[0][:300]}") from None
    if frames.shape[0] != len(sample.indices) or frames.shape[1:3] != (h, w):
        raise RuntimeError(
            f"decoder returned {frames.shape}, expected {len(sample.indices)}x{h}x{w}"
        )
    return DecodedClip(np.ascontiguousarray(frames), sample.indices, sample.timestamps, fps, total)


def _inject_fault(path: str, rules: str) -> None:
    """Testing aid: a decoder that kills its process (as decord can on bad media) or hangs.

    Comma-separated needles; ``hang:NEEDLE`` hangs, ``NEEDLE`` or ``abort:NEEDLE`` aborts.
    """
    for rule in rules.split(","):
        hang = rule.startswith("hang:")
        needle = rule.removeprefix("hang:").removeprefix("abort:")
        if needle and needle in path:
            if hang:
                time.sleep(3600)
            os.abort()


def decode_task(path: str, probe: VideoProbe, spec: DecodeSpec) -> DecodedClip:
    """:func:`decode_clip` of a probed clip; in a Ray task, records the node it ran on."""
    import ray

    clip = decode_clip(path, probe.width, probe.height, probe.frames, spec, probe.fps)
    if ray.is_initialized():  # asking for the context outside Ray would start a local Ray
        clip.node_id = ray.get_runtime_context().get_node_id()
    return clip
