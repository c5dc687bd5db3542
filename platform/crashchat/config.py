"""The platform's typed configuration tree.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key fails loudly with its
path. YAML files load through :func:`load_config`; ``--set key.sub=value`` overrides go through
:func:`apply_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(StrictModel):
    """Synthetic crash-video generation (``crashchat data synth``)."""

    videos: int = Field(60, ge=1, description="Number of clips to generate.")
    seed: int = Field(0, description="Random seed; the same seed gives the same dataset.")
    width: int = Field(
        112, ge=32, le=1024, multiple_of=2, description="Frame width in pixels (even)."
    )
    height: int = Field(
        112, ge=32, le=1024, multiple_of=2, description="Frame height in pixels (even)."
    )
    fps: int = Field(10, ge=1, le=60, description="Frame rate of the written mp4 files.")
    min_duration: float = Field(3.0, gt=0, description="Shortest clip, seconds.")
    max_duration: float = Field(5.0, gt=0, description="Longest clip, seconds.")
    normal_fraction: float = Field(1 / 3, ge=0, le=1, description="Share of clips without a crash.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of clips in the val split.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of clips in the test split.")
    dataset: str = Field("synth", pattern=r"^[a-z0-9]+$", description="Dataset part of file names.")

    @model_validator(mode="after")
    def _check_ranges(self) -> SynthConfig:
        if self.max_duration < self.min_duration:
            raise ValueError("max_duration must be >= min_duration")
        if self.min_duration < 2.5:
            raise ValueError("min_duration must be >= 2.5 s to fit cue, crash and rest")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave clips for training")
        return self


class TinyModelConfig(StrictModel):
    """Size of the randomly initialised tiny VideoLLaMA3 (``crashchat model tiny``)."""

    text_hidden_size: int = Field(64, ge=8, description="Qwen2 hidden size.")
    text_layers: int = Field(2, ge=1, description="Qwen2 decoder layers.")
    text_heads: int = Field(4, ge=1, description="Attention heads.")
    text_kv_heads: int = Field(2, ge=1, description="Key/value heads (GQA).")
    text_intermediate_size: int = Field(128, ge=8, description="MLP width.")
    vision_hidden_size: int = Field(32, ge=8, description="Vision encoder hidden size.")
    vision_layers: int = Field(2, ge=1, description="Vision encoder layers.")
    vision_heads: int = Field(2, ge=1, description="Vision attention heads.")
    vision_intermediate_size: int = Field(64, ge=8, description="Vision MLP width.")
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary size (incl. special tokens).")
    frame_size: int = Field(
        56,
        ge=28,
        multiple_of=28,
        description="Frames are resized to this square size (pixels, multiple of 28).",
    )
    use_token_compression: bool = Field(
        False,
        description="VideoLLaMA3 token compression of static patches (upstream: on). Off keeps the video-token count fixed per frame.",
    )
    seed: int = Field(0, description="Initialisation seed.")

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelConfig:
        if self.text_hidden_size % self.text_heads or self.text_heads % self.text_kv_heads:
            raise ValueError(
                "text_hidden_size must divide by text_heads, and text_heads by text_kv_heads"
            )
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must divide by vision_heads")
        return self


class ProbeLimits(StrictModel):
    """Limits checked on the container before any decoding."""

    max_width: int = Field(4096, ge=1, description="Widest accepted frame, pixels.")
    max_height: int = Field(4096, ge=1, description="Tallest accepted frame, pixels.")
    max_duration_s: float = Field(600.0, gt=0, description="Longest accepted clip, seconds.")
    max_file_mb: float = Field(2048.0, gt=0, description="Largest accepted file, MiB.")


class PlacementConfig(StrictModel):
    """Where decode and preprocessing work runs on a cluster."""

    resource: str | None = Field(
        "cpu_decode",
        description="Custom resource that marks CPU decode nodes. Requested only when some node offers it; otherwise work runs anywhere.",
    )
    resource_per_task: float = Field(
        0.001,
        gt=0,
        description="Amount of ``resource`` each decode task and preprocessing worker asks for.",
    )
    node_labels: dict[str, str] | None = Field(
        None,
        description="Ray node labels required for decode work (label_selector), e.g. {'crashchat/role': 'decode'}.",
    )


class PreprocessConfig(StrictModel):
    """The Ray Data preprocessing job (``crashchat preprocess``)."""

    fps: float = Field(10.0, gt=0, description="Frames sampled per second of video (upstream: 10).")
    max_frames: int = Field(96, ge=1, description="Cap on sampled frames per clip (upstream: 96).")
    min_frames: int = Field(
        4, ge=1, description="Minimum frames per clip (the VideoLLaMA3 processor needs 4)."
    )
    frame_size: int | None = Field(
        None,
        ge=28,
        multiple_of=28,
        description="Decode frames at this square size. Default: the model's own (tiny models), else the processor's pixel budget.",
    )
    max_visual_tokens: int = Field(
        16384,
        ge=1,
        description="Whole-clip visual-token budget when frames are sized by the processor (upstream: 16384).",
    )
    limits: ProbeLimits = Field(default_factory=ProbeLimits, description="Container limits.")
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig, description="Node placement."
    )
    decode_retries: int = Field(
        2, ge=0, description="Retries of a decode task whose process died (decoder crash)."
    )
    decode_timeout_s: float = Field(
        300.0,
        gt=0,
        description="When no decode of a worker finishes for this long, its oldest decode is cancelled and that clip failed (a hung decoder).",
    )
    decode_num_cpus: float = Field(1.0, gt=0, description="CPUs per decode task.")
    worker_num_cpus: float = Field(
        0.25, gt=0, description="CPUs per preprocessing worker (it mostly waits on decode tasks)."
    )
    workers: int = Field(
        2, ge=1, description="Preprocessing workers (actors holding the processor)."
    )
    clips_per_batch: int = Field(
        4,
        ge=1,
        description="Clips a worker takes at once; their decode tasks run concurrently while it processes finished ones.",
    )
    rows_per_shard: int = Field(256, ge=1, description="Rows per Parquet shard.")
    strict: bool = Field(False, description="Exit non-zero when any clip or record failed.")
    fault_injection: str | None = Field(
        None,
        description="Testing aid: decodes of video paths containing this substring abort their process ('hang:SUBSTR' makes them hang instead), to exercise crash isolation and timeouts. Never set in production configs.",
    )


M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key path."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per invalid key, prefixed by where the values came from."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, applying ``key.sub=value`` overrides first.

    Raises:
        ConfigError: naming the file and every invalid key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def build_config(path: str | Path | None, model: type[M], overrides: list[str] | None = None) -> M:
    """``load_config`` when a file is given, else the defaults; ``key=value`` overrides either way.

    Raises:
        ConfigError: naming the file (or the overrides) and every invalid key.
    """
    if path is not None:
        return load_config(path, model, overrides)
    try:
        return model.model_validate(apply_overrides({}, list(overrides or [])))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "--set overrides")) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return out
