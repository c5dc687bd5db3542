"""Upstream CrashChat's own metric scripts read our prediction files and print our figures.

Runs when ``CRASHCHAT_UPSTREAM_SCRIPTS`` names a local copy of upstream's ``scripts/eval`` folder
(Liangkd/CrashChat); skipped otherwise. Each ``compute_*_metrics.py`` is loaded as a module with
its path constants pointed at files our ``build_record`` wrote from tricky answers, and BERTScore
stubbed (it needs roberta-large; ours reports null without a local scorer, so it is not compared).
Nothing of upstream's code is kept in this repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from crashchat.evaluation.metrics import crash_starts_from, task_metrics
from crashchat.evaluation.predictions import build_record
from helpers import load_file_module

SCRIPTS = os.environ.get("CRASHCHAT_UPSTREAM_SCRIPTS", "")
pytestmark = pytest.mark.skipif(
    not SCRIPTS or not Path(SCRIPTS, "compute_crash_localization_metrics.py").is_file(),
    reason="set CRASHCHAT_UPSTREAM_SCRIPTS to upstream CrashChat's scripts/eval folder",
)

SCRIPT = {
    "crash_recognition": "compute_crash_recognition_metrics.py",
    "crash_localization": "compute_crash_localization_metrics.py",
    "pre_crash_localization": "compute_pre_crash_localization_metrics.py",
    "crash_description": "compute_crash_description_metrics.py",
    "causal_reasoning": "compute_causal_reasoning_metrics.py",
    "prevention_reasoning": "compute_prevention_reasoning_metrics.py",
}
# Printed label -> our metric name (labels are cut at " (", e.g. "AP@30 (IoU>=0.3)").
LABELS = {"Total samples": "N", "Total valid samples": "N"}
_AP = ["N", "mIoU", "AP@30", "AP@50", "AP@70"]
_TEXT = ["BLEU"] + [f"ROUGE-{n}_{m}" for n in ("1", "2", "L") for m in "PRF"]
# The figures compared per task (BERTScore: ours is null without a local scorer model).
COMPARED = {
    "crash_recognition": ["N", "TP", "TN", "FP", "FN", "Accuracy", "Precision", "Recall", "F1"],
    "crash_localization": _AP,
    "pre_crash_localization": [*_AP, "mTTA_gt", "mTTA_pred", "TTA_MAE"],
    "crash_description": _TEXT,
    "causal_reasoning": _TEXT,
    "prevention_reasoning": _TEXT,
}

TEXT_GT = "The ego-car hits a truck at the crossing."
TEXT_ANSWERS = [
    TEXT_GT,
    "  the ego-car hits a truck \n",
    "",
    "   ",
    "truck",
    "The ego-car hits a truck at the crossing. The ego-car hits a truck.",
    ".",
]
# (ground truth, response)
ANSWERS: dict[str, list[tuple[str, str]]] = {
    "crash_recognition": [
        ("Yes", "Yes"),
        ("Yes", "yes."),
        ("No", "I don't know"),
        ("No", "Yes"),
        ("Yes", "No."),
        ("Yes", "yesno"),
        ("No", "maybe"),
        ("No", "normal"),
        ("Yes", ""),
        ("Yes", "Yes, the ego-car hits another vehicle"),
        ("No", "no"),
        ("Yes", "eyes"),
    ],
    "crash_localization": [
        ("2.0 - 4.0 seconds", "2.0 - 4.0 seconds"),
        ("2.0 - 4.0 seconds", "4.0 - 2.5 seconds"),
        ("2.0 - 4.0 seconds", "3.0 - 4.0."),
        ("2.0 - 4.0 seconds", "from 3 to 5"),
        ("1.5 - 6.0 seconds", ""),
        ("1.5 - 6.0 seconds", "..."),
        ("1.5 - 6.0 seconds", "1.2.3 - 4"),
        ("3.0 - 4.0 seconds", "-3.0 - 4.0"),
        ("3.0 - 4.0 seconds", "5"),
        ("2.0 - 3.0 seconds", "crash at 2.0s - 3.0s"),
        ("3.0 - 4.5 seconds", "3.0 \u2013 4.5"),
        ("0.5 - 9.0 seconds", "between 2 and 5 seconds"),
    ],
    "pre_crash_localization": [
        ("3.0 seconds", "2.6 seconds"),
        ("3.0 seconds", "4.0"),
        ("3.0 seconds", "The cue appears at 4.5."),
        ("3.0 seconds", ""),
        ("3.0 seconds", "0.5 seconds"),  # too early
        ("3.0 seconds", "at 2.9. then"),
        ("3.0 seconds", "1.2.3"),
        ("3.0 seconds", "6 seconds"),  # late
        ("2.0 seconds", "3..5"),
        ("2.0 seconds", "3.5 seconds"),
        ("6.0 seconds", "5.0 seconds"),  # TTA_gt <= 0
        ("1.0 seconds", "1.0 seconds"),  # clip without a crash interval
        ("1.0 seconds", "0.8 seconds"),  # crash interval starting at 0
    ],
    "crash_description": [(TEXT_GT, a) for a in TEXT_ANSWERS],
    "causal_reasoning": [(TEXT_GT, a) for a in reversed(TEXT_ANSWERS)],
    "prevention_reasoning": [(TEXT_GT, a) for a in TEXT_ANSWERS[1:]],
}
# Crash starts of the pre-crash clips (by index); None: no crash-localization annotation.
CRASH_STARTS: list[float | None] = [
    5.0,
    5.0,
    5.0,
    5.0,
    5.0,
    5.0,
    5.0,
    5.0,
    4.0,
    4.0,
    5.0,
    None,
    0.0,
]


def _pre_crash_video(i: int) -> str:
    return f"/data/videos/clip_{i:02d}.mp4"


def _annotations() -> list[dict[str, Any]]:
    """Crash-localization ground truth in CrashChat's annotation format (t_acc per clip)."""
    out = []
    for i, start in enumerate(CRASH_STARTS):
        if start is not None:
            convs = [
                {"from": "human", "value": "<video>\nWhen does the crash happen?"},
                {"from": "gpt", "value": f"{start:.1f} - {start + 2:.1f} seconds"},
            ]
            out.append({"video": [f"videos/clip_{i:02d}.mp4"], "conversations": convs})
    return out


def _records(task: str, parser: str) -> list[dict[str, Any]]:
    recs = []
    for i, (answer, response) in enumerate(ANSWERS[task]):
        video = _pre_crash_video(i) if task == "pre_crash_localization" else f"v/{task}_{i}.mp4"
        recs.append(build_record(task, str(i), video, "<video>\nq", answer, response, parser))
    return recs


class _Zeros:
    def mean(self) -> _Zeros:
        return self

    def item(self) -> float:
        return 0.0


def _bert_score_stub() -> types.ModuleType:
    stub = types.ModuleType("bert_score")

    def score(cands: list[str], refs: list[str], **_: Any) -> tuple[_Zeros, _Zeros, _Zeros]:
        return _Zeros(), _Zeros(), _Zeros()

    stub.score = score  # type: ignore[attr-defined]
    return stub


def _run_script(task: str, pred: Path, out: Path, tl_gt: Path) -> dict[str, float]:
    """Load upstream's script for ``task``, point it at our files, run it, parse its printout."""
    path = Path(SCRIPTS, SCRIPT[task])
    module: Any = load_file_module(path, f"upstream_{path.stem}")
    module.PRED_JSON, module.OUTPUT_DIR = str(pred), str(out)
    module.OUTPUT_TXT, module.OUTPUT_CSV = str(out / "metrics.txt"), str(out / "metrics.csv")
    module.TL_GT_JSON = str(tl_gt)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        module.main()
    return _parse_printout(printed.getvalue())


def _parse_printout(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(?P<label>[A-Za-z][^:]*?):?\s+(?P<value>-?\d+(?:\.\d+)?)( seconds)?$", line)
        if m:
            label = m.group("label").split(" (")[0].strip()
            values[LABELS.get(label, label)] = float(m.group("value"))
    return values


@pytest.fixture
def stubbed_bert_score(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", _bert_score_stub())


@pytest.mark.usefixtures("stubbed_bert_score")
@pytest.mark.parametrize("parser", ["upstream", "robust"])
@pytest.mark.parametrize("task", list(SCRIPT))
def test_upstream_script_prints_our_figures(task: str, parser: str, tmp_path: Path) -> None:
    records = _records(task, parser)
    pred, tl_gt = tmp_path / f"{task}.json", tmp_path / "crash_localization_test.json"
    pred.write_text(json.dumps(records, indent=1))
    tl_gt.write_text(json.dumps(_annotations()))
    printed = _run_script(task, pred, tmp_path / "out", tl_gt)

    starts = crash_starts_from(_annotations())
    ours = task_metrics(task, records, starts, None, parser)
    assert set(COMPARED[task]) <= set(printed), printed
    for key in COMPARED[task]:
        assert f"{ours[key]:.4f}" == f"{printed[key]:.4f}", (key, ours[key], printed[key])
    if parser == "upstream":
        assert ours["unparsed"] > 0  # the tricky answers do exercise the fallbacks
