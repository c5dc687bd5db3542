"""Generate a synthetic CrashChat dataset: mp4 clips plus upstream-format annotation files."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crashchat.config import SynthConfig
from crashchat.data.annotations import annotation_file_name, make_record, write_annotation_file
from crashchat.data.prompts import PromptCatalog
from crashchat.data.synth.labels import PROMPTS, answers_for
from crashchat.data.synth.render import render_frames, write_mp4
from crashchat.data.synth.scenario import Scene, sample_scene
from crashchat.data.tasks import GROUPS, HETEROGENEOUS, TASK_KEYS

SOURCE_CRASH = "SYNTH-CRASH"
SOURCE_NORMAL = "SYNTH-NORMAL"


@dataclass
class SynthResult:
    """What :func:`generate_dataset` wrote."""

    out: Path
    scenes: list[Scene]
    splits: dict[str, list[str]]
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Counts for printing."""
        crash = sum(s.crash for s in self.scenes)
        return {
            "out": str(self.out),
            "videos": len(self.scenes),
            "crash": crash,
            "normal": len(self.scenes) - crash,
            "splits": {k: len(v) for k, v in self.splits.items()},
            "annotation_files": len(self.files),
        }


def _split_ids(rng: random.Random, ids: list[str], cfg: SynthConfig) -> dict[str, list[str]]:
    ids = ids[:]
    rng.shuffle(ids)
    n_test = round(len(ids) * cfg.test_fraction)
    n_val = round(len(ids) * cfg.val_fraction)
    if len(ids) >= 3:  # keep every split populated when there is anything to split
        n_test, n_val = (
            max(n_test, 1 if cfg.test_fraction else 0),
            max(n_val, 1 if cfg.val_fraction else 0),
        )
    return {
        "test": ids[:n_test],
        "val": ids[n_test : n_test + n_val],
        "train": ids[n_test + n_val :],
    }


def plan_scenes(cfg: SynthConfig) -> list[Scene]:
    """Sample every scene of the dataset (no rendering); deterministic for ``cfg.seed``."""
    rng = random.Random(f"crashchat-synth-{cfg.seed}")
    n_normal = round(cfg.videos * cfg.normal_fraction)
    kinds = [False] * n_normal + [True] * (cfg.videos - n_normal)
    rng.shuffle(kinds)
    scenes = []
    for i, crash in enumerate(kinds):
        clip_rng = random.Random(f"crashchat-synth-{cfg.seed}-{i}")
        duration = clip_rng.uniform(cfg.min_duration, cfg.max_duration)
        clip_id = f"synth_{cfg.seed}_{i:05d}_{'crash' if crash else 'normal'}"
        scenes.append(sample_scene(clip_rng, clip_id, crash, duration, cfg.fps))
    return scenes


def generate_dataset(
    out: str | Path,
    cfg: SynthConfig,
    on_clip: Callable[[Scene], None] | None = None,
) -> SynthResult:
    """Write ``out/videos/*.mp4`` and the annotation files for all tasks, groups and splits.

    Args:
        out: Output folder; video paths in the annotations are relative to it.
        cfg: Generation settings.
        on_clip: Called after each clip is written (progress display).
    """
    out = Path(out)
    scenes = plan_scenes(cfg)
    for scene in scenes:
        frames = render_frames(
            scene,
            cfg.fps,
            cfg.width,
            cfg.height,
            cfg.texture,
            zlib.crc32(f"{cfg.seed}/{scene.clip_id}".encode()),
        )
        write_mp4(out / "videos" / f"{scene.clip_id}.mp4", frames, cfg.fps)
        if on_clip is not None:
            on_clip(scene)

    rng = random.Random(f"crashchat-synth-split-{cfg.seed}")
    crash_ids = [s.clip_id for s in scenes if s.crash]
    normal_ids = [s.clip_id for s in scenes if not s.crash]
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ids in (crash_ids, normal_ids):
        for split, part in _split_ids(rng, ids, cfg).items():
            splits[split].extend(part)
    by_id = {s.clip_id: s for s in scenes}

    result = SynthResult(out, scenes, {k: sorted(v) for k, v in splits.items()})
    for split, ids in result.splits.items():
        per_task: dict[str, list[dict[str, object]]] = {k: [] for k in TASK_KEYS}
        for clip_id in ids:
            scene = by_id[clip_id]
            source = SOURCE_CRASH if scene.crash else SOURCE_NORMAL
            for task, answer in answers_for(scene).items():
                per_task[task].append(
                    make_record(f"videos/{clip_id}.mp4", PROMPTS[task], answer, source)
                )
        for task, records in per_task.items():
            if records:
                result.files.append(
                    write_annotation_file(
                        out / annotation_file_name(cfg.dataset, task, split), records
                    )
                )
        for group, tasks in [*GROUPS.items(), (HETEROGENEOUS, TASK_KEYS)]:
            records = [r for t in tasks for r in per_task[t]]
            if records:
                result.files.append(
                    write_annotation_file(
                        out / annotation_file_name(cfg.dataset, group, split), records
                    )
                )
    PromptCatalog(PROMPTS).save(out / "prompts.json")
    (out / "synth_config.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")
    return result
