"""Task prompts come from the data, never from hard-coded copies of upstream sentences.

A :class:`PromptCatalog` maps each task to the prompt its records carry. It is learned from
single-task annotation files, saved beside datasets and checkpoints as ``prompts.json``, and used
to recognise the task of a record in a mixed (group) file. When a prompt is not in the catalog,
:func:`guess_task_from_prompt` applies generic keyword rules describing what each task asks for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crashchat.data.tasks import TASK_KEYS, get_task

VIDEO_TAG = "<video>"

# Ordered: the first rule whose pattern matches wins. Interval before timestamp ("start and end
# timestamps"), prevention and cause before description (their prompts also say "describe").
_KEYWORD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("crash_localization", re.compile(r"time range|start and end|start - end", re.I)),
    (
        "pre_crash_localization",
        re.compile(r"first (visible )?(sign|cue)|pre-crash|early crash cue|moment when", re.I),
    ),
    ("crash_recognition", re.compile(r"'?yes'? or '?no'?", re.I)),
    ("prevention_reasoning", re.compile(r"prevent", re.I)),
    ("causal_reasoning", re.compile(r"\bcause", re.I)),
    ("crash_description", re.compile(r"describ|\[subject\]", re.I)),
)


def strip_video_tag(prompt: str) -> str:
    """Remove the leading ``<video>`` tag (and the newline after it) from a human turn."""
    text = prompt.strip()
    if text.startswith(VIDEO_TAG):
        text = text[len(VIDEO_TAG) :].lstrip("\n")
    return text.strip()


def guess_task_from_prompt(prompt: str) -> str | None:
    """Recognise a task from what its prompt asks for, or ``None`` when no rule applies."""
    text = strip_video_tag(prompt)
    for key, pattern in _KEYWORD_RULES:
        if pattern.search(text):
            return key
    return None


class PromptCatalog:
    """Task -> prompt (without the ``<video>`` tag), learned from data."""

    def __init__(self, prompts: dict[str, str] | None = None) -> None:
        self._prompts: dict[str, str] = {}
        for task, prompt in (prompts or {}).items():
            self.add(task, prompt)

    def add(self, task: str, prompt: str) -> None:
        """Record ``prompt`` for ``task``; the first prompt seen for a task is kept."""
        self._prompts.setdefault(get_task(task).key, strip_video_tag(prompt))

    def get(self, task: str) -> str:
        """The prompt for ``task``.

        Raises:
            KeyError: when the catalog has no prompt for the task.
        """
        key = get_task(task).key
        if key not in self._prompts:
            raise KeyError(
                f"no prompt known for task {key!r}; the catalog holds {sorted(self._prompts)}"
            )
        return self._prompts[key]

    def task_for(self, prompt: str) -> str | None:
        """The task whose catalogued prompt equals ``prompt``, else the keyword guess."""
        text = strip_video_tag(prompt)
        for task, known in self._prompts.items():
            if known == text:
                return task
        return guess_task_from_prompt(text)

    def as_dict(self) -> dict[str, str]:
        """Prompts in registry order."""
        return {k: self._prompts[k] for k in TASK_KEYS if k in self._prompts}

    def __contains__(self, task: object) -> bool:
        return task in self._prompts

    def __len__(self) -> int:
        return len(self._prompts)

    def save(self, path: str | Path) -> None:
        """Write ``prompts.json``."""
        Path(path).write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PromptCatalog:
        """Read a ``prompts.json`` written by :meth:`save`."""
        return cls(json.loads(Path(path).read_text()))
