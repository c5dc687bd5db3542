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
