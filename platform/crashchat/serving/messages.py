"""What the router, the decoder and the model replicas send each other.

Kept free of torch and transformers: the router only passes these along, and importing them
cost its replica about 7 s and 730 MB (measured: the router module imports in 1.9 s instead of
9.2 s; a router replica holds 231 MB instead of about 960) at every start and every restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crashchat.serving.clip_inputs import ClipInputs
from crashchat.serving.openai_api import Generation


@dataclass
class Failure:
    """A request-caused failure: HTTP status and what went wrong."""

    status: int
    detail: str


@dataclass
class Answer:
    """A model's answer to one question."""

    response: str
    model_ms: float
    batch_size: int
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass
class Question:
    """One task (or, with ``task`` None, a free-form question) asked about one clip."""

    clip: ClipInputs
    task: str | None
    prompt: str
    ids: list[int] | None = None  # prompt token ids, once tokenized on the replica
    generation: Generation | None = None  # per-request settings (OpenAI API); None: greedy

    def batch_key(self) -> tuple[Any, ...]:
        """Questions answered in one ``generate`` call must agree on this."""
        return self.generation.key() if self.generation else ()
