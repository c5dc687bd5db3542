"""The six metric suites, as upstream's evaluation scripts compute them.

Each ``*_metrics`` function takes a list of upstream prediction records and returns a dict with
upstream's metric names plus ``unparsed`` (answers dropped or zeroed by the parsing rules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crashchat.data.answer_parsing import (
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
)
from crashchat.data.tasks import get_task
from crashchat.evaluation.predictions import FIELDS

THRESHOLDS = (0.3, 0.5, 0.7)
PRE_CRASH_DELTA = 0.5


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return parse_recognition(str(value)) if value is not None else None


def recognition_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """N TP TN FP FN Accuracy Precision Recall F1 ("Yes" is positive); unparseable dropped."""
    tp = tn = fp = fn = unparsed = 0
    for rec in records:
        gt = _label(rec.get("gt_label"))
        pred = rec.get("pred_label")
        pred = _label(pred) if pred is not None else parse_recognition(rec.get("raw_response", ""))
        if pred is None or gt is None:
            unparsed += 1
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
    }


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """IoU of two intervals (0 when the union is empty)."""
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    return _safe_div(inter, union)


def _ap(ious: list[float]) -> dict[str, float]:
    return {f"AP@{int(t * 100)}": _mean([1.0 if i >= t else 0.0 for i in ious]) for t in THRESHOLDS}


def crash_localization_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """N mIoU AP@30/50/70; an unparseable answer counts as (0, 0) with IoU 0, as upstream."""
    ious, unparsed = [], 0
    for rec in records:
        gt = (float(rec["gt_start"]), float(rec["gt_end"]))
        gt = (min(gt), max(gt))
        if rec.get("pred_start") is not None and rec.get("pred_end") is not None:
            a, b = float(rec["pred_start"]), float(rec["pred_end"])
            pred, ok = (min(a, b), max(a, b)), True
        else:
            pred, ok = parse_interval(rec.get("raw_response", ""))
        unparsed += not ok
        ious.append(temporal_iou(pred, gt))
    return {"N": len(ious), "mIoU": _mean(ious), **_ap(ious), "unparsed": unparsed}


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


def pre_crash_metrics(
    records: list[dict[str, Any]], crash_starts: dict[str, float]
) -> dict[str, Any]:
    """N mIoU AP@30/50/70 mTTA_gt mTTA_pred TTA_MAE with t_acc from the crash-localization GT.

    Args:
        records: Pre-crash prediction records.
        crash_starts: Clip file name -> ground-truth crash start (t_acc).
    """
    ious, tta_gt, tta_pred, unparsed, skipped = [], [], [], 0, 0
    for rec in records:
        t_acc = crash_starts.get(clip_name(rec.get("video_path", "")))
        gt = rec.get("gt_time")
        gt = float(gt) if gt is not None else None
        if t_acc is None or t_acc <= 0 or gt is None or t_acc - gt <= 0:
            skipped += 1
            continue
        pred = rec.get("pred_time")
        pred = float(pred) if pred is not None else parse_timestamp(rec.get("raw_response", ""))
        if pred is None:
            unparsed += 1
            continue
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
    }


def crash_starts_from(records: list[dict[str, Any]]) -> dict[str, float]:
    """Clip name -> crash start, from crash-localization prediction records or annotations."""
    out: dict[str, float] = {}
    for rec in records:
        if "gt_start" in rec:
            out[clip_name(rec["video_path"])] = min(float(rec["gt_start"]), float(rec["gt_end"]))
        elif "conversations" in rec:
            (start, _), ok = parse_interval(str(rec["conversations"][-1]["value"]))
            video = rec["video"][0] if isinstance(rec["video"], list) else rec["video"]
            if ok:
                out[clip_name(video)] = start
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
    records: list[dict[str, Any]], task: str, bertscore: str | None = None
) -> dict[str, Any]:
    """N BLEU ROUGE-1/2/L P/R/F and BERTScore (None unless a local scorer model is given)."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from rouge_score import rouge_scorer

    gt_field, pred_field = FIELDS[get_task(task).key]
    refs, cands, unparsed = [], [], 0
    for rec in records:
        pred = rec.get(pred_field)
        pred = parse_text(pred if pred is not None else rec.get("raw_response", ""))
        if pred is None:
            unparsed += 1
            continue
        refs.append(str(rec[gt_field]).strip())
        cands.append(pred)
    out: dict[str, Any] = {"N": len(cands)}
    out["BLEU"] = (
        corpus_bleu(
            [[r.split()] for r in refs],
            [c.split() for c in cands],
            smoothing_function=SmoothingFunction().method1,
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
    return out


def task_metrics(
    task: str,
    records: list[dict[str, Any]],
    crash_starts: dict[str, float] | None = None,
    bertscore: str | None = None,
) -> dict[str, Any]:
    """The metric suite of ``task`` over its prediction records."""
    key = get_task(task).key
    if key == "crash_recognition":
        return recognition_metrics(records)
    if key == "crash_localization":
        return crash_localization_metrics(records)
    if key == "pre_crash_localization":
        return pre_crash_metrics(records, crash_starts or {})
    return text_metrics(records, key, bertscore)
