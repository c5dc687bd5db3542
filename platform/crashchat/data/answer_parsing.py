"""Parse model answers into task values: upstream CrashChat's rules by default, or ``robust`` ones.

``upstream`` reproduces what upstream's official evaluation (``scripts/eval/eval_video_*.sh`` ->
``evaluation/evaluate.py --benchmark crash_ar|crash_tl|crash_al|crash_ac|crash_acau|crash_am``)
makes of an answer, quirks included, so that our figures are comparable with the paper's:

- recognition: stripped and lower-cased; exactly ``yes``/``no``; else a substring test (``yes``
  without ``no`` is yes, ``no`` without ``yes`` is no, so ``normal`` and ``I don't know`` count as
  no); else dropped.
- crash localization: the first ``a - b`` whose numbers ``float()`` reads, else the first two
  numbers, else ``(0.0, 0.0)``, which stays in the metrics with IoU 0. Numbers are runs of digits
  and dots, so a trailing full stop spoils a number (``4.0.``). The order is kept; the metric
  swaps reversed intervals.
- pre-crash localization: the first number, else dropped (the ``crash_al`` benchmark that the
  official script runs, not ``crash_pl``, which would give 0.0).
- text tasks: the stripped response; empty answers are skipped by the metrics.

``robust`` is friendlier: numbers are ``12`` or ``12.5`` (a trailing full stop is punctuation),
reversed intervals are swapped. Its figures are not comparable with the paper's.

These rules apply to *model output*. Annotation answers are held to the strict format by
:func:`check_answer_format`, which validation uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crashchat.data.tasks import AnswerKind, get_task

PARSERS = ("upstream", "robust")

# Upstream's number: any run of digits and dots ("4.5." and "1.2.3" included, float() decides).
_LOOSE_NUMBER_RE = re.compile(r"[\d\.]+")
_LOOSE_RANGE_RE = re.compile(r"([\d\.]+)\s*-\s*([\d\.]+)")

_NUMBER = r"\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_RANGE_RE = re.compile(rf"({_NUMBER})\s*-\s*({_NUMBER})")

_STRICT_INTERVAL_RE = re.compile(
    r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*seconds?\s*\.?\s*$"
)
_STRICT_TIMESTAMP_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*seconds?\s*\.?\s*$")

Interval = tuple[float, float]


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed answer.

    Attributes:
        task: Task key.
        value: ``bool`` (recognition), ``(start, end)`` (crash localization), ``float``
            (pre-crash), ``str`` (text tasks), or ``None`` when the answer is dropped.
        parsed: False when the answer did not follow any rule. For crash localization the value is
            then ``(0.0, 0.0)`` and the sample stays in the metrics with IoU 0, as upstream does.
        raw: The raw model response.
        parser: ``upstream`` or ``robust``.
    """

    task: str
    value: Any
    parsed: bool
    raw: str
    parser: str = "upstream"

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (intervals as ``[start, end]``)."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {
            "task": self.task,
            "value": value,
            "parsed": self.parsed,
            "raw": self.raw,
            "parser": self.parser,
        }


def check_parser(parser: str) -> str:
    """Return ``parser`` when it is ``upstream`` or ``robust``.

    Raises:
        ValueError: for any other name.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown answer parser {parser!r}: choose upstream or robust")
    return parser


def _to_float(token: str) -> float | None:
    """``float(token)``, or None where upstream's ``float()`` raised and it fell back."""
    try:
        return float(token)
    except ValueError:
        return None


def parse_recognition(text: str, parser: str = "upstream") -> bool | None:
    """Yes/no of a recognition answer; ``None`` means dropped (the same rule for both parsers).

    Exact ``yes``/``no`` after strip and lower-case, else the substring test, so ``"normal"`` and
    ``"I don't know"`` count as *no*, and ``"yesno"`` or ``"Yes, no crash"`` are dropped.
    """
    check_parser(parser)
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


def _upstream_interval(text: str) -> tuple[Interval, bool]:
    match = _LOOSE_RANGE_RE.search(text)
    if match:
        start, end = _to_float(match.group(1)), _to_float(match.group(2))
        if start is not None and end is not None:
            return (start, end), True
    # Upstream retries with the first two numbers anywhere, even when the range matched.
    tokens = _LOOSE_NUMBER_RE.findall(text)
    if len(tokens) >= 2:
        start, end = _to_float(tokens[0]), _to_float(tokens[1])
        if start is not None and end is not None:
            return (start, end), True
    return (0.0, 0.0), False


def _robust_interval(text: str) -> tuple[Interval, bool]:
    match = _RANGE_RE.search(text)
    if match:
        a, b = float(match.group(1)), float(match.group(2))
    else:
        numbers = _NUMBER_RE.findall(text)
        if len(numbers) < 2:
            return (0.0, 0.0), False
        a, b = float(numbers[0]), float(numbers[1])
    return (min(a, b), max(a, b)), True


def parse_interval(text: str, parser: str = "upstream") -> tuple[Interval, bool]:
    """The crash interval of an answer.

    Args:
        text: The answer.
        parser: ``upstream``: the first ``a - b`` that ``float()`` reads, else the first two
            numbers (``[\\d.]+`` runs), else ``(0.0, 0.0)``; the order is kept. ``robust``: the same
            with ``12``/``12.5`` numbers, reversed intervals swapped.

    Returns:
        ``((start, end), parsed)`` where ``parsed`` is False for the ``(0.0, 0.0)`` fallback.
    """
    if check_parser(parser) == "upstream":
        return _upstream_interval(text)
    return _robust_interval(text)


def parse_timestamp(text: str, parser: str = "upstream") -> float | None:
    """The pre-crash time of an answer, or ``None`` (dropped).

    Args:
        text: The answer.
        parser: ``upstream``: the first ``[\\d.]+`` run if ``float()`` reads it (``4.5.`` does
            not, and the next number is not tried). ``robust``: the first ``12``/``12.5`` number.
    """
    if check_parser(parser) == "upstream":
        match = _LOOSE_NUMBER_RE.search(text)
        return _to_float(match.group(0)) if match else None
    match = _NUMBER_RE.search(text)
    return float(match.group(0)) if match else None


def parse_text(text: str, parser: str = "upstream") -> str:
    """The stripped response (both parsers); the metrics skip an empty one."""
    check_parser(parser)
    return text.strip()


def _parse_value(kind: AnswerKind, text: str, parser: str) -> tuple[Any, bool]:
    if kind is AnswerKind.INTERVAL:
        return parse_interval(text, parser)
    value: Any
    if kind is AnswerKind.BINARY:
        value = parse_recognition(text, parser)
    elif kind is AnswerKind.TIMESTAMP:
        value = parse_timestamp(text, parser)
    else:
        value = parse_text(text, parser) or None  # an empty answer says nothing: dropped
    return value, value is not None


def parse_answer(task: str, text: str, parser: str = "upstream") -> ParsedAnswer:
    """Parse ``text`` with the rule of ``task`` (a registry key or upstream file-name spelling).

    Args:
        task: Task key.
        text: The model's answer.
        parser: ``upstream`` (default, as the paper's evaluation) or ``robust``.
    """
    spec = get_task(task)
    value, parsed = _parse_value(spec.kind, text, check_parser(parser))
    return ParsedAnswer(spec.key, value, parsed, text, parser)


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


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """IoU of two intervals, reversed ones swapped first (0 when the union is empty)."""
    (ps, pe), (gs, ge) = sorted(pred), sorted(gt)
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(0.0, max(pe, ge) - min(ps, gs))
    return inter / union if union > 0 else 0.0


def format_interval(start: float, end: float) -> str:
    """Write an interval the way CrashChat annotations do (one decimal)."""
    return f"{start:.1f} - {end:.1f} seconds"


def format_timestamp(t: float) -> str:
    """Write a timestamp the way CrashChat annotations do (one decimal)."""
    return f"{t:.1f} seconds"
