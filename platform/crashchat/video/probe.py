"""Probe a video container with PyAV before any decoding, and reject what must not be decoded.

decord can crash its whole process on bad media, so everything that can be known from the
container (is it a video, its codec, size, frame rate, frame count, duration) is checked first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av

from crashchat.config import ProbeLimits


class VideoRejected(ValueError):
    """The file is not a video this platform will decode; the message says why."""


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about a video."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    size_bytes: int
    has_audio: bool

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


def probe_video(path: str | Path, limits: ProbeLimits | None = None) -> VideoProbe:
    """Probe ``path`` and check it against ``limits``.

    Raises:
        VideoRejected: missing or empty file, not a media container, no video stream, zero
            frames, unknown frame rate, or beyond the resolution, duration or size limits.
    """
    limits = limits or ProbeLimits()
    p = Path(path)
    if not p.is_file():
        raise VideoRejected("file not found")
    size = p.stat().st_size
    if size == 0:
        raise VideoRejected("empty file (0 bytes)")
    if size > limits.max_file_mb * 1024 * 1024:
        raise VideoRejected(
            f"file is {size / 2**20:.1f} MB, above the {limits.max_file_mb} MB limit"
        )
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise VideoRejected(
            "not a readable video container (unrecognised, truncated or damaged data)"
        ) from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoRejected(f"cannot open as media: {exc}") from None
    with container:
        kinds = sorted({s.type for s in container.streams})
        if not container.streams.video:
            found = ", ".join(kinds) if kinds else "no streams"
            raise VideoRejected(f"no video stream (found: {found})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        frames = int(stream.frames or 0)
        if frames == 0 and duration > 0 and fps > 0:
            frames = round(duration * fps)
        probe = VideoProbe(
            str(p),
            container.format.name,
            ctx.name or "unknown",
            width,
            height,
            fps,
            frames,
            duration,
            size,
            bool(container.streams.audio),
        )
    _check_limits(probe, limits)
    return probe


def _check_limits(probe: VideoProbe, limits: ProbeLimits) -> None:
    if probe.width <= 0 or probe.height <= 0:
        raise VideoRejected("video stream has no frame size")
    if probe.width > limits.max_width or probe.height > limits.max_height:
        raise VideoRejected(
            f"resolution {probe.width}x{probe.height} is above the {limits.max_width}x{limits.max_height} limit"
        )
    if probe.frames <= 0:
        raise VideoRejected("video stream has zero frames")
    if probe.fps <= 0:
        raise VideoRejected("video stream has no frame rate")
    if probe.duration > limits.max_duration_s:
        raise VideoRejected(
            f"duration {probe.duration:.1f} s is above the {limits.max_duration_s:.0f} s limit"
        )
