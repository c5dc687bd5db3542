"""A small client for the endpoint: send videos in bulk to ``/v1/batch`` and collect the lines.

Used by ``crashchat serve batch`` (and ``make demo``); any HTTP client can do the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


def videos_from(paths: list[Path]) -> list[Path]:
    """Video files given directly or found (recursively) in the given folders, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(p)
    return out


def videos_of_split(annotations: Path, video_root: Path, split: str) -> list[Path]:
    """The clips the annotation files of ``split`` refer to, each once."""
    from crashchat.data.validation import collect_samples

    files, _issues = collect_samples([annotations])
    seen: dict[str, Path] = {}
    for f in files:
        for s in f.samples:
            if s.split == split:
                seen.setdefault(s.video, video_root / s.video)
    return [seen[k] for k in sorted(seen)]


def batch_items(videos: list[Path], tasks: str, checkpoint: str) -> list[dict[str, Any]]:
    """``/v1/batch`` items for ``videos`` (absolute paths, ids are the file names)."""
    return [
        {
            "id": v.name,
            "video_path": os.path.abspath(v),
            "tasks": tasks,
            "checkpoint": checkpoint,
        }
        for v in videos
    ]


# An item failed because a process died or was busy, not because of the item: safe to resend
# (the same clip and tasks give the same answer).
RETRYABLE_STATUS = (502, 503, 504)
RETRYABLE_DETAIL = (
    "ActorDied", "ActorUnavailable", "RayActorError", "WorkerCrashed", "NodeDied",
    "died", "unavailable", "Connection", "at capacity",
)  # fmt: skip


def retryable(error: dict[str, Any]) -> bool:
    """True for an item error a resend can fix (a killed replica, a full queue)."""
    status = int(error.get("status", 0))
    detail = str(error.get("detail", ""))
    return status in RETRYABLE_STATUS or (
        status >= 500 and any(word in detail for word in RETRYABLE_DETAIL)
    )


def _post_batch(
    url: str, items: list[dict[str, Any]], token: str | None, timeout_s: float
) -> Iterator[dict[str, Any]]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with requests.post(
        url.rstrip("/") + "/v1/batch", json=items, headers=headers, stream=True, timeout=timeout_s
    ) as resp:
        if resp.status_code in RETRYABLE_STATUS:
            raise ConnectionError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.text[:500]}")
        for line in resp.iter_lines():
            if line:
                yield json.loads(line)


def send_batch(
    url: str,
    items: list[dict[str, Any]],
    token: str | None = None,
    timeout_s: float = 3600,
    retries: int = 5,
    backoff_s: float = 2.0,
) -> Iterator[dict[str, Any]]:
    """POST ``items`` to ``url``/v1/batch and yield one final line per item as it arrives, then
    a summary line.

    Items are idempotent (the same clip and tasks), so whatever a dying process cost is sent
    again: when the stream breaks (the router or its ingress was killed) the items without an
    answer go out in a new batch, and an item whose error says a replica died or a queue was
    full is resent, up to ``retries`` times per item (an item the stream ended without
    answering spends one of these too). A broken stream that answered something costs no item
    a try: a batch of thousands outlives any number of router restarts that each leave it
    further along. ``retries`` bounds the resends in a row that answer nothing before breaking,
    and the stalls (no line for ``timeout_s``, answered or not, so a hung endpoint costs at most
    ``retries + 1`` timeouts), waiting ``backoff_s`` doubled after each (at most a minute);
    then the items left end with the break as their error (it replaces an item's own retryable
    error of that attempt). ``retries=0`` resends nothing. Every item gets exactly one line:
    its result, or its last error. Lines carry the item's position in ``items`` as ``index``
    and how many times it was resent as ``retries``, which counts the free resends after
    breaks too and so may exceed the parameter.

    Raises:
        RuntimeError: when the endpoint refuses the whole batch (status and detail).
    """
    import time

    started = time.monotonic()
    pending = dict(enumerate(items))
    resent = dict.fromkeys(pending, 0)  # reported as the line's `retries`
    error_tries = dict.fromkeys(pending, 0)  # resends spent on the item's own retryable errors
    last_error: dict[int, dict[str, Any]] = {}
    counts = {"succeeded": 0, "failed": 0, "resent": 0}
    stalled = 0  # breaks in a row with nothing answered (or with no line for timeout_s)
    while pending:
        order = sorted(pending)
        erred: set[int] = set()  # items resendable for their own error in this attempt
        broken: str | None = None
        progress = False
        for line in _attempt(url, [pending[i] for i in order], token, timeout_s):
            if "broken" in line:
                broken = line["broken"]
                progress = progress and not line["stalled"]
                break
            i = order[line["index"]]
            if i not in pending:
                continue  # already answered (never yield an item twice)
            progress = True
            error = line.get("error")
            if error is not None and retryable(error) and error_tries[i] < retries:
                error_tries[i] += 1
                last_error[i] = line
                erred.add(i)
                continue
            del pending[i]
            counts["succeeded" if error is None else "failed"] += 1
            yield {**line, "index": i, "retries": resent[i]}
        stalled = 0 if broken is None or progress else stalled + 1
        for i in list(pending):
            if broken is not None:
                give_up = retries == 0 or stalled > retries
                last_error[i] = _item_error(items, i, f"stream broken: {broken}"[:300])
            elif i in erred:
                give_up = False
            else:  # the stream ended without a line for it
                give_up = error_tries[i] >= retries
                error_tries[i] += 1
            if give_up:
                del pending[i]
                counts["failed"] += 1
                line = last_error.get(i) or _item_error(items, i, "no answer")
                yield {**line, "index": i, "retries": resent[i]}
            else:
                resent[i] += 1
                counts["resent"] += 1
        if pending:
            time.sleep(min(60.0, backoff_s * 2 ** max(0, stalled - 1)))
    summary = {"items": len(items), **counts, "elapsed_s": round(time.monotonic() - started, 3)}
    yield {"summary": summary}


def _item_error(items: list[dict[str, Any]], i: int, detail: str) -> dict[str, Any]:
    return {"id": items[i].get("id", i), "error": {"status": 503, "detail": detail}}


def _attempt(
    url: str, items: list[dict[str, Any]], token: str | None, timeout_s: float
) -> Iterator[dict[str, Any]]:
    """One ``/v1/batch`` request's item lines; a last ``{"broken": why, "stalled": bool}`` if
    the stream broke (``stalled``: no line came for ``timeout_s``)."""
    import requests

    try:
        for line in _post_batch(url, items, token, timeout_s):
            if "summary" not in line and isinstance(line.get("index"), int):
                yield line
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        ConnectionError,
        ValueError,  # a cut-off last line
    ) as exc:
        # Requests reports a read timeout mid-stream as a ConnectionError naming it.
        stalled = isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower()
        yield {"broken": str(exc), "stalled": stalled}


# The report's perception fields, which have a truth to hold them against.
REPORT_TRUTH = {
    "crash_recognition": "crash",
    "crash_localization": "crash_interval_s",
    "pre_crash_localization": "pre_crash_cue_s",
}


def truth_of_split(annotations: Path, split: str) -> dict[str, dict[str, Any]]:
    """Per clip file name (a batch item's id): the annotated crash, interval and cue."""
    from crashchat.data.answer_parsing import parse_answer
    from crashchat.data.validation import collect_samples

    files, _issues = collect_samples([annotations])
    truth: dict[str, dict[str, Any]] = {}
    for f in files:
        for s in f.samples:
            if s.split == split and s.task in REPORT_TRUTH:
                parsed = parse_answer(s.task, s.answer, "robust")
                if parsed.parsed:
                    value = list(parsed.value) if isinstance(parsed.value, tuple) else parsed.value
                    truth.setdefault(Path(s.video).name, {})[REPORT_TRUTH[s.task]] = value
    return truth


def _fmt(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "crash":
        return "yes" if value else "no"
    if field == "crash_interval_s":
        return f"{value[0]:.1f}-{value[1]:.1f}"
    return f"{float(value):.1f}"


def report_row(line: dict[str, Any], truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """One clip's crash report as ``serve batch`` prints it: each perception field as
    ``answer`` (and ``answer / truth`` when the truth is known), which checkpoints answered, and
    the description unless the untrained baseline wrote it (its text means nothing).

    Returns:
        ``{"id", "crash", "crash_interval_s", "pre_crash_cue_s", "answered_by", "description",
        "match"}`` where ``match`` holds, per field with a truth, whether the answer agrees
        (interval: IoU >= 0.5; cue: within 1 s).
    """
    from crashchat.data.answer_parsing import temporal_iou
    from crashchat.serving.catalog import BASELINE

    result = line["result"]
    report, results = result.get("report", {}), result.get("results", {})
    truth = truth or {}
    row: dict[str, Any] = {"id": line.get("id"), "match": {}}
    for field in REPORT_TRUTH.values():
        answer = report.get(field)
        cell = _fmt(field, answer)
        if field in truth:
            cell += f" / {_fmt(field, truth[field])}"
            want = truth[field]
            if answer is None:
                row["match"][field] = False
            elif field == "crash":
                row["match"][field] = bool(answer) == bool(want)
            elif field == "crash_interval_s":
                row["match"][field] = temporal_iou(tuple(answer), tuple(want)) >= 0.5
            else:
                row["match"][field] = abs(float(answer) - float(want)) <= 1.0
        row[field] = cell
    names = sorted({r["checkpoint"] for r in results.values() if "checkpoint" in r})
    row["answered_by"] = ", ".join(f"{n} (untrained)" if n == BASELINE else n for n in names)
    described_by = results.get("crash_description", {}).get("checkpoint")
    text = report.get("description") or ""
    row["description"] = (
        "(untrained baseline: text not shown)" if described_by == BASELINE and text else text
    )
    return row
