import pytest

from crashchat.data.answer_parsing import (
    check_answer_format,
    parse_answer,
    parse_interval,
    parse_recognition,
    parse_text,
    parse_timestamp,
)
from crashchat.data.tasks import AnswerKind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        (" yes ", True),
        ("No", False),
        ("NO", False),
        ("Yes, a car hits a truck.", True),  # contains yes, not no
        ("There is no crash.", False),  # contains no, not yes
        ("normal traffic", False),  # upstream substring rule: "normal" contains "no"
        ("yes and no", None),  # both -> unparseable, dropped
        ("maybe", None),
        ("", None),
    ],
)
def test_recognition_rule(text: str, expected: bool | None) -> None:
    assert parse_recognition(text) is expected


@pytest.mark.parametrize(
    ("text", "expected", "parsed"),
    [
        ("1.9 - 4.0 seconds", (1.9, 4.0), True),
        ("from 2-3", (2.0, 3.0), True),
        ("The crash is at 5.5 s and ends 7 s", (5.5, 7.0), True),  # first two numbers
        ("4.0 - 1.9 seconds", (1.9, 4.0), True),  # reversed -> swapped
        ("at 3 then 1.5", (1.5, 3.0), True),  # first two numbers, swapped
        ("about 3 seconds", (0.0, 0.0), False),  # one number -> fallback
        ("no crash", (0.0, 0.0), False),
    ],
)
def test_interval_rule(text: str, expected: tuple[float, float], parsed: bool) -> None:
    assert parse_interval(text) == (expected, parsed)


def test_interval_prefers_range_over_earlier_numbers() -> None:
    assert parse_interval("clip 12 shows 3.0 - 4.5") == ((3.0, 4.5), True)


def test_timestamp_and_text_rules() -> None:
    assert parse_timestamp("4.5 seconds") == 4.5
    assert parse_timestamp("around 12 s, maybe 13") == 12.0
    assert parse_timestamp("none") is None
    assert parse_text("  car hits a truck \n") == "car hits a truck"
    assert parse_text("   ") is None


def test_parse_answer_dispatches_by_task_and_keeps_interval_fallback() -> None:
    ans = parse_answer("crash_localization", "unknown")
    assert ans.value == (0.0, 0.0) and ans.parsed is False
    assert ans.to_json()["value"] == [0.0, 0.0]
    assert parse_answer("cause_reasoning", "speeding").value == "speeding"
    assert parse_answer("crash_recognition", "Yes").value is True
    assert parse_answer("pre_crash_localization", "?").parsed is False


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
