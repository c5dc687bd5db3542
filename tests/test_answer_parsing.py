"""Answer parsing: upstream CrashChat's rules (default) and the robust option, on tricky answers.

The upstream columns were worked out by reading upstream's evaluation code (Liangkd/CrashChat,
``evaluation/benchmarks/``): recognition ``crash_video_ar._parse_yes_no``, crash localization
``crash_video_tl._parse_time_range``, pre-crash ``crash_video_al._parse_timestamp`` (the
``crash_al`` benchmark its ``eval_video_pre_crash_localization.sh`` runs). Numbers there are runs of
``[\\d.]+`` read by ``float()``, so a trailing full stop spoils a number.
"""

from __future__ import annotations

from typing import Any

import pytest

from crashchat.data.answer_parsing import (
    PARSERS,
    check_answer_format,
    parse_answer,
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
)
from crashchat.data.tasks import AnswerKind

Z = (0.0, 0.0)  # crash localization's fallback: kept, with IoU 0
# (start, end) or None where the answer falls back to (0.0, 0.0) (parsed False).
Iv = tuple[float, float] | None

# raw answer, upstream interval, upstream time, recognition, robust interval, robust time
TABLE: list[tuple[str, Iv, float | None, bool | None, Iv, float | None]] = [
    ("", None, None, None, None, None),
    (".", None, None, None, None, None),
    ("...", None, None, None, None, None),
    ("yes", None, None, True, None, None),
    ("Yes.", None, None, True, None, None),  # exact match fails, substring "yes" wins
    ("YES", None, None, True, None, None),
    ("no", None, None, False, None, None),
    ("No.", None, None, False, None, None),
    ("yesno", None, None, None, None, None),  # both substrings: dropped
    ("I don't know", None, None, False, None, None),  # k-no-w
    ("normal", None, None, False, None, None),
    ("not sure", None, None, False, None, None),
    ("unknown", None, None, False, None, None),
    ("Nope", None, None, False, None, None),
    ("eyes", None, None, True, None, None),
    ("Yes, there is no crash", None, None, None, None, None),
    ("Yes, the ego-car hits another vehicle", None, None, None, None, None),  # a-no-ther
    ("no, yes", None, None, None, None, None),
    ("4.5", None, 4.5, None, None, 4.5),  # one number: no interval
    ("4.5 seconds", None, 4.5, None, None, 4.5),
    ("12 s", None, 12.0, None, None, 12.0),
    ("The cue appears at 4.5.", None, None, None, None, 4.5),  # float("4.5.") fails: dropped
    ("at 4.5. then", None, None, None, None, 4.5),
    ("at .5 seconds", None, 0.5, None, None, 5.0),  # robust numbers need a leading digit
    ("3.0 - 4.0 seconds", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),
    ("2.5 - 4.0 seconds.", (2.5, 4.0), 2.5, None, (2.5, 4.0), 2.5),  # full stop after a word
    (" 1.9 - 4.0 seconds \n", (1.9, 4.0), 1.9, None, (1.9, 4.0), 1.9),
    ("3.0 - 4.0.", None, 3.0, None, (3.0, 4.0), 3.0),  # "4.0." spoils both upstream tries
    ("3.0 - 4.0. Then 5 - 6", None, 3.0, None, (3.0, 4.0), 3.0),  # later ranges never tried
    ("3.0-4.0", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),
    ("4.0 - 3.0 seconds", (4.0, 3.0), 4.0, None, (3.0, 4.0), 4.0),  # upstream keeps the order
    ("from 3.0 to 4.0", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),  # first two numbers
    ("between 2 and 5 seconds", (2.0, 5.0), 2.0, None, (2.0, 5.0), 2.0),
    ("3 4", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),
    ("1.2.3 - 4", None, None, None, (2.3, 4.0), 1.2),  # float("1.2.3") fails
    ("-3.0 - 4.0", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),  # no sign: "-" is a separator
    ("5", None, 5.0, None, None, 5.0),
    (". - 4.0", None, None, None, None, 4.0),  # float(".") fails; only the first token tried
    ("1e3", (1.0, 3.0), 1.0, None, (1.0, 3.0), 1.0),  # no exponent: two numbers
    ("2.5 - ", None, 2.5, None, None, 2.5),
    ("- 2.5", None, 2.5, None, None, 2.5),
    ("3..5 - 6", None, None, None, (5.0, 6.0), 3.0),
    ("crash at 3.0s - 4.0s", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),  # via the two numbers
    ("3.0 \u2013 4.0", (3.0, 4.0), 3.0, None, (3.0, 4.0), 3.0),  # en dash: two numbers
    ("abc 7. def 8", (7.0, 8.0), 7.0, None, (7.0, 8.0), 7.0),  # float("7.") is 7.0
    ("7. - 8.", (7.0, 8.0), 7.0, None, (7.0, 8.0), 7.0),
    ("0 - 0", Z, 0.0, None, Z, 0.0),  # a real (0, 0) answer parses
]


def _interval(expected: Iv) -> tuple[tuple[float, float], bool]:
    return (Z, False) if expected is None else (expected, True)


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 30 and len({row[0] for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize(("text", "up_iv", "up_t", "yes_no", "rb_iv", "rb_t"), TABLE)
def test_upstream_rules(
    text: str, up_iv: Iv, up_t: float | None, yes_no: bool | None, rb_iv: Iv, rb_t: float | None
) -> None:
    assert parse_interval(text) == _interval(up_iv)
    assert parse_timestamp(text) == up_t
    assert parse_recognition(text) is yes_no


@pytest.mark.parametrize(("text", "up_iv", "up_t", "yes_no", "rb_iv", "rb_t"), TABLE)
def test_robust_rules(
    text: str, up_iv: Iv, up_t: float | None, yes_no: bool | None, rb_iv: Iv, rb_t: float | None
) -> None:
    assert parse_interval(text, "robust") == _interval(rb_iv)
    assert parse_timestamp(text, "robust") == rb_t
    assert parse_recognition(text, "robust") is yes_no  # the same rule for both parsers


@pytest.mark.parametrize(("text", "up_iv", "up_t", "yes_no", "rb_iv", "rb_t"), TABLE)
def test_parse_answer_follows_the_table(
    text: str, up_iv: Iv, up_t: float | None, yes_no: bool | None, rb_iv: Iv, rb_t: float | None
) -> None:
    for parser, iv, t in (("upstream", up_iv, up_t), ("robust", rb_iv, rb_t)):
        loc = parse_answer("crash_localization", text, parser)
        assert (loc.value, loc.parsed) == _interval(iv) and loc.parser == parser
        pre = parse_answer("pre_crash_localization", text, parser=parser)
        assert (pre.value, pre.parsed) == (t, t is not None)
        rec = parse_answer("crash_recognition", text, parser=parser)
        assert (rec.value, rec.parsed) == (yes_no, yes_no is not None)


@pytest.mark.parametrize(
    ("text", "stripped"),
    [("  car hits a truck \n", "car hits a truck"), ("", ""), ("   ", ""), (".", ".")],
)
def test_text_rule_strips_and_keeps_empty(text: str, stripped: str) -> None:
    for parser in PARSERS:
        assert parse_text(text, parser) == stripped
        ans = parse_answer("crash_description", text, parser)
        # An empty answer is dropped by the metrics, so it reports no value.
        assert (ans.value, ans.parsed) == ((stripped, True) if stripped else (None, False))


def test_parse_answer_defaults_to_upstream_and_serialises() -> None:
    ans = parse_answer("crash_localization", "4.0 - 3.0 seconds")
    assert ans.parser == "upstream" and ans.value == (4.0, 3.0)
    js: dict[str, Any] = ans.to_json()
    assert js == {
        "task": "crash_localization",
        "value": [4.0, 3.0],
        "parsed": True,
        "raw": "4.0 - 3.0 seconds",
        "parser": "upstream",
    }
    assert parse_answer("cause_reasoning", "speeding").value == "speeding"  # upstream spelling
    assert parse_answer("crash_localization", "unknown").to_json()["value"] == [0.0, 0.0]


def test_unknown_parser_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream or robust"):
        parse_interval("1 - 2", "lenient")
    with pytest.raises(ValueError, match="upstream or robust"):
        parse_answer("crash_recognition", "Yes", "lenient")


@pytest.mark.parametrize(
    ("kind", "text", "ok"),
    [
        (AnswerKind.BINARY, "Yes", True),
        (AnswerKind.BINARY, "yes", False),
        (AnswerKind.BINARY, "1.9 - 4.0 seconds", False),
        (AnswerKind.INTERVAL, "1.9 - 4.0 seconds", True),
        (AnswerKind.INTERVAL, "4.5 seconds", False),
        (AnswerKind.INTERVAL, "4.0 - 1.9 seconds", False),
        (AnswerKind.INTERVAL, "-1.0 - 2.0 seconds", False),
        (AnswerKind.TIMESTAMP, "4.5 seconds", True),
        (AnswerKind.TIMESTAMP, "Yes", False),
        (AnswerKind.TIMESTAMP, "-0.5 seconds", False),
        (AnswerKind.TEXT, "", False),
        (AnswerKind.TEXT, "car hits a truck", True),
    ],
)
def test_strict_ground_truth_format(kind: AnswerKind, text: str, ok: bool) -> None:
    assert (check_answer_format(kind, text) is None) is ok
