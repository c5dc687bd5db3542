"""Data configs: synthetic clips, the tiny model, preprocessing (probe limits, placement)."""

from __future__ import annotations

from pydantic import Field, model_validator

from crashchat.config.base import StrictModel


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
