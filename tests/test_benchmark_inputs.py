"""The benchmarks' generated inputs pass the same validation as users' data (a benchmark that
fails on its own annotations measures nothing: `benchmarks/decode.py` once did)."""

from __future__ import annotations

from pathlib import Path

from crashchat.data.tasks import TASKS
from crashchat.data.validation import load_annotations
from helpers import load_file_module

REPO = Path(__file__).resolve().parents[1]


def test_decode_benchmark_annotations_are_valid_six_tasks_per_clip(tmp_path: Path) -> None:
    decode = load_file_module(REPO / "benchmarks" / "decode.py", "bench_decode")
    clips = [tmp_path / "videos" / f"clip{i}.mp4" for i in range(3)]
    folder = decode.write_annotations(tmp_path / "ann", clips)
    files = load_annotations([folder])  # raises, naming every problem, when one is invalid
    samples = [s for f in files for s in f.samples]
    assert len(samples) == decode.RECORDS_PER_CLIP * len(clips)
    assert {s.task for s in samples} == set(TASKS)


def test_decode_benchmark_clips_come_from_every_core_with_distinct_names(tmp_path: Path) -> None:
    decode = load_file_module(REPO / "benchmarks" / "decode.py", "bench_decode")
    root = decode.make_clips(tmp_path, "t", 3, 64, 64, 10, 2.5)
    clips = sorted(p.name for p in (root / "videos").glob("*.mp4"))
    assert len(clips) == 3 and all((root / "videos" / c).stat().st_size > 0 for c in clips)
