"""The benchmarks' generated inputs pass the same validation as users' data (a benchmark that
fails on its own annotations measures nothing: `benchmarks/decode.py` once did)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from crashchat.data.tasks import TASKS
from crashchat.data.validation import load_annotations

REPO = Path(__file__).resolve().parents[1]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_annotations_are_valid_six_tasks_per_clip(tmp_path: Path) -> None:
    decode = _module("decode")
    clips = [tmp_path / "videos" / f"clip{i}.mp4" for i in range(3)]
    folder = decode.write_annotations(tmp_path / "ann", clips)
    files = load_annotations([folder])  # raises, naming every problem, when one is invalid
    samples = [s for f in files for s in f.samples]
    assert len(samples) == decode.RECORDS_PER_CLIP * len(clips)
    assert {s.task for s in samples} == set(TASKS)
