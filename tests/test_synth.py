"""Synthetic clips: deterministic, upstream-named, and labels that follow from the pixels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import decord
import numpy as np
import pytest

from crashchat.config import SynthConfig
from crashchat.data.synth import generate_dataset, plan_scenes
from crashchat.data.synth.labels import PROMPTS
from crashchat.data.tasks import TASKS
from crashchat.data.validation import load_annotations, validate_paths


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _frames(clip: Path) -> np.ndarray:
    reader = decord.VideoReader(str(clip), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy().astype(np.int16)


def _same_clip(a: Path, b: Path) -> None:
    """The same frames, decoded. x264 (one thread, no B-frames) writes the same bytes in nearly
    every run, not in all: once in a full run one clip of nine had one macroblock row quantised
    otherwise from its 20th frame (decoded pixels up to 7 levels apart, the drawing unchanged)."""
    fa, fb = _frames(a), _frames(b)
    assert fa.shape == fb.shape, (a.name, fa.shape, fb.shape)
    assert int(np.abs(fa - fb).max()) <= 10, a.name


def test_same_seed_same_dataset(tmp_path: Path, synth_dir: Path) -> None:
    again = generate_dataset(tmp_path / "again", SynthConfig(videos=9, seed=7))
    ours, theirs = _digest(again.out), _digest(synth_dir)
    assert ours.keys() == theirs.keys()
    for name, digest in ours.items():
        if name.endswith(".mp4"):
            _same_clip(again.out / name, synth_dir / name)
        else:  # annotations, prompts, the manifest: byte for byte
            assert digest == theirs[name], name

    def plan(seed: int) -> list[tuple[object, ...]]:
        return [
            (s.crash, s.subject, s.obj, s.cause, s.crash_start)
            for s in plan_scenes(SynthConfig(videos=9, seed=seed))
        ]

    assert plan(8) != plan(7)


def test_texture_gives_frames_detail_and_stays_deterministic(tmp_path: Path) -> None:
    def clip(name: str, texture: int) -> Path:
        cfg = SynthConfig(videos=1, seed=3, min_duration=2.5, max_duration=2.5, texture=texture)
        (path,) = (generate_dataset(tmp_path / name, cfg).out / "videos").glob("*.mp4")
        return path

    # The same frames (x264's B-frame lookahead once made every encode differ; see _same_clip).
    grainy = clip("grain", 24)
    _same_clip(grainy, clip("again", 24))
    flat, grain = _frames(clip("flat", 0))[0], _frames(grainy)[0]
    road = (slice(60, 90), slice(5, 25))  # asphalt: left of the lane lines, below the light
    assert flat[road].std() < 2 < 6 < grain[road].std()
    assert abs(float(grain[road].mean()) - float(flat[road].mean())) < 6  # same scene beneath


def test_files_named_like_upstream_and_valid(synth_dir: Path) -> None:
    names = {p.name for p in synth_dir.glob("crashchat_*.json")}
    for split in ("train", "val", "test"):
        for task in TASKS.values():
            assert f"crashchat_synth_{task.file_name}_{split}.json" in names
        for group in ("linguistic_centric", "perception_centric", "heterogeneous"):
            assert f"crashchat_synth_{group}_{split}.json" in names
    report, _ = validate_paths([synth_dir], video_root=synth_dir)
    assert report.valid, report.errors[:5]
    # 9 clips (6 crash): each record sits in its task file, its group file and the heterogeneous file.
    assert report.per_task["crash_recognition"] == 3 * 9
    assert report.per_task["crash_localization"] == 3 * 6
    assert json.loads((synth_dir / "prompts.json").read_text()) == PROMPTS


def test_splits_are_disjoint_and_about_a_third_normal(synth_dir: Path) -> None:
    videos: dict[str, set[str]] = {}
    answers: list[str] = []
    for ann in load_annotations([synth_dir]):
        if ann.info.task == "crash_recognition":
            videos[ann.info.split] = {s.video for s in ann.samples}
            answers += [s.answer for s in ann.samples]
    assert set(videos) == {"train", "val", "test"}
    assert not (videos["train"] & videos["val"]) and not (videos["train"] & videos["test"])
    assert answers.count("No") == 3 and answers.count("Yes") == 6


BURST_MIN = 60  # pixels of the orange contact burst in a frame


def _burst_pixels(frame: np.ndarray) -> int:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g > 50) & (g < 140) & (b < 60)).sum())


def _streak_pixels(frame: np.ndarray) -> int:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((r > 215) & (g > 215) & (b > 110) & (b < 205)).sum())


def _answers_by_video(synth_dir: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for ann in load_annotations([synth_dir]):
        if ann.info.task is None:
            continue
        for s in ann.samples:
            out.setdefault(s.video, {})[s.task] = s.answer
    return out


def test_labels_follow_from_what_is_drawn(synth_dir: Path) -> None:
    """Decode every clip and find the crash interval and the cue in its pixels."""
    for video, answers in _answers_by_video(synth_dir).items():
        vr = decord.VideoReader(str(synth_dir / video), ctx=decord.cpu(0), num_threads=1)
        fps = vr.get_avg_fps()
        assert fps == pytest.approx(10.0)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        burst = [i for i, f in enumerate(frames) if _burst_pixels(f) >= BURST_MIN]
        streak = [i for i, f in enumerate(frames) if _streak_pixels(f) >= 4]
        if answers["crash_recognition"] == "No":
            assert not burst and not streak, video
            assert answers["crash_description"] == "no collision."
            assert "crash_localization" not in answers
            continue
        start, end = map(float, re.findall(r"\d+\.\d", answers["crash_localization"]))
        cue = float(answers["pre_crash_localization"].split()[0])
        assert burst[0] / fps == pytest.approx(start), video
        assert (burst[-1] + 1) / fps == pytest.approx(end), video
        assert streak[0] / fps == pytest.approx(cue), video
        assert cue < start < end
        assert re.fullmatch(
            r"(car|truck|motorbike|ego-car) hits an? (car|truck|motorbike|cyclist|pedestrian)",
            answers["crash_description"],
        )


def test_cause_and_prevention_follow_the_cause() -> None:
    for scene in plan_scenes(SynthConfig(videos=40, seed=1)):
        if not scene.crash:
            assert scene.cause is None and scene.cue_time is None
            continue
        from crashchat.data.synth.labels import answers_for

        ans = answers_for(scene)
        keyword = {
            "speeding": "speed",
            "red_light": "red light",
            "lane_change": "lanes",
            "loss_of_control": "control",
        }[scene.cause or ""]
        assert keyword in ans["causal_reasoning"].lower()
        assert keyword.split()[0] in ans["prevention_reasoning"].lower()
        assert scene.light_red == (scene.cause == "red_light")
        assert scene.crash_end is not None and scene.crash_end <= scene.duration


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_duration"):
        SynthConfig(min_duration=4, max_duration=3)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SynthConfig.model_validate({"videos": 3, "colour": "red"})
    with pytest.raises(ValidationError):
        SynthConfig(width=101)
