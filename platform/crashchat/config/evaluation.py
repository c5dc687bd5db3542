"""Batch evaluation config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crashchat.config.base import StrictModel
from crashchat.config.data import PreprocessConfig
from crashchat.config.training import TrackingConfig


class EvalConfig(StrictModel):
    """Batch evaluation (``crashchat evaluate``)."""

    split: str | None = Field("test", description="Evaluate rows of this split (None: all).")
    tasks: list[str] | None = Field(None, description="Evaluate only these task keys.")
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="Decoding and sampling of the evaluated clips (use the training settings).",
    )
    inputs: str | None = Field(
        None,
        description="With --annotations: the preprocessed dataset to create or reuse (default OUT/inputs). It is reused as is when its annotations and settings match, and its clips are never decoded twice; point several evaluations at one folder to share it.",
    )
    workers: int = Field(1, ge=1, description="Model actors answering in parallel.")
    worker_num_cpus: float = Field(1.0, gt=0, description="CPUs per model actor.")
    worker_num_gpus: float = Field(0.0, ge=0, description="GPUs per model actor.")
    batch_size: int = Field(4, ge=1, description="Rows handed to an actor at once.")
    max_new_tokens: int = Field(24, ge=1, description="Answer budget for short-answer tasks.")
    max_new_tokens_text: int = Field(160, ge=1, description="Answer budget for text tasks.")
    dtype: str = Field("auto", pattern=r"^(auto|bf16|fp16|fp32)$", description="Model dtype.")
    attention: str = Field("auto", description="Attention implementation (auto, sdpa, ...).")
    bertscore_model: str | None = Field(
        None,
        description="Local folder of a BERTScore model (e.g. roberta-large); without it BERTScore is reported as unavailable.",
    )
    parse: Literal["upstream", "robust"] = Field(
        "upstream",
        description="upstream: answers become predictions exactly as upstream CrashChat's evaluation code makes them, quirks included (comparable with the paper). robust: friendlier parsing (a trailing full stop, reversed intervals); its figures are not comparable with the paper's.",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Where evaluation metrics are logged."
    )
    log_to_mlflow: bool = Field(True, description="Log metrics to MLflow.")
