"""Reference points that a model must beat to show it learned from the video.

A model that learned only the answer format answers the majority class for recognition and one
typical interval for crash localization. Both are computed from the dataset itself: the majority
rate on the evaluated split, and the mIoU of the *prior* answer (the mean training interval,
given for every clip). ``make learn`` checks its bar against them.
"""

from __future__ import annotations

from typing import Any

from crashchat.data.answer_parsing import parse_interval, parse_recognition, temporal_iou


def reference_points(rows: list[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """Majority rate and prior-interval mIoU from sample rows (``task``, ``split``, ``answer``)."""
    parsed = [
        parse_recognition(r["answer"])
        for r in rows
        if r["task"] == "crash_recognition" and r["split"] == split
    ]
    labels = [x for x in parsed if x is not None]
    out: dict[str, Any] = {}
    if labels:
        yes = sum(labels)
        out["recognition_majority_rate"] = max(yes, len(labels) - yes) / len(labels)
        out["recognition_majority_answer"] = "Yes" if yes >= len(labels) - yes else "No"
    train = [
        parse_interval(r["answer"])[0]
        for r in rows
        if r["task"] == "crash_localization" and r["split"] == "train"
    ]
    test = [
        parse_interval(r["answer"])[0]
        for r in rows
        if r["task"] == "crash_localization" and r["split"] == split
    ]
    if train and test:
        prior = (
            round(sum(s for s, _ in train) / len(train), 1),
            round(sum(e for _, e in train) / len(train), 1),
        )
        out["localization_prior_interval"] = list(prior)
        out["localization_prior_mIoU"] = sum(temporal_iou(prior, g) for g in test) / len(test)
    return out


def learning_bar(metrics: dict[str, dict[str, Any]], ref: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``make learn`` checks: each with its value, threshold and whether it passed."""
    checks = []
    rec = metrics.get("crash_recognition")
    if rec and "recognition_majority_rate" in ref:
        total = rec["N"] + rec.get("unparsed", 0)
        majority = ref["recognition_majority_rate"]
        acc = rec["Accuracy"]
        checks += [
            {"check": "recognition accuracy >= 0.8", "value": acc, "threshold": 0.8},
            {
                "check": "recognition accuracy >= majority rate + 0.1",
                "value": acc,
                "threshold": majority + 0.1,
            },
            {
                "check": "recognition answers parseable >= 80%",
                "value": rec["N"] / total if total else 0.0,
                "threshold": 0.8,
            },
        ]
    loc = metrics.get("crash_localization")
    if loc and "localization_prior_mIoU" in ref:
        checks.append(
            {
                "check": "crash localization mIoU >= prior mIoU + 0.1",
                "value": loc["mIoU"],
                "threshold": ref["localization_prior_mIoU"] + 0.1,
            }
        )
    for c in checks:
        c["passed"] = c["value"] >= c["threshold"] - 1e-12
    return checks


def best_checks(per_dir: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each learning-bar check at its best over several evaluations (passing first, then the
    widest margin over its bar), with ``eval_dir`` naming the evaluation it comes from.

    Args:
        per_dir: ``learning_bar`` results keyed by evaluation folder.
    """
    best: dict[str, dict[str, Any]] = {}
    for eval_dir, checks in per_dir.items():
        for c in checks:
            kept = best.get(c["check"])
            # A passing check beats a failing one; then the larger margin over its own bar.
            rank = (c["passed"], c["value"] - c["threshold"])
            if kept is None or rank > (kept["passed"], kept["value"] - kept["threshold"]):
                best[c["check"]] = {**c, "eval_dir": eval_dir}
    return list(best.values())
