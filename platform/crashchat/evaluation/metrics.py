"""The six metric suites, as upstream's evaluation scripts compute them.

Each ``*_metrics`` function takes a list of upstream prediction records and returns a dict with
upstream's metric names, plus ``unparsed`` (answers the parser dropped, or zeroed for crash
localization; information only, it changes no upstream figure) and ``parser``.

Predictions come from each record's ``raw_response`` read with the chosen parser (``upstream`` or
``robust``, see :mod:`crashchat.data.answer_parsing`). For a file written with the same parser,
ours or upstream's ``evaluate.py``, that is exactly what its prediction fields hold, so with
``upstream`` the figures equal what upstream's ``scripts/eval/compute_*_metrics.py`` print for the
file; with ``robust`` the same file is re-read with the friendlier rules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crashchat.data.answer_parsing import (
    check_parser,
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
    temporal_iou,
)
from crashchat.data.tasks import get_task
from crashchat.evaluation.predictions import FIELDS

THRESHOLDS = (0.3, 0.5, 0.7)
PRE_CRASH_DELTA = 0.5
# Ground-truth label spellings upstream's recognition script accepts; anything else is skipped.
_YES = ("yes", "y", "1", "true")
_NO = ("no", "n", "0", "false")


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _response(rec: dict[str, Any]) -> str:
    return str(rec.get("raw_response") or "")


def _gt_label(value: Any) -> bool | None:
    """A ground-truth label as upstream's script normalises it (None: the pair is skipped)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    return True if text in _YES else False if text in _NO else None


def recognition_metrics(records: list[dict[str, Any]], parser: str = "upstream") -> dict[str, Any]:
    """N TP TN FP FN Accuracy Precision Recall F1 ("Yes" is positive).

    Answers the parser drops are left out of N, as upstream leaves their records out of its file.
    """
    tp = tn = fp = fn = unparsed = 0
    for rec in records:
        pred = parse_recognition(_response(rec), parser)
        gt = _gt_label(rec.get("gt_label"))
        unparsed += pred is None
        if pred is None or gt is None:
            continue
        tp += pred and gt
        tn += (not pred) and (not gt)
        fp += pred and not gt
        fn += (not pred) and gt
    n = tp + tn + fp + fn
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    return {
        "N": n,
        "TP": tp,
        "TN": tn,
        "FP": fp,
        "FN": fn,
        "Accuracy": _safe_div(tp + tn, n),
        "Precision": precision,
        "Recall": recall,
        "F1": _safe_div(2 * precision * recall, precision + recall),
        "unparsed": unparsed,
        "parser": parser,
    }


def _ap(ious: list[float]) -> dict[str, float]:
    return {f"AP@{int(t * 100)}": _mean([1.0 if i >= t else 0.0 for i in ious]) for t in THRESHOLDS}


def crash_localization_metrics(
    records: list[dict[str, Any]], parser: str = "upstream"
) -> dict[str, Any]:
    """N mIoU AP@30/50/70 over every record with a ground truth.

    An answer that did not parse is ``(0, 0)``: it stays in N with IoU 0, as upstream.
    """
    ious, unparsed = [], 0
    for rec in records:
        if rec.get("gt_start") is None or rec.get("gt_end") is None:
            continue
        pred, ok = parse_interval(_response(rec), parser)
        unparsed += not ok
        ious.append(temporal_iou(pred, (float(rec["gt_start"]), float(rec["gt_end"]))))
    return {
        "N": len(ious),
        "mIoU": _mean(ious),
        **_ap(ious),
        "unparsed": unparsed,
        "parser": parser,
    }


def pre_crash_iou(pred: float, gt: float, t_acc: float, delta: float = PRE_CRASH_DELTA) -> float:
    """Upstream's TTA-based IoU of a pre-crash time prediction."""
    if pred >= t_acc or pred < gt - delta:
        return 0.0
    if pred < gt:
        return 1.0
    tta_gt, tta_pred = t_acc - gt, max(t_acc - pred, 0.0)
    return _safe_div(min(tta_gt, tta_pred), max(tta_gt, tta_pred))


def clip_name(video: str) -> str:
    """The clip's file name, which links a pre-crash record to its crash interval."""
    return os.path.basename(str(video))


def _t_acc_and_gt(
    rec: dict[str, Any], crash_starts: dict[str, float]
) -> tuple[float, float] | None:
    """``(t_acc, gt_time)`` when the record can be scored: t_acc known and after the cue."""
    t_acc = crash_starts.get(clip_name(rec.get("video_path", "")))
    gt = rec.get("gt_time")
    if t_acc is None or t_acc <= 0 or gt is None or t_acc - float(gt) <= 0:
        return None
    return t_acc, float(gt)


def pre_crash_metrics(
    records: list[dict[str, Any]], crash_starts: dict[str, float], parser: str = "upstream"
) -> dict[str, Any]:
    """N mIoU AP@30/50/70 mTTA_gt mTTA_pred TTA_MAE with t_acc from the crash-localization GT.

    Answers the parser drops are left out, as upstream leaves their records out of its file;
    so are clips without a crash start after the cue (``skipped_no_t_acc``).

    Args:
        records: Pre-crash prediction records.
        crash_starts: Clip file name -> ground-truth crash start (t_acc).
        parser: ``upstream`` or ``robust``.
    """
    ious, tta_gt, tta_pred, unparsed, skipped = [], [], [], 0, 0
    for rec in records:
        pred = parse_timestamp(_response(rec), parser)
        times = _t_acc_and_gt(rec, crash_starts)
        unparsed += pred is None
        skipped += times is None
        if pred is None or times is None:
            continue
        t_acc, gt = times
        ious.append(pre_crash_iou(pred, gt, t_acc))
        tta_gt.append(t_acc - gt)
        tta_pred.append(max(t_acc - pred, 0.0))
    return {
        "N": len(ious),
        "mIoU": _mean(ious),
        **_ap(ious),
        "mTTA_gt": _mean(tta_gt),
        "mTTA_pred": _mean(tta_pred),
        "TTA_MAE": _mean([abs(p - g) for p, g in zip(tta_pred, tta_gt, strict=True)]),
        "unparsed": unparsed,
        "skipped_no_t_acc": skipped,
        "parser": parser,
    }


def _annotation_start(rec: dict[str, Any]) -> tuple[str, float] | None:
    """Clip name and crash start of a crash-localization annotation, read as upstream does."""
    videos, convs = rec.get("video") or [], rec.get("conversations") or []
    if len(convs) < 2 or not videos:
        return None
    video = videos if isinstance(videos, str) else videos[0]
    (start, _), _ = parse_interval(str(convs[1].get("value", "")), "upstream")
    return clip_name(video), start


def crash_starts_from(records: list[dict[str, Any]]) -> dict[str, float]:
    """Clip name -> crash start, from crash-localization prediction records or annotations.

    As upstream's pre-crash script: the start as written (the answer's first number), clips whose
    start is not after 0 left out, the first record of a clip wins.
    """
    out: dict[str, float] = {}
    for rec in records:
        if rec.get("gt_start") is not None:
            found: tuple[str, float] | None = (clip_name(rec["video_path"]), float(rec["gt_start"]))
        else:
            found = _annotation_start(rec)
        if found and found[1] > 0.0:
            out.setdefault(*found)
    return out


def bertscore_model() -> str | None:
    """A local BERTScore model folder from ``CRASHCHAT_BERTSCORE_MODEL``, when it exists."""
    path = os.environ.get("CRASHCHAT_BERTSCORE_MODEL")
    return path if path and Path(path).is_dir() else None


def _bertscore(cands: list[str], refs: list[str], model: str | None) -> dict[str, float | None]:
    none: dict[str, float | None] = {"BERTScore_P": None, "BERTScore_R": None, "BERTScore_F1": None}
    if not model or not cands:
        return none
    try:
        from bert_score import score  # type: ignore[import-not-found]
    except ImportError:
        return none
    p, r, f = score(cands, refs, model_type=model, num_layers=17, lang="en", verbose=False)
    return {
        "BERTScore_P": float(p.mean()),
        "BERTScore_R": float(r.mean()),
        "BERTScore_F1": float(f.mean()),
    }


def text_metrics(
    records: list[dict[str, Any]],
    task: str,
    bertscore: str | None = None,
    parser: str = "upstream",
) -> dict[str, Any]:
    """N BLEU ROUGE-1/2/L P/R/F and BERTScore (None unless a local scorer model is given).

    Pairs with an empty answer or ground truth are skipped, as upstream's scripts do.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from rouge_score import rouge_scorer

    gt_field, _ = FIELDS[get_task(task).key]
    refs, cands, unparsed = [], [], 0
    for rec in records:
        pred, ref = parse_text(_response(rec), parser), str(rec.get(gt_field, "")).strip()
        unparsed += not pred
        if pred and ref:
            refs.append(ref)
            cands.append(pred)
    out: dict[str, Any] = {"N": len(cands)}
    out["BLEU"] = (
        float(
            corpus_bleu(
                [[r.split()] for r in refs],
                [c.split() for c in cands],
                smoothing_function=SmoothingFunction().method1,
            )
        )
        if cands
        else 0.0
    )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, c) for r, c in zip(refs, cands, strict=True)]
    for name, key in (("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL")):
        out[f"{name}_P"] = _mean([s[key].precision for s in scores])
        out[f"{name}_R"] = _mean([s[key].recall for s in scores])
        out[f"{name}_F"] = _mean([s[key].fmeasure for s in scores])
    out.update(_bertscore(cands, refs, bertscore))
    out["unparsed"] = unparsed
    out["parser"] = parser
    return out


def task_metrics(
    task: str,
    records: list[dict[str, Any]],
    crash_starts: dict[str, float] | None = None,
    bertscore: str | None = None,
    parser: str = "upstream",
) -> dict[str, Any]:
    """The metric suite of ``task`` over its prediction records.

    Args:
        task: Task key.
        records: The task's prediction records.
        crash_starts: Clip name -> crash start (pre-crash localization only).
        bertscore: Local BERTScore model folder (text tasks; None reports BERTScore as null).
        parser: ``upstream`` (figures as upstream's scripts print them) or ``robust``.

    Returns:
        Upstream's metric names with their values, plus ``unparsed`` and ``parser``.
    """
    key, parser = get_task(task).key, check_parser(parser)
    if key == "crash_recognition":
        return recognition_metrics(records, parser)
    if key == "crash_localization":
        return crash_localization_metrics(records, parser)
    if key == "pre_crash_localization":
        return pre_crash_metrics(records, crash_starts or {}, parser)
    return text_metrics(records, key, bertscore, parser)
