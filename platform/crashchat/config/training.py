"""Training configs: LoRA, optimizer, schedule, DeepSpeed, workers, MLflow, resource plan."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from crashchat.config.base import StrictModel

LORA_TARGET_REGEX = (
    r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)


class LoraSettings(StrictModel):
    """LoRA on the language model (upstream: r 64, alpha 16, dropout 0.05, every LLM Linear)."""

    r: int = Field(64, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str = Field(
        LORA_TARGET_REGEX,
        description="Regex of module names that get adapters (default: the LLM's linear layers, not the vision encoder, not lm_head).",
    )
    train_projector: bool = Field(True, description="Train the vision projector (upstream: yes).")
    train_lm_head: bool = Field(
        False,
        description="Also train lm_head and token embeddings fully (upstream: no; helps random tiny bases).",
    )
    enabled: bool = Field(
        True,
        description="False trains every language-model and projector weight instead of adapters (used to pre-train a tiny stand-in base).",
    )
    train_vision: bool = Field(
        False,
        description="Also train the vision encoder fully (upstream: frozen; used to pre-train a tiny stand-in base).",
    )


class OptimConfig(StrictModel):
    """AdamW with warm-up and a decay schedule (upstream: lr 1e-5, cosine, warm-up 0.1)."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate (LLM adapters and projector).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    scheduler: str = Field(
        "cosine", pattern=r"^(cosine|linear|constant)$", description="cosine, linear or constant."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")


class ScheduleConfig(StrictModel):
    """How long to train, when to evaluate and checkpoint, when to stop early."""

    global_batch_size: int = Field(
        24,
        ge=1,
        description="Samples per optimizer step over all workers (upstream: 24). Must divide by workers x micro_batch_size; the rest is gradient accumulation.",
    )
    micro_batch_size: int = Field(1, ge=1, description="Samples per worker per forward pass.")
    epochs: float = Field(10, gt=0, description="Epochs for multi-task mixtures (upstream: 10).")
    monotask_epochs: float = Field(
        20, gt=0, description="Epochs for single-task mixtures (upstream: 20)."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    eval_every: int = Field(50, ge=1, description="Validation loss every N optimizer steps.")
    save_every: int = Field(
        50, ge=1, description="Checkpoint (resumable state) every N optimizer steps."
    )
    eval_max_samples: int | None = Field(
        None, ge=1, description="Cap on validation samples per evaluation (all by default)."
    )
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many evaluations without improvement (None: off)."
    )
    early_stopping_threshold: float = Field(
        0.001, ge=0, description="Minimum eval-loss decrease that counts as an improvement."
    )
    num_checkpoints_to_keep: int | None = Field(
        5,
        ge=1,
        description="Newest resumable checkpoints kept by Ray Train (upstream: 5; None: all). Each also carries the best step's weights, so the best by eval loss is always kept.",
    )


class DeepSpeedSettings(StrictModel):
    """What the generated DeepSpeed JSON contains (never hand-kept)."""

    zero_stage: int = Field(1, ge=0, le=3, description="ZeRO stage 0-3 (upstream: 1).")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload the optimizer to CPU RAM.")
    offload_params: bool = Field(False, description="Offload parameters to CPU (ZeRO-3 only).")
    overlap_comm: bool = Field(True, description="Overlap reduction with backward (ZeRO 1-3).")
    allgather_bucket_size: int = Field(200_000_000, ge=1, description="ZeRO bucket size.")
    reduce_bucket_size: int = Field(200_000_000, ge=1, description="ZeRO reduce bucket size.")

    @model_validator(mode="after")
    def _check_offload(self) -> DeepSpeedSettings:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class ScalingSettings(StrictModel):
    """Ray Train workers and what each asks for; CPU kept back for the Ray Data stage."""

    num_workers: int = Field(2, ge=1, description="Training workers (one per GPU on GPU nodes).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU workers, gloo.")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs each training worker holds.")
    data_cpus: float = Field(
        0.5,
        ge=0,
        description="CPUs that must stay free for the Ray Data stage feeding the workers (otherwise the data stage never runs and training hangs).",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Extra custom resources per worker, e.g. {'gpu_node': 0.001} to pin workers to GPU node types.",
    )


class TrackingConfig(StrictModel):
    """MLflow tracking and model registry."""

    uri: str | None = Field(
        None,
        description="Tracking URI. Default: MLFLOW_TRACKING_URI, else an embedded sqlite store in runs/mlflow.db.",
    )
    experiment: str = Field("crashchat", min_length=1, description="MLflow experiment name.")
    registered_model: str | None = Field(
        "crashchat",
        description="Registry model name; each mixture's checkpoint becomes a version with the mixture as alias. None: no registration.",
    )
    log_checkpoint: bool = Field(True, description="Log the checkpoint as run artifacts.")
    request_timeout_s: float = Field(
        5.0, gt=0, description="HTTP timeout per tracking request (a down server fails fast)."
    )
    retry_interval_s: float = Field(
        10.0, ge=0, description="Wait between attempts to reach a tracking server that failed."
    )
    system_metrics_interval_s: float | None = Field(
        15.0,
        gt=0,
        description="Seconds between MLflow system-metrics samples of training (CPU, memory, GPU with pynvml); None: off.",
    )


class PlanSettings(StrictModel):
    """What ``crashchat plan`` assumes about a run when no preprocessed data is given.

    Defaults describe CrashChat on VideoLLaMA3-7B: upstream's sampling (10 fps, 96 frames), its
    training visual budget (``mm_max_length`` 10,240) and evaluation budget (16,384), HD clips,
    and the dataset's size (18,385 clips, 96,184 question-answer pairs).
    """

    model: str | None = Field(
        None,
        description="Model folder or config.json (native or upstream format) to plan for when --model is not given; a relative path is resolved against the config file's folder.",
    )
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory of one GPU, GB (1e9 bytes).")
    reserved_gb: float = Field(
        3.0,
        ge=0,
        description="Per-GPU memory no tensor may use: CUDA context, NCCL buffers, allocator fragmentation.",
    )
    fps: float = Field(10.0, gt=0, description="Frames sampled per second (upstream: 10).")
    max_frames: int = Field(96, ge=1, description="Frame cap per clip (upstream: 96).")
    max_visual_tokens: int = Field(
        10240,
        ge=1,
        description="Visual budget of the training data, tokens per clip (upstream mm_max_length: 10,240).",
    )
    clip_width: int = Field(1280, ge=1, description="Assumed source width, pixels.")
    clip_height: int = Field(720, ge=1, description="Assumed source height, pixels.")
    clip_seconds: float = Field(
        10.0, gt=0, description="Assumed clip length, seconds (96 frames need 9.6 s at 10 fps)."
    )
    text_tokens: int = Field(
        200,
        ge=0,
        description="Prompt and answer tokens of a sample besides the frames (CrashChat prompts are about 60-120 tokens, prevention answers up to about 100).",
    )
    timestamp_tokens_per_frame: int = Field(
        8,
        ge=0,
        description="Tokens of each frame's 'Time 12.3s:' prefix and separator when no tokenizer is at hand to count them.",
    )
    answer_tokens: int = Field(
        128, ge=1, description="Supervised tokens per sample (the logits training computes)."
    )
    clips: int = Field(18385, ge=1, description="Clips in the dataset (CrashChat: 18,385).")
    records_per_clip: float = Field(
        96184 / 18385,
        gt=0,
        description="Question-answer records per clip (CrashChat: 96,184 / 18,385).",
    )
    serve_max_visual_tokens: int = Field(
        16384,
        ge=1,
        description="Visual budget at evaluation and serving (upstream max_visual_tokens: 16,384).",
    )
    serve_max_batch_size: int = Field(8, ge=1, description="Requests per serving batch.")
    serve_max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Padded tokens per serving batch (None: batch size x the longest request).",
    )
    serve_max_new_tokens: int = Field(160, ge=1, description="Answer budget when serving.")


class TrainConfig(StrictModel):
    """LoRA fine-tuning on Ray Train with DeepSpeed (``crashchat train``)."""

    seed: int = Field(42, description="Seed for initialisation, dropout and data order.")
    precision: str = Field(
        "auto",
        pattern=r"^(auto|bf16|fp16|fp32)$",
        description="auto: bf16 on capable GPUs, fp32 on CPU.",
    )
    attention: str = Field(
        "auto",
        description="auto (flash-attention 2 when installed with CUDA, else sdpa) or a name.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (upstream: on)."
    )
    loss_reduction: Literal["tokens", "samples"] = Field(
        "tokens",
        description="tokens: the step's loss is the mean over every supervised token of the global batch (upstream: HF Trainer with num_items_in_batch), so long answers weigh more than 'Yes'. samples: the mean of each sample's token mean.",
    )
    supervised_logits_only: bool = Field(
        True,
        description="Project lm_head only at supervised positions (same loss; for the 7B about 20 GB less per 10k-token sample than the native forward, which projects every position).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapters.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Schedule.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="DeepSpeed."
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Workers.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")
    max_failures: int = Field(
        2, ge=-1, description="Worker-group restarts from the newest checkpoint (-1: unlimited)."
    )
    train_split: str = Field("train", description="Split trained on.")
    val_split: str = Field("val", description="Split for the validation loss.")
    storage_path: str | None = Field(
        None,
        description="Ray Train storage (shared by all nodes on a cluster). Default: OUTPUT/_ray.",
    )
    plan: PlanSettings = Field(
        default_factory=PlanSettings,
        description="Assumptions of `crashchat plan` (model, GPU memory, clips, dataset size).",
    )

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        per_step = self.scaling.num_workers * self.schedule.micro_batch_size
        if self.schedule.global_batch_size % per_step:
            raise ValueError(
                f"schedule.global_batch_size ({self.schedule.global_batch_size}) must divide by "
                f"scaling.num_workers x schedule.micro_batch_size ({per_step})"
            )
        return self

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step on each of ``scaling.num_workers`` workers."""
        return self.accum_steps(self.scaling.num_workers)

    def accum_steps(self, world: int) -> int:
        """Micro-batches per optimizer step on each of ``world`` workers (the global batch
        stays fixed; DeepSpeed's ``gradient_accumulation_steps`` is computed the same way)."""
        return self.schedule.global_batch_size // (world * self.schedule.micro_batch_size)
