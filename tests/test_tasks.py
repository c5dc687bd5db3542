import pytest

from crashchat.data.tasks import (
    GROUPS,
    MIXTURES,
    STRATEGIES,
    TASKS,
    AnswerKind,
    get_mixture,
    get_task,
    mixtures_for_strategy,
)


def test_six_tasks_with_kinds_and_groups() -> None:
    assert list(TASKS) == [
        "crash_recognition",
        "crash_description",
        "causal_reasoning",
        "prevention_reasoning",
        "pre_crash_localization",
        "crash_localization",
    ]
    assert get_task("crash_recognition").kind is AnswerKind.BINARY
    assert get_task("crash_localization").kind is AnswerKind.INTERVAL
    assert get_task("pre_crash_localization").kind is AnswerKind.TIMESTAMP
    assert {get_task(k).kind for k in GROUPS["linguistic_centric"][1:]} == {AnswerKind.TEXT}
    assert GROUPS["perception_centric"] == ("pre_crash_localization", "crash_localization")


def test_upstream_file_spelling_of_causal_task() -> None:
    assert get_task("cause_reasoning").key == "causal_reasoning"
    assert TASKS["causal_reasoning"].file_name == "cause_reasoning"


def test_strategies_expand_to_nine_mixtures() -> None:
    assert len(MIXTURES) == 9
    assert len(STRATEGIES["monotask"]) == 6
    assert STRATEGIES["homogeneous"] == ("linguistic_centric", "perception_centric")
    assert get_mixture("heterogeneous").tasks == tuple(TASKS)
    assert [m.name for m in mixtures_for_strategy("all")] == list(MIXTURES)
    assert get_mixture("linguistic_centric").tasks == GROUPS["linguistic_centric"]


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(KeyError, match="crash_recognition"):
        get_task("crash_detection")
    with pytest.raises(KeyError, match="heterogeneous"):
        get_mixture("everything")
    with pytest.raises(KeyError, match="monotask"):
        mixtures_for_strategy("bogus")
