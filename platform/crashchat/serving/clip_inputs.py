"""A request's video, turned into model inputs with the probe, limits and sampling of preprocessing.

The decoded clip is shared by every task asked about it: the video processor runs once and each
model replica only tokenizes its prompt around the clip's placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crashchat.video.decode import DecodedClip
from crashchat.video.model_inputs import VideoInputs


@dataclass
class ClipInputs:
    """One processed request clip, ready for any replica with the same processor."""

    video: VideoInputs
    timestamps: list[float]
    duration: float
    source_fps: float
    width: int
    height: int
    decode_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What the response reports about the clip."""
        return {
            "duration_s": round(self.duration, 3),
            "fps": round(self.source_fps, 3),
            "width": self.width,
            "height": self.height,
            "frames_sampled": len(self.timestamps),
            "decode_ms": round(self.decode_ms, 1),
        }


def build_clip_inputs(
    clip: DecodedClip, builder: Any, width: int, height: int, decode_ms: float
) -> ClipInputs:
    """Run the processor (an :class:`~crashchat.video.model_inputs.InputBuilder`) on a clip.

    Raises:
        ValueError: when the decoder returned no frames.
    """
    if clip.frames.shape[0] == 0:
        raise ValueError("the video has no decodable frames")
    video = builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames)
    duration = clip.source_frames / clip.source_fps if clip.source_fps else 0.0
    return ClipInputs(
        video=video,
        timestamps=list(clip.timestamps),
        duration=duration,
        source_fps=clip.source_fps,
        width=width,
        height=height,
        decode_ms=decode_ms,
    )


def concat_pixels(clips: list[VideoInputs]) -> np.ndarray:
    """All clips' uint8 patches stacked in request order (the model splits them by grid)."""
    missing = [i for i, c in enumerate(clips) if c.pixels is None]
    if missing:
        raise ValueError(f"clips {missing} carry no pixels (tokenizing-only inputs)")
    return np.concatenate([c.pixels for c in clips if c.pixels is not None], axis=0)
