"""Which frames of a clip the model sees, with their real timestamps.

Upstream VideoLLaMA3 samples at ``fps`` frames per second (one frame from the centre of each
``source_fps / fps`` segment) and falls back to ``max_frames`` uniformly spaced frames. Its code
compares the clip's *duration in seconds* with ``max_frames``, so a clip shorter than 96 seconds
is never capped (a 60 s clip at 10 fps gives 600 frames). This platform always caps at
``max_frames`` by uniform selection among the fps-sampled frames: the documented intent, and a
bounded memory and token budget. Clips with fewer than ``min_frames`` sampled frames take up to
``min_frames`` uniformly spaced source frames (the VideoLLaMA3 processor needs at least 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameSample:
    """Frame indices into the source clip and their timestamps in seconds."""

    indices: list[int]
    timestamps: list[float]


def sample_frames(
    num_frames: int,
    source_fps: float,
    fps: float = 10.0,
    max_frames: int = 96,
    min_frames: int = 4,
) -> FrameSample:
    """Sample frame indices at ``fps`` from a clip of ``num_frames`` frames at ``source_fps``.

    Raises:
        ValueError: when the clip has no frames or the rates are not positive.
    """
    if num_frames <= 0:
        raise ValueError("clip has no frames")
    if source_fps <= 0 or fps <= 0:
        raise ValueError("frame rates must be positive")
    step = max(source_fps / fps, 1.0)
    count = max(int(num_frames / step), 1)
    indices = [
        min(int(k * step + step / 2), num_frames - 1) if step > 1 else k for k in range(count)
    ]
    indices = sorted(set(indices))
    if len(indices) > max_frames:
        picks = np.linspace(0, len(indices) - 1, max_frames).round().astype(int)
        indices = [indices[i] for i in picks]
    if len(indices) < min_frames:
        n = min(min_frames, num_frames)
        indices = sorted(set(np.linspace(0, num_frames - 1, n).round().astype(int).tolist()))
    return FrameSample(indices, [round(i / source_fps, 3) for i in indices])
