"""Prediction records in the upstream format, one JSON list per task.

Records look exactly like those upstream's ``evaluation/evaluate.py`` writes, so upstream's six
``scripts/eval/compute_*_metrics.py`` read our files unchanged and print the figures our metrics
give: ``data_id``, ``video_path``, ``prompt``, the task's ground-truth and prediction fields under
upstream's names (:data:`FIELDS`), then ``raw_response``.

Prediction fields hold what the answer parser made of the response, never ``null``: crash
localization always has numbers (``0.0, 0.0`` when the answer did not parse, which upstream's script
scores with IoU 0); text tasks the stripped response (``""`` when empty, which the scripts skip).
Upstream leaves out a recognition or pre-crash record whose answer did not parse; we keep it, so
that nothing is lost, but without its ``pred_label``/``pred_time`` key, which makes upstream's
scripts skip it: the same figures as leaving it out. Every record whose answer did not parse carries
``"parsed": false``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crashchat.data.answer_parsing import (
    check_parser,
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
)
from crashchat.data.tasks import get_task

FIELDS: dict[str, tuple[str, ...]] = {
    "crash_recognition": ("gt_label", "pred_label"),
    "crash_localization": ("gt_start", "gt_end", "pred_start", "pred_end"),
    "pre_crash_localization": ("gt_time", "pred_time"),
    "crash_description": ("gt_caption", "pred_caption"),
    "causal_reasoning": ("gt_cause", "pred_cause"),
    "prevention_reasoning": ("gt_text", "pred_text"),
}


class PredictionFileError(ValueError):
    """A prediction file does not fit its task; the message names the file and record."""


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("Yes" if value else "No")


def _task_fields(key: str, answer: str, response: str, parser: str) -> tuple[dict[str, Any], bool]:
    """Ground-truth and prediction fields of one record, and whether the response parsed."""
    if key == "crash_recognition":
        pred = parse_recognition(response, parser)
        fields: dict[str, Any] = {"gt_label": _yes_no(parse_recognition(answer, parser))}
        if pred is not None:
            fields["pred_label"] = _yes_no(pred)
        return fields, pred is not None
    if key == "crash_localization":
        (gs, ge), _ = parse_interval(answer, parser)
        (ps, pe), ok = parse_interval(response, parser)
        return {"gt_start": gs, "gt_end": ge, "pred_start": ps, "pred_end": pe}, ok
    if key == "pre_crash_localization":
        t = parse_timestamp(response, parser)
        fields = {"gt_time": parse_timestamp(answer, parser)}
        if t is not None:
            fields["pred_time"] = t
        return fields, t is not None
    gt_field, pred_field = FIELDS[key]
    # Upstream keeps the ground truth verbatim; its scripts strip both sides.
    text = parse_text(response, parser)
    return {gt_field: answer, pred_field: text}, bool(text)


def build_record(
    task: str,
    data_id: str,
    video: str,
    prompt: str,
    answer: str,
    response: str,
    parser: str = "upstream",
) -> dict[str, Any]:
    """One upstream prediction record from a ground-truth answer and the model's response.

    Args:
        task: Task key.
        data_id: Record id.
        video: Clip path (its file name links pre-crash records to their crash interval).
        prompt: The question.
        answer: Ground-truth answer (validated annotation format).
        response: The model's response.
        parser: ``upstream`` (as the paper's evaluation) or ``robust``.

    Returns:
        The record, with ``"parsed": false`` added when the response did not parse.
    """
    key = get_task(task).key
    fields, parsed = _task_fields(key, answer, response, check_parser(parser))
    rec: dict[str, Any] = {"data_id": data_id, "video_path": video, "prompt": prompt}
    rec.update(fields)
    rec["raw_response"] = response
    if not parsed:
        rec["parsed"] = False
    return rec


def _missing(key: str, rec: dict[str, Any]) -> list[str]:
    """Required fields absent from ``rec``; a dropped answer may lack its prediction field."""
    dropped = rec.get("parsed") is False
    return [
        f
        for f in ("data_id", "raw_response", *FIELDS[key])
        if f not in rec and not (dropped and f.startswith("pred_"))
    ]


def _ground_truth_fields(key: str) -> list[str]:
    return [f for f in FIELDS[key] if f.startswith("gt_")]


def check_records(task: str, records: Any, source: str) -> list[dict[str, Any]]:
    """Validate a loaded prediction list for ``task``.

    A record marked ``"parsed": false`` may lack its prediction field (a dropped answer).

    Raises:
        PredictionFileError: naming ``source``, the record index and the missing field, or the
            task whose fields the records carry instead.
    """
    key = get_task(task).key
    if not isinstance(records, list):
        raise PredictionFileError(f"{source}: expected a JSON list of prediction records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise PredictionFileError(f"{source}: record {i}: not an object")
        missing = _missing(key, rec)
        if missing:
            other = [
                t for t in FIELDS if t != key and all(f in rec for f in _ground_truth_fields(t))
            ]
            hint = f" (it has the fields of task {other[0]})" if other else ""
            raise PredictionFileError(
                f"{source}: record {i} ({rec.get('data_id', '?')}): missing field(s) "
                f"{', '.join(missing)} for task {key}{hint}"
            )
    return records


def load_predictions(task: str, path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a prediction file."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PredictionFileError(f"{path}: invalid JSON: {exc}") from None
    return check_records(task, records, str(path))


def write_predictions(out_dir: str | Path, by_task: dict[str, list[dict[str, Any]]]) -> None:
    """``out_dir/<task>.json`` for each task, records sorted by ``data_id``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task, records in by_task.items():
        ordered = sorted(records, key=lambda r: str(r["data_id"]))
        (out / f"{task}.json").write_text(json.dumps(ordered, indent=1))
