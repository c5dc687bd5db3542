"""The six CrashChat tasks, their two groups, and the training strategies as mixtures.

The registry is the single source of truth for task keys, the upstream file-name spelling of each
task, the kind of answer a task expects and which group it belongs to. Prompts are deliberately
absent: they come from the data (see :mod:`crashchat.data.prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AnswerKind(StrEnum):
    """How a task's answer is written and parsed."""

    BINARY = "binary"
    TEXT = "text"
    TIMESTAMP = "timestamp"
    INTERVAL = "interval"


LINGUISTIC = "linguistic_centric"
PERCEPTION = "perception_centric"
HETEROGENEOUS = "heterogeneous"


@dataclass(frozen=True)
class Task:
    """One CrashChat task.

    Attributes:
        key: Registry key used everywhere in the platform (e.g. ``causal_reasoning``).
        file_name: The task's spelling in upstream annotation file names (``cause_reasoning``).
        kind: The answer form the task expects.
        group: ``linguistic_centric`` or ``perception_centric``.
        title: Human-readable name.
        crash_only: True when the task only exists for crash clips (localization tasks).
    """

    key: str
    file_name: str
    kind: AnswerKind
    group: str
    title: str
    crash_only: bool = False


TASKS: dict[str, Task] = {
    t.key: t
    for t in (
        Task(
            "crash_recognition",
            "crash_recognition",
            AnswerKind.BINARY,
            LINGUISTIC,
            "Crash recognition",
        ),
        Task(
            "crash_description",
            "crash_description",
            AnswerKind.TEXT,
            LINGUISTIC,
            "Crash description",
        ),
        Task(
            "causal_reasoning", "cause_reasoning", AnswerKind.TEXT, LINGUISTIC, "Causal reasoning"
        ),
        Task(
            "prevention_reasoning",
            "prevention_reasoning",
            AnswerKind.TEXT,
            LINGUISTIC,
            "Prevention reasoning",
        ),
        Task(
            "pre_crash_localization",
            "pre_crash_localization",
            AnswerKind.TIMESTAMP,
            PERCEPTION,
            "Pre-crash localization",
            crash_only=True,
        ),
        Task(
            "crash_localization",
            "crash_localization",
            AnswerKind.INTERVAL,
            PERCEPTION,
            "Crash localization",
            crash_only=True,
        ),
    )
}

TASK_KEYS: tuple[str, ...] = tuple(TASKS)

GROUPS: dict[str, tuple[str, ...]] = {
    LINGUISTIC: tuple(k for k, t in TASKS.items() if t.group == LINGUISTIC),
    PERCEPTION: tuple(k for k, t in TASKS.items() if t.group == PERCEPTION),
}


@dataclass(frozen=True)
class Mixture:
    """A training mixture: the set of tasks one fine-tuned checkpoint is trained on.

    Attributes:
        name: Mixture name, also the checkpoint and registry alias name.
        strategy: ``monotask``, ``homogeneous`` or ``heterogeneous``.
        tasks: Task keys trained together.
    """

    name: str
    strategy: str
    tasks: tuple[str, ...]


def _build_mixtures() -> dict[str, Mixture]:
    mixtures = [Mixture(k, "monotask", (k,)) for k in TASK_KEYS]
    mixtures += [Mixture(g, "homogeneous", keys) for g, keys in GROUPS.items()]
    mixtures.append(Mixture(HETEROGENEOUS, "heterogeneous", TASK_KEYS))
    return {m.name: m for m in mixtures}


MIXTURES: dict[str, Mixture] = _build_mixtures()

STRATEGIES: dict[str, tuple[str, ...]] = {
    "monotask": tuple(m.name for m in MIXTURES.values() if m.strategy == "monotask"),
    "homogeneous": tuple(m.name for m in MIXTURES.values() if m.strategy == "homogeneous"),
    "heterogeneous": (HETEROGENEOUS,),
}
STRATEGIES["all"] = STRATEGIES["monotask"] + STRATEGIES["homogeneous"] + STRATEGIES["heterogeneous"]

# Upstream names files after tasks and groups; these are all the "<task>" parts a file may carry.
FILE_NAME_TO_TASK: dict[str, str] = {t.file_name: t.key for t in TASKS.values()}
GROUP_FILE_NAMES: tuple[str, ...] = (LINGUISTIC, PERCEPTION, HETEROGENEOUS)


def get_task(key: str) -> Task:
    """Return the task for ``key``; accepts the upstream file-name spelling too.

    Raises:
        KeyError: with the list of known keys when ``key`` is not a task.
    """
    key = FILE_NAME_TO_TASK.get(key, key)
    try:
        return TASKS[key]
    except KeyError:
        raise KeyError(f"unknown task {key!r}; known tasks: {', '.join(TASK_KEYS)}") from None


def get_mixture(name: str) -> Mixture:
    """Return the mixture called ``name`` (a task key or a group/all-task name).

    Raises:
        KeyError: with the list of known mixtures.
    """
    name = FILE_NAME_TO_TASK.get(name, name)
    try:
        return MIXTURES[name]
    except KeyError:
        raise KeyError(f"unknown mixture {name!r}; known mixtures: {', '.join(MIXTURES)}") from None


def mixtures_for_strategy(strategy: str) -> tuple[Mixture, ...]:
    """Expand a strategy (``monotask``, ``homogeneous``, ``heterogeneous`` or ``all``)."""
    try:
        return tuple(MIXTURES[n] for n in STRATEGIES[strategy])
    except KeyError:
        raise KeyError(
            f"unknown strategy {strategy!r}; known strategies: {', '.join(STRATEGIES)}"
        ) from None
