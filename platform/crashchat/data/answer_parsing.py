"""Parse model answers into task values, following upstream CrashChat's evaluation rules exactly.

These are the lenient rules applied to *model output*. Annotation answers are held to the strict
format by :func:`check_answer_format`, which validation uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crashchat.data.tasks import AnswerKind, get_task

_NUMBER = r"\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_RANGE_RE = re.compile(rf"({_NUMBER})\s*-\s*({_NUMBER})")

_STRICT_INTERVAL_RE = re.compile(
    r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*seconds?\s*\.?\s*$"
)
_STRICT_TIMESTAMP_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*seconds?\s*\.?\s*$")


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed answer.

    Attributes:
        task: Task key.
        value: ``bool`` (recognition), ``(start, end)`` (crash localization), ``float``
            (pre-crash), ``str`` (text tasks), or ``None`` when upstream drops the answer.
        parsed: False when the answer did not follow any rule. For crash localization the value is
            then ``(0.0, 0.0)`` and the sample stays in the metrics with IoU 0, as upstream does.
        raw: The raw model response.
    """

    task: str
    value: Any
    parsed: bool
    raw: str

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (intervals as ``[start, end]``)."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"task": self.task, "value": value, "parsed": self.parsed, "raw": self.raw}


def parse_recognition(text: str) -> bool | None:
    """Upstream recognition rule: exact yes/no, else substring test, else ``None`` (dropped).

    The substring test means ``"normal"`` counts as *no*, exactly as upstream.
    """
    t = text.strip().lower()
    if t == "yes":
        return True
    if t == "no":
        return False
    has_yes, has_no = "yes" in t, "no" in t
    if has_yes and not has_no:
        return True
    if has_no and not has_yes:
        return False
    return None


def parse_interval(text: str) -> tuple[tuple[float, float], bool]:
    """Upstream crash-localization rule.

    First ``number - number``; else the first two numbers; else ``(0.0, 0.0)``. Reversed
    intervals are swapped.

    Returns:
        ``((start, end), parsed)`` where ``parsed`` is False for the ``(0.0, 0.0)`` fallback.
    """
    match = _RANGE_RE.search(text)
    if match:
        a, b = float(match.group(1)), float(match.group(2))
    else:
        numbers = _NUMBER_RE.findall(text)
        if len(numbers) < 2:
            return (0.0, 0.0), False
        a, b = float(numbers[0]), float(numbers[1])
    return (min(a, b), max(a, b)), True


def parse_timestamp(text: str) -> float | None:
    """Upstream pre-crash rule: the first number, else ``None`` (dropped)."""
    match = _NUMBER_RE.search(text)
    return float(match.group(0)) if match else None


def parse_text(text: str) -> str | None:
    """Upstream text rule: the stripped response; empty responses are skipped (``None``)."""
    stripped = text.strip()
    return stripped or None


def parse_answer(task: str, text: str) -> ParsedAnswer:
    """Parse ``text`` with the rule of ``task`` (a registry key or upstream file-name spelling)."""
    spec = get_task(task)
    if spec.kind is AnswerKind.BINARY:
        value: Any = parse_recognition(text)
        return ParsedAnswer(spec.key, value, value is not None, text)
    if spec.kind is AnswerKind.INTERVAL:
        interval, ok = parse_interval(text)
        return ParsedAnswer(spec.key, interval, ok, text)
    if spec.kind is AnswerKind.TIMESTAMP:
        value = parse_timestamp(text)
        return ParsedAnswer(spec.key, value, value is not None, text)
    value = parse_text(text)
    return ParsedAnswer(spec.key, value, value is not None, text)


def check_answer_format(kind: AnswerKind, text: str) -> str | None:
    """Check a *ground-truth* answer against its task's strict format.

    Returns:
        ``None`` when the answer fits, else a message saying what is wrong.
    """
    if kind is AnswerKind.BINARY:
        if text.strip() in ("Yes", "No"):
            return None
        return f"expected 'Yes' or 'No', got {text!r}"
    if kind is AnswerKind.INTERVAL:
        m = _STRICT_INTERVAL_RE.match(text)
        if not m:
            return f"expected an interval like '1.9 - 4.0 seconds', got {text!r}"
        start, end = float(m.group(1)), float(m.group(2))
        if start < 0 or end < 0:
            return f"negative time in interval {text!r}"
        if end < start:
            return f"interval ends before it starts ({end} < {start}) in {text!r}"
        return None
    if kind is AnswerKind.TIMESTAMP:
        m = _STRICT_TIMESTAMP_RE.match(text)
        if not m:
            return f"expected a timestamp like '4.5 seconds', got {text!r}"
        if float(m.group(1)) < 0:
            return f"negative time {text!r}"
        return None
    if not text.strip():
        return "empty answer"
    return None


def format_interval(start: float, end: float) -> str:
    """Write an interval the way CrashChat annotations do (one decimal)."""
    return f"{start:.1f} - {end:.1f} seconds"


def format_timestamp(t: float) -> str:
    """Write a timestamp the way CrashChat annotations do (one decimal)."""
    return f"{t:.1f} seconds"
