"""Prediction records in the upstream format, one JSON list per task.

Every record has ``data_id``, ``video_path``, ``prompt`` and ``raw_response``; the task adds its
ground-truth and prediction fields under upstream's names (:data:`FIELDS`). Prediction fields hold
the parsed value (``Yes``/``No``, seconds, text) or ``null`` when the answer could not be parsed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crashchat.data.answer_parsing import (
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
)
from crashchat.data.tasks import get_task

COMMON = ("data_id", "video_path", "prompt", "raw_response")
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


def build_record(
    task: str, data_id: str, video: str, prompt: str, answer: str, response: str
) -> dict[str, Any]:
    """One upstream prediction record from a ground-truth answer and the model's response."""
    key = get_task(task).key
    rec: dict[str, Any] = {
        "data_id": data_id,
        "video_path": video,
        "prompt": prompt,
        "raw_response": response,
    }
    if key == "crash_recognition":
        rec["gt_label"] = _yes_no(parse_recognition(answer))
        rec["pred_label"] = _yes_no(parse_recognition(response))
    elif key == "crash_localization":
        (gs, ge), _ = parse_interval(answer)
        (ps, pe), ok = parse_interval(response)
        rec.update({"gt_start": gs, "gt_end": ge})
        rec.update({"pred_start": ps if ok else None, "pred_end": pe if ok else None})
    elif key == "pre_crash_localization":
        rec["gt_time"] = parse_timestamp(answer)
        rec["pred_time"] = parse_timestamp(response)
    else:
        gt_field, pred_field = FIELDS[key]
        rec[gt_field] = answer.strip()
        rec[pred_field] = parse_text(response)
    return rec


def check_records(task: str, records: Any, source: str) -> list[dict[str, Any]]:
    """Validate a loaded prediction list for ``task``.

    Raises:
        PredictionFileError: naming ``source``, the record index and the missing field, or the
            task whose fields the records carry instead.
    """
    key = get_task(task).key
    if not isinstance(records, list):
        raise PredictionFileError(f"{source}: expected a JSON list of prediction records")
    wanted = FIELDS[key]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise PredictionFileError(f"{source}: record {i}: not an object")
        missing = [f for f in ("data_id", "raw_response", *wanted) if f not in rec]
        if missing:
            other = [t for t, fs in FIELDS.items() if t != key and all(f in rec for f in fs)]
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
