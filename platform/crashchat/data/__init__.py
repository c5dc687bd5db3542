"""CrashChat data model: tasks, annotation format, validation, answer parsing, synthetic data."""

from crashchat.data.tasks import (
    GROUPS,
    MIXTURES,
    STRATEGIES,
    TASKS,
    AnswerKind,
    Mixture,
    Task,
    get_mixture,
    get_task,
)

__all__ = [
    "GROUPS",
    "MIXTURES",
    "STRATEGIES",
    "TASKS",
    "AnswerKind",
    "Mixture",
    "Task",
    "get_mixture",
    "get_task",
]
