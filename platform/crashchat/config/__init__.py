"""The platform's typed configuration tree.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key fails loudly with its
path. YAML files load through :func:`load_config`; ``--set key.sub=value`` overrides go through
:func:`apply_overrides`.

The sections live in modules named for what they configure (``data``, ``training``,
``evaluation``, ``serving``, ``pipeline``); every name is importable from here.
"""

from crashchat.config.base import (
    ConfigError,
    StrictModel,
    apply_overrides,
    build_config,
    format_validation_error,
    load_config,
)
from crashchat.config.data import (
    PlacementConfig,
    PreprocessConfig,
    ProbeLimits,
    SynthConfig,
    TinyModelConfig,
)
from crashchat.config.evaluation import EvalConfig
from crashchat.config.pipeline import LocalClusterConfig, NodeSpec, PipelineConfig
from crashchat.config.serving import (
    AutoscalingSettings,
    OpenAISettings,
    ReplicaSettings,
    ServeConfig,
    ServeLimits,
)
from crashchat.config.training import (
    LORA_TARGET_REGEX,
    DeepSpeedSettings,
    LoraSettings,
    OptimConfig,
    PlanSettings,
    ScalingSettings,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "LORA_TARGET_REGEX",
    "AutoscalingSettings",
    "ConfigError",
    "DeepSpeedSettings",
    "EvalConfig",
    "LocalClusterConfig",
    "LoraSettings",
    "NodeSpec",
    "OpenAISettings",
    "OptimConfig",
    "PipelineConfig",
    "PlacementConfig",
    "PlanSettings",
    "PreprocessConfig",
    "ProbeLimits",
    "ReplicaSettings",
    "ScalingSettings",
    "ScheduleConfig",
    "ServeConfig",
    "ServeLimits",
    "StrictModel",
    "SynthConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "format_validation_error",
    "load_config",
]
