"""The end-to-end pipeline and the local multi-node cluster configs."""

from __future__ import annotations

from pydantic import Field

from crashchat.config.base import StrictModel
from crashchat.config.data import PreprocessConfig
from crashchat.config.evaluation import EvalConfig
from crashchat.config.serving import ServeConfig
from crashchat.config.training import TrainConfig


class PipelineConfig(StrictModel):
    """The whole pipeline as one job: preprocess -> train -> evaluate -> compare -> serve."""

    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig, description="Preprocessing of the annotated clips."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning.")
    strategy: str | None = Field(
        "all", description="monotask | homogeneous | heterogeneous | all (ignored with mixture)."
    )
    mixture: str | None = Field(None, description="Train one mixture (or a comma list) instead.")
    evaluate: EvalConfig = Field(
        default_factory=EvalConfig, description="Evaluation of every checkpoint and the baseline."
    )
    evaluate_baseline: bool = Field(True, description="Evaluate the untuned base model too.")
    compare: bool = Field(True, description="Write the strategy comparison.")
    serve: ServeConfig | None = Field(
        None, description="Deploy the checkpoints on Ray Serve at the end (None: do not serve)."
    )


class NodeSpec(StrictModel):
    """One node of a local multi-node cluster (a ``ray start`` process group)."""

    name: str = Field(pattern=r"^[a-z0-9-]+$", description="Node name (logs, state file).")
    num_cpus: int = Field(1, ge=0, description="Logical CPUs the node offers.")
    num_gpus: int = Field(0, ge=0, description="GPUs the node offers (0 here).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources (cpu_decode, gpu_node, ...)."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Node labels.")
    object_store_mb: int = Field(256, ge=80, description="Object store size, MiB.")


class LocalClusterConfig(StrictModel):
    """A multi-node Ray cluster on one machine (``crashchat cluster up``), for trying things."""

    dashboard_host: str = Field(
        "127.0.0.1", description="Dashboard and Jobs API bind address (keep it on loopback)."
    )
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Dashboard / Jobs API port.")
    head: NodeSpec = Field(
        default_factory=lambda: NodeSpec(name="head", num_cpus=1),
        description="The head node (GCS, dashboard, Serve controller).",
    )
    workers: list[NodeSpec] = Field(default_factory=list, description="Worker nodes.")
