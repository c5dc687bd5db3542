"""Sample synthetic traffic scenes whose labels follow from what will be drawn.

A scene is a top-down view of a crossroad with a traffic light. In crash scenes a *subject* hits an
*object*: the subject drives normally until the pre-crash cue time (when it starts speeding,
swerving, weaving or runs the red light, drawn with a bright motion streak), touches the object at
the crash start, then both slide together until they come to rest at the crash end. A burst marks
the contact for the whole crash interval. Normal scenes hold vehicles moving along their lanes.

Coordinates are fractions of the frame (x right, y down); times are seconds on the frame grid.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

ACTOR_KINDS = ("car", "truck", "motorbike", "cyclist", "pedestrian", "ego-car")
SUBJECT_KINDS = ("car", "truck", "motorbike", "ego-car")
OBJECT_KINDS = ("car", "truck", "motorbike", "cyclist", "pedestrian")
CAUSES = ("speeding", "red_light", "lane_change", "loss_of_control")

# Lane centres of the vertical road (northbound lanes) and the crossing road (eastbound lane).
LANE_LEFT, LANE_RIGHT = 0.42, 0.58
CROSS_LANE = 0.45
STOP_LINE = 0.68


@dataclass
class Track:
    """Where an actor is over time: piecewise-linear key points (t, x, y)."""

    kind: str
    keys: list[tuple[float, float, float]]
    streak: tuple[float, float] | None = None  # (from, to) seconds: motion streak drawn

    def position(self, t: float) -> tuple[float, float]:
        """Position at time ``t`` (clamped to the first/last key)."""
        keys = self.keys
        if t <= keys[0][0]:
            return keys[0][1], keys[0][2]
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(keys):
            if t <= t1:
                a = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        return keys[-1][1], keys[-1][2]

    def heading(self, t: float, dt: float = 0.05) -> tuple[float, float]:
        """Direction of motion at ``t`` (unit vector; up when still)."""
        x0, y0 = self.position(t - dt)
        x1, y1 = self.position(t + dt)
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy)
        return (dx / n, dy / n) if n > 1e-6 else (0.0, -1.0)


@dataclass
class Scene:
    """One clip's content and its ground truth.

    Attributes:
        clip_id: File stem of the clip.
        duration: Clip length in seconds.
        crash: Whether a crash happens.
        tracks: Actors (subject first, object second in crash scenes).
        light_red: Traffic light colour for the whole clip.
        subject, obj, cause: Crash participants and cause (``None`` in normal scenes).
        cue_time, crash_start, crash_end: Pre-crash cue and crash interval, seconds.
        contact: Contact point (x, y) in frame fractions.
    """

    clip_id: str
    duration: float
    crash: bool
    tracks: list[Track] = field(default_factory=list)
    light_red: bool = False
    subject: str | None = None
    obj: str | None = None
    cause: str | None = None
    cue_time: float | None = None
    crash_start: float | None = None
    crash_end: float | None = None
    contact: tuple[float, float] | None = None


def _on_grid(t: float, fps: int) -> float:
    return round(round(t * fps) / fps, 1)


def _slide(
    track_keys: list[tuple[float, float, float]],
    end: float,
    direction: tuple[float, float],
    distance: float,
) -> None:
    x, y = track_keys[-1][1], track_keys[-1][2]
    track_keys.append((end, x + direction[0] * distance, y + direction[1] * distance))


_Point = tuple[float, float]


def _crash_geometry(
    rng: random.Random, cause: str
) -> tuple[float, _Point, _Point, _Point, _Point, _Point]:
    """(object's eastbound speed, object's and subject's contact points, subject's position at
    the cue, subject's and object's headings) that stage ``cause``."""
    if cause == "red_light":
        # Object crosses eastbound; subject comes up the right lane through the red light.
        cx = LANE_RIGHT
        ovx = 0.12
        o_contact = (cx, CROSS_LANE)
        s_contact = (cx, CROSS_LANE + 0.10)
        s_cue = (cx, STOP_LINE + 0.05)
        s_dir, o_dir = (0.0, -1.0), (1.0, 0.0)
    elif cause == "lane_change":
        # Object in the left lane; subject swerves across from the right lane.
        ovx = 0.0
        o_contact = (LANE_LEFT, 0.45)
        s_contact = (LANE_LEFT + 0.07, 0.47)
        s_cue = (LANE_RIGHT, 0.62)
        s_dir, o_dir = (-0.4, -0.9), (0.0, -1.0)
    elif cause == "speeding":
        # Rear-end: object ahead in the same lane, subject accelerates into it.
        ovx = 0.0
        lane = rng.choice((LANE_LEFT, LANE_RIGHT))
        o_contact = (lane, 0.40)
        s_contact = (lane, 0.50)
        s_cue = (lane, 0.80)
        s_dir, o_dir = (0.0, -1.0), (0.0, -1.0)
    else:  # loss_of_control: subject weaves off its lane into a (nearly) stopped object.
        ovx = 0.0
        o_contact = (0.24, 0.42)
        s_contact = (0.31, 0.46)
        s_cue = (LANE_LEFT, 0.64)
        s_dir, o_dir = (-0.7, -0.7), (0.0, -1.0)
    return ovx, o_contact, s_contact, s_cue, s_dir, o_dir


def _approach(
    cause: str, cue: float, start: float, s_cue: _Point, s_contact: _Point
) -> list[tuple[float, float, float]]:
    """The subject's keyframes up to (not including) the contact: normal driving to the cue,
    then, for a loss of control, two zig-zag points between the cue and the contact."""
    normal_speed = 0.07
    keys = [(0.0, s_cue[0], s_cue[1] + normal_speed * cue), (cue, *s_cue)]
    if cause == "loss_of_control":
        for frac, wob in ((0.33, 0.05), (0.66, -0.05)):
            t = cue + frac * (start - cue)
            keys.append(
                (
                    t,
                    s_cue[0] + frac * (s_contact[0] - s_cue[0]) + wob,
                    s_cue[1] + frac * (s_contact[1] - s_cue[1]),
                )
            )
    return keys


def sample_crash_scene(rng: random.Random, clip_id: str, duration: float, fps: int) -> Scene:
    """A crash scene: subject, object and cause drawn at random, geometry solved backwards."""
    cause = rng.choice(CAUSES)
    subject = rng.choice(SUBJECT_KINDS)
    obj = rng.choice(OBJECT_KINDS)
    cue = _on_grid(rng.uniform(0.6, max(0.7, duration - 2.4)), fps)
    start = _on_grid(cue + rng.uniform(0.7, 1.2), fps)
    end = _on_grid(min(start + rng.uniform(0.6, 1.2), duration - 0.3), fps)
    end = max(end, _on_grid(start + 0.3, fps))

    ovx, o_contact, s_contact, s_cue, s_dir, o_dir = _crash_geometry(rng, cause)
    o_speed = 0.05 if cause != "red_light" else ovx
    if obj == "pedestrian":
        o_speed = min(o_speed, 0.03)
    o_keys = [
        (0.0, o_contact[0] - o_dir[0] * o_speed * start, o_contact[1] - o_dir[1] * o_speed * start),
        (start, *o_contact),
    ]
    s_keys = _approach(cause, cue, start, s_cue, s_contact)
    s_keys.append((start, *s_contact))
    slide = rng.uniform(0.04, 0.08)
    _slide(s_keys, end, s_dir, slide)
    _slide(o_keys, end, s_dir, slide)
    s_keys.append((duration + 1.0, s_keys[-1][1], s_keys[-1][2]))
    o_keys.append((duration + 1.0, o_keys[-1][1], o_keys[-1][2]))

    tracks = [Track(subject, s_keys, streak=(cue, start)), Track(obj, o_keys)]
    if rng.random() < 0.5:
        tracks.append(_bystander(rng, duration, avoid_x=(s_cue[0], o_contact[0])))
    contact = ((s_contact[0] + o_contact[0]) / 2, (s_contact[1] + o_contact[1]) / 2)
    return Scene(
        clip_id,
        duration,
        True,
        tracks,
        cause == "red_light",
        subject,
        obj,
        cause,
        cue,
        start,
        end,
        contact,
    )


def _bystander(rng: random.Random, duration: float, avoid_x: tuple[float, ...] = ()) -> Track:
    """A vehicle passing at constant speed far from the action (the far-left or right edge)."""
    x = 0.12 if all(abs(a - 0.12) > 0.1 for a in avoid_x) else 0.88
    kind = rng.choice(("car", "truck", "motorbike"))
    y0 = rng.uniform(0.8, 1.0)
    speed = rng.uniform(0.08, 0.14)
    return Track(kind, [(0.0, x, y0), (duration + 1.0, x, y0 - speed * (duration + 1.0))])


def sample_normal_scene(rng: random.Random, clip_id: str, duration: float) -> Scene:
    """A normal scene: one to three vehicles keep to their lanes at steady, safe speeds."""
    tracks = []
    lanes = rng.sample([LANE_LEFT, LANE_RIGHT, 0.12, 0.88], k=rng.randint(1, 3))
    for x in lanes:
        kind = rng.choice(("car", "truck", "motorbike", "cyclist"))
        y0 = rng.uniform(0.7, 1.0)
        speed = rng.uniform(0.05, 0.12)
        tracks.append(
            Track(kind, [(0.0, x, y0), (duration + 1.0, x, y0 - speed * (duration + 1.0))])
        )
    light_red = rng.random() < 0.3
    if light_red:
        # Vehicles wait at the stop line while the light is red.
        for tr in tracks:
            if tr.keys[0][1] in (LANE_LEFT, LANE_RIGHT):
                tr.keys = [(0.0, tr.keys[0][1], STOP_LINE + 0.08)] * 2
                tr.keys[1] = (duration + 1.0, tr.keys[0][1], STOP_LINE + 0.08)
    return Scene(clip_id, duration, False, tracks, light_red)


def sample_scene(rng: random.Random, clip_id: str, crash: bool, duration: float, fps: int) -> Scene:
    """Sample a crash or a normal scene of ``duration`` seconds on a ``fps`` grid."""
    duration = _on_grid(duration, fps)
    if crash:
        return sample_crash_scene(rng, clip_id, duration, fps)
    return sample_normal_scene(rng, clip_id, duration)
