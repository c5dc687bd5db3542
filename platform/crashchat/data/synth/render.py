"""Draw scenes as RGB frames and write them as H.264 mp4 files with PyAV.

Cues are deliberately large and high-contrast so a tiny model can learn them from pixels on a CPU:
each actor kind has its own colour and size, the pre-crash behaviour trails a bright streak, and
the crash interval shows an orange burst at the contact, and an orange frame border, both gone
when the vehicles rest. The border reaches every image patch on the edge, so even a frozen random
vision encoder passes the cue on, as a pretrained one passes on a real crash.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from crashchat.data.synth.scenario import STOP_LINE, Scene, Track

ASPHALT = (70, 70, 70)
MARKING = (235, 235, 235)
BURST = (255, 90, 0)
STREAK = (255, 255, 160)
LIGHT_RED = (255, 0, 0)
LIGHT_GREEN = (0, 230, 0)
BORDER = 0.07  # crash-interval border thickness, frame fraction

# (length along the heading, width), in frame fractions, and colour per actor kind.
ACTOR_STYLE: dict[str, tuple[tuple[float, float], tuple[int, int, int]]] = {
    "car": ((0.13, 0.08), (30, 100, 255)),
    "truck": ((0.20, 0.10), (30, 190, 60)),
    "motorbike": ((0.08, 0.05), (255, 210, 0)),
    "cyclist": ((0.07, 0.04), (0, 210, 230)),
    "pedestrian": ((0.05, 0.05), (240, 0, 240)),
    "ego-car": ((0.14, 0.09), (250, 250, 250)),
}


def _fill(
    img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int]
) -> None:
    h, w = img.shape[:2]
    c0, c1 = max(0, round(x0 * w)), min(w, round(x1 * w))
    r0, r1 = max(0, round(y0 * h)), min(h, round(y1 * h))
    if c1 > c0 and r1 > r0:
        img[r0:r1, c0:c1] = color


def _disk(img: np.ndarray, cx: float, cy: float, r: float, color: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    mask = ((xx + 0.5) / w - cx) ** 2 + ((yy + 0.5) / h - cy) ** 2 <= r * r
    img[mask] = color


def _traffic_light(img: np.ndarray, light_red: bool) -> None:
    _fill(img, 0.02, 0.02, 0.16, 0.16, (0, 0, 0))
    _disk(img, 0.09, 0.09, 0.055, LIGHT_RED if light_red else LIGHT_GREEN)


def _background(width: int, height: int, light_red: bool) -> np.ndarray:
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = ASPHALT
    for x in (0.27, 0.5, 0.73):  # dashed lane lines
        for y in np.arange(0.0, 1.0, 0.12):
            _fill(img, x - 0.006, y, x + 0.006, y + 0.06, MARKING)
    _fill(img, 0.3, STOP_LINE - 0.008, 0.7, STOP_LINE + 0.008, MARKING)
    _traffic_light(img, light_red)
    return img


def _crash_border(img: np.ndarray, light_red: bool) -> None:
    for x0, y0, x1, y1 in ((0, 0, 1, BORDER), (0, 1 - BORDER, 1, 1), (0, 0, BORDER, 1),
                           (1 - BORDER, 0, 1, 1)):  # fmt: skip
        _fill(img, x0, y0, x1, y1, BURST)
    _traffic_light(img, light_red)  # the light stays readable (the red-light cause needs it)


def _draw_actor(img: np.ndarray, track: Track, t: float) -> None:
    (length, width), color = ACTOR_STYLE[track.kind]
    x, y = track.position(t)
    hx, hy = track.heading(t)
    vertical = abs(hy) >= abs(hx)
    half_w, half_h = (width / 2, length / 2) if vertical else (length / 2, width / 2)
    if track.streak and track.streak[0] <= t < track.streak[1]:
        # Motion streak behind the actor while it behaves dangerously (the pre-crash cue).
        for k in range(1, 4):
            sx, sy = x - hx * (length * 0.45 * k), y - hy * (length * 0.45 * k)
            _disk(img, sx, sy, max(width, 0.04) * (0.7 - 0.12 * k), STREAK)
    _fill(img, x - half_w, y - half_h, x + half_w, y + half_h, color)


def render_frame(
    scene: Scene, t: float, width: int, height: int, background: np.ndarray | None = None
) -> np.ndarray:
    """The RGB frame (H, W, 3, uint8) of ``scene`` at time ``t`` seconds."""
    img = (
        background if background is not None else _background(width, height, scene.light_red)
    ).copy()
    start, end = scene.crash_start, scene.crash_end
    if scene.crash and start is not None and end is not None and start <= t < end:
        sx, sy = scene.tracks[0].position(t)
        ox, oy = scene.tracks[1].position(t)
        _disk(img, (sx + ox) / 2, (sy + oy) / 2, 0.14, BURST)
        _crash_border(img, scene.light_red)
    for track in scene.tracks:
        _draw_actor(img, track, t)
    return img


def render_frames(
    scene: Scene, fps: int, width: int, height: int, texture: int = 0, seed: int = 0
) -> np.ndarray:
    """All frames of the clip, shape (T, H, W, 3); ``texture`` > 0 adds :func:`add_texture`."""
    n = round(scene.duration * fps)
    bg = _background(width, height, scene.light_red)
    frames = np.stack([render_frame(scene, i / fps, width, height, bg) for i in range(n)])
    return add_texture(frames, texture, seed) if texture else frames


def add_texture(frames: np.ndarray, amplitude: int, seed: int) -> np.ndarray:
    """Camera-like detail: a grain field drifting 2 px per frame, as under a camera's ego-motion.

    Flat synthetic frames decode and compress far better than real footage, so a benchmark on
    them says little; with this grain every frame has detail everywhere, and the encoder follows
    it with motion vectors as it does real footage (amplitude 24: 5.5-7 Mbit/s at 720p30).
    """
    t, h, w, _ = frames.shape
    rng = np.random.default_rng(seed)
    grain = rng.integers(-amplitude, amplitude + 1, (h, w + 2 * t, 3), dtype=np.int16)
    for i in range(t):  # in place: a 10 s HD clip is already 0.8 GB of frames
        noisy = frames[i] + grain[:, 2 * i : 2 * i + w]
        frames[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Encode RGB frames as H.264 (yuv420p) mp4, the same bytes in nearly every run.

    Single-threaded and without B-frames: with x264's B-frame lookahead the same frames encoded
    twice differed (8 encodes, 8 different files, 3 different decoded first frames). Even so,
    once in a full test run one clip of nine had one macroblock row quantised otherwise from its
    20th frame (decoded pixels up to 7 levels apart); the frames drawn never vary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        # "bf" is FFmpeg's name for x264's bframes (an unknown option is silently ignored).
        stream.options = {"crf": "12", "preset": "veryfast", "bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
