"""The per-worker training loop Ray Train runs: DeepSpeed over a PEFT VideoLLaMA3.

Each optimizer step's metrics are kept in the training state and committed to MLflow together
with the checkpoint that contains them, so a restarted worker group (which resumes from that
checkpoint) never logs a step twice and never loses one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from crashchat.config import TrainConfig
from crashchat.models.checkpoint import write_trainables
from crashchat.models.loading import load_model
from crashchat.models.lora import apply_lora, count_parameters, trainable_state
from crashchat.scratch import make_scratch
from crashchat.tracking import Tracker
from crashchat.training.deepspeed_config import build_deepspeed_config
from crashchat.training.rng_state import restore_rng_state, save_rng_state
from crashchat.video.model_inputs import IGNORE_INDEX, PixelNorm
from crashchat.video.samples import ClipStore, collate_rows

STATE_FILE = "state.json"
EXPORT_DIR = "export"
BEST_DIR = "best"  # the best step's export, carried by every later checkpoint
BEST_STEP_FILE = "step.json"
DS_DIR = "ds"
DS_TAG = "state"
SCHEDULER_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class RunSpec:
    """Everything a worker needs, JSON-serialisable (passed as ``train_loop_config``)."""

    config: dict[str, Any]
    base_model: str
    mixture: str
    tasks: list[str]
    epochs: float
    train_rows: int
    val_rows: int
    pixel_norm: dict[str, Any]
    run_key: str
    tracking: dict[str, Any]
    data_dir: str = ""  # where the clips are read from (records stream in without pixels)


@dataclass
class TrainState:
    """Progress that survives a restart (saved in every checkpoint)."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    best_eval_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    attempts: int = 0
    committed: int = 0  # history entries already queued for MLflow
    tracking: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """Read a ``state.json``; a restart resumes exactly at its ``step``.

        Entries past ``step`` are dropped: the resumed run computes those steps again, and a
        restart must never repeat a step in the history (the worker-kill test once saw 5, 5, 6, 6).
        """
        state = cls(**json.loads(path.read_text()))
        state.history = [h for h in state.history if int(h["step"]) <= state.step]
        state.evals = [e for e in state.evals if int(e["step"]) <= state.step]
        state.committed = min(state.committed, len(state.history))
        return state


def plan_steps(spec: RunSpec, cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this run.

    Raises:
        ValueError: when the training split is too small for one optimizer step.
    """
    micro_per_worker = spec.train_rows // world // cfg.schedule.micro_batch_size
    steps_per_epoch = micro_per_worker // cfg.accum_steps(world)
    if steps_per_epoch < 1:
        raise ValueError(
            f"mixture {spec.mixture}: {spec.train_rows} training samples cannot fill one step of "
            f"global batch {cfg.schedule.global_batch_size}"
        )
    total = cfg.schedule.max_steps or max(1, math.ceil(spec.epochs * steps_per_epoch))
    return steps_per_epoch, total


FETCH_MICRO_BATCHES = (
    8  # micro-batches fetched from Ray Data at once (amortises its per-batch cost)
)


def _micro_batches(shard: Any, micro: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    pending: list[dict[str, Any]] = []
    for table in shard.iter_batches(
        batch_size=micro * FETCH_MICRO_BATCHES,
        batch_format="pyarrow",
        prefetch_batches=2,
        local_shuffle_buffer_size=64,
        local_shuffle_seed=seed,
    ):
        pending.extend(table.to_pylist())
        while len(pending) >= micro:
            yield pending[:micro]
            pending = pending[micro:]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all workers; the tensor lives on ``device``, the worker's own.

    NCCL reduces CUDA tensors only (a CPU tensor fails at the first step on GPU workers); gloo
    reduces CPU tensors. Every collective of the loop goes through here with ``Worker.device``.
    """
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def _windows(
    micro_batches: Iterator[list[dict[str, Any]]], size: int
) -> Iterator[list[list[dict[str, Any]]]]:
    """Group micro-batches into optimizer steps (the last group may be short)."""
    window: list[list[dict[str, Any]]] = []
    for rows in micro_batches:
        window.append(rows)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def supervised_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry a loss in a batch (the next-token targets that are not ignored)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class RayTrainEnv:
    """The loop's view of Ray Train: rank, dataset shards, checkpoint to resume, report."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as ckpt_dir:
            yield Path(ckpt_dir)

    def report(self, metrics: dict[str, Any], ckpt_dir: Path) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)))


def skip_cpu_inference_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory op on first use.

    On the CPU accelerator ``deepspeed.init_distributed`` JIT-compiles ``deepspeed_shm_comm``
    (about 45 s of C++ on 2 cores, once per machine) although only ``inference_all_reduce`` uses
    it; training's collectives go through the gloo process group either way. Marking the op
    incompatible is what DeepSpeed itself does on a machine that cannot build it.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class Worker:
    """One training worker: model engine, data shards, state; methods follow the loop's phases."""

    def __init__(self, spec: RunSpec, env: Any = None) -> None:
        import deepspeed

        self.spec = spec
        self.cfg = cfg = TrainConfig.model_validate(spec.config)
        self.env = env = env or RayTrainEnv()
        self.rank, self.world = env.rank, env.world
        if not cfg.scaling.use_gpu:
            skip_cpu_inference_comm_op()
        deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.use_gpu else "gloo")
        torch.manual_seed(cfg.seed)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if cfg.scaling.use_gpu
            else torch.device("cpu")
        )
        loaded = load_model(
            spec.base_model,
            dtype=cfg.precision,
            attention=cfg.attention,
            device=str(self.device),
            supervised_logits_only=cfg.supervised_logits_only,
        )
        self.dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(loaded.dtype, "fp32")
        self.pad_id = int(loaded.processor.tokenizer.pad_token_id or 0)
        model = loaded.model
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model = apply_lora(model, cfg.lora)
        model.train()
        self.trainable, self.total_params = count_parameters(model)
        self.steps_per_epoch, self.total_steps = plan_steps(spec, cfg, self.world)
        self.engine = self._build_engine(model)
        self.norm = PixelNorm(**spec.pixel_norm)
        self.clips = ClipStore(spec.data_dir)  # each worker reads the clips of its own records
        self.train_shard = env.shard("train")
        self.val_shard = env.shard("val")
        self.state = TrainState(tracking=spec.tracking)
        # Rank 0 keeps the best step's export here and puts a copy in every later checkpoint,
        # so keeping only the newest checkpoints never loses the best one. Scratch of this
        # worker only (a 7B's trainables are large): removed by close(), or by the next worker
        # on the machine when this one is killed.
        self._scratch = make_scratch("best")
        self.best_dir = Path(self._scratch.name)
        self._resume(env)
        self.tracker = self._build_tracker()
        self.monitor = self._start_system_metrics()

    def _build_engine(self, model: Any) -> Any:
        """The DeepSpeed engine: AdamW (or DeepSpeed's offloaded one), warmup schedule, config."""
        import deepspeed
        from transformers import get_scheduler

        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if not cfg.deepspeed.offload_optimizer:
            optimizer = torch.optim.AdamW(
                params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
            )
        warmup = math.ceil(cfg.optim.warmup_ratio * self.total_steps)

        def schedule(opt: Any) -> Any:
            return get_scheduler(
                SCHEDULER_NAMES[cfg.optim.scheduler],
                opt,
                num_warmup_steps=warmup,
                num_training_steps=self.total_steps,
            )

        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=schedule,
            config=build_deepspeed_config(cfg, self.world, self.dtype_name),
        )
        return engine

    def _resume(self, env: Any) -> None:
        """Continue from the run's last checkpoint, when Ray Train restarted the workers."""
        with env.resume_dir() as ckpt_dir:
            if ckpt_dir is not None:
                self.engine.load_checkpoint(
                    os.path.join(ckpt_dir, DS_DIR), tag=DS_TAG, load_module_strict=False
                )
                self.state = TrainState.load(ckpt_dir / STATE_FILE)
                restore_rng_state(ckpt_dir, self.rank)
                if self.rank == 0:
                    _restore_best(ckpt_dir, self.state, self.best_dir)
        self.state.attempts += 1

    def _build_tracker(self) -> Tracker | None:
        """Rank 0's tracker, continuing the driver's journal (None on the other ranks)."""
        if self.rank != 0:
            return None
        t = self.state.tracking
        return Tracker(
            t["uri"],
            timeout_s=self.cfg.tracking.request_timeout_s,
            retry_interval_s=self.cfg.tracking.retry_interval_s,
            ops=t.get("ops"),
            run_ids=t.get("run_ids"),
            # A restart may replay what already reached the store; never log a step twice.
            skip_logged_steps=self.state.attempts > 1,
        )

    def _start_system_metrics(self) -> Any:
        """MLflow's system-metrics monitor on rank 0 (CPU, memory, disk, network; GPU with
        pynvml), so the run's resource use sits next to its loss. Best effort: it logs directly,
        and its samples are lost while the tracking server is down."""
        interval = self.cfg.tracking.system_metrics_interval_s
        run_id = self.tracker.run_id(self.spec.run_key) if self.tracker else None
        if interval is None or run_id is None:
            return None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                run_id,
                sampling_interval=interval,
                resume_logging=self.state.attempts > 1,
                tracking_uri=self.tracker.uri if self.tracker else None,
            )
            monitor.start()
            return monitor
        except Exception:  # e.g. no psutil on the node: training goes on without them
            return None

    # -- phases --------------------------------------------------------------------------------
    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_rows(self.clips.attach(rows), self.norm, self.pad_id)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device) for k, v in batch.items()}
        if self.dtype_name != "fp32":
            dtype = torch.bfloat16 if self.dtype_name == "bf16" else torch.float16
            out["pixel_values_videos"] = out["pixel_values_videos"].to(dtype)
        return out

    def run(self) -> None:
        """Train until the step budget or early stopping; checkpoint and commit metrics."""
        cfg, state = self.cfg, self.state
        accum = cfg.accum_steps(self.world)
        micro_per_epoch = self.steps_per_epoch * accum
        started = time.perf_counter()
        while state.step < self.total_steps and not state.stopped_early:
            consumed = 0
            micro = _micro_batches(
                self.train_shard, cfg.schedule.micro_batch_size, cfg.seed + state.epoch
            )
            for window in _windows(micro, accum):
                consumed += len(window)
                if consumed <= state.micro_in_epoch:
                    continue  # already trained on before the restart
                if consumed > micro_per_epoch:
                    continue  # drain the epoch's remainder: every split must finish its epoch
                sums = self._train_step(window)
                state.micro_in_epoch = consumed
                self._record_step(sums, time.perf_counter() - started)
                started = time.perf_counter()
                if self._after_step():
                    break
            if state.micro_in_epoch >= micro_per_epoch or consumed < micro_per_epoch:
                state.epoch += 1
                state.micro_in_epoch = 0
        if self.monitor is not None:
            self.monitor.finish()
        self._save(final=True)

    def _train_step(self, window: list[list[dict[str, Any]]]) -> list[float]:
        """One optimizer step over ``window``'s micro-batches; (loss, micro-batches, tokens, samples).

        With ``loss_reduction: tokens`` (upstream: HF Trainer's ``num_items_in_batch``) each
        micro-batch's loss is its summed cross-entropy divided by the supervised tokens of the
        whole step on all workers (times workers x accumulation, which DeepSpeed divides out
        again), so the step's gradient is the token mean over the global batch: a 100-token
        prevention answer weighs 50 times a "Yes". With ``samples`` each sample's token mean
        counts once.
        """
        batches = [self._to_device(self._collate(rows)) for rows in window]
        extra: dict[str, Any] = {}
        if self.cfg.loss_reduction == "tokens":
            local = float(sum(supervised_tokens(b["labels"]) for b in batches))
            (total,) = all_reduce_sum([local], self.device)
            share = max(total, 1.0) / (self.world * self.cfg.accum_steps(self.world))
            extra["num_items_in_batch"] = torch.tensor(share, device=self.device)
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, micro-batches, tokens, samples
        for rows, batch in zip(window, batches, strict=True):
            loss = self.engine(**batch, **extra).loss
            self.engine.backward(loss)
            self.engine.step()
            sums[0] += float(loss.detach())
            sums[1] += 1
            sums[2] += float(batch["attention_mask"].sum())
            sums[3] += len(rows)
        return sums

    def _record_step(self, sums: list[float], elapsed: float) -> None:
        total = all_reduce_sum([*sums, elapsed], self.device)
        loss, micro, tokens, samples, wall = total
        wall = max(wall / self.world, 1e-9)
        self.state.step += 1
        self.state.history.append(
            {
                "step": self.state.step,
                "epoch": self.state.epoch,
                "train_loss": loss / max(micro, 1),
                "learning_rate": float(self.engine.get_lr()[0]),
                "samples_per_s": samples / wall,
                "tokens_per_s": tokens / wall,
            }
        )

    def _after_step(self) -> bool:
        """Evaluate and checkpoint when due; True when training should stop."""
        cfg, state = self.cfg, self.state
        done = state.step >= self.total_steps
        improved = False
        if state.step % cfg.schedule.eval_every == 0 or done:
            improved = self._evaluate()
        if done or state.stopped_early:
            return True
        if state.step % cfg.schedule.save_every == 0 or improved:
            self._save()
        return False

    def _evaluate(self) -> bool:
        """Validation loss over the val split; updates best step and early stopping."""
        cfg, state = self.cfg, self.state
        cap = (cfg.schedule.eval_max_samples or 10**12) // self.world
        self.engine.eval()
        loss_sum = tokens = seen = 0.0
        with torch.no_grad():
            for rows in _micro_batches(self.val_shard, cfg.schedule.micro_batch_size, 0):
                if seen >= cap:
                    continue  # drain the shard: every worker must finish its epoch of val
                seen += len(rows)
                batch = self._to_device(self._collate(rows))
                n = float(supervised_tokens(batch["labels"]))
                loss_sum += float(self.engine(**batch).loss) * n
                tokens += n
        self.engine.train()
        loss_sum, tokens = all_reduce_sum([loss_sum, tokens], self.device)
        if tokens == 0:
            return False
        eval_loss = loss_sum / tokens
        state.evals.append({"step": state.step, "eval_loss": eval_loss})
        best = state.best_eval_loss
        if best is None or eval_loss < best - cfg.schedule.early_stopping_threshold:
            state.best_eval_loss, state.best_step, state.bad_evals = eval_loss, state.step, 0
            return True
        state.bad_evals += 1
        patience = cfg.schedule.early_stopping_patience
        if patience is not None and state.bad_evals >= patience:
            state.stopped_early = True
        return False

    def _gathered(self) -> Any:
        if self.cfg.deepspeed.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(
                list(self.engine.module.parameters()), modifier_rank=None
            )
        return contextlib.nullcontext()

    def _queue_metrics(self) -> None:
        assert self.tracker is not None
        key = self.spec.run_key
        state = self.state
        for entry in state.history[state.committed :]:
            metrics = {k: v for k, v in entry.items() if k not in ("step", "epoch")}
            self.tracker.log(key, metrics, step=int(entry["step"]))
        state.committed = len(state.history)
        logged = {int(e["step"]) for e in state.evals if e.get("logged")}
        for entry in state.evals:
            if int(entry["step"]) not in logged:
                self.tracker.log(key, {"eval_loss": entry["eval_loss"]}, step=int(entry["step"]))
                entry["logged"] = 1

    def _save(self, final: bool = False) -> None:
        state = self.state
        # A worker killed mid-save (a lost node, Ray Train stopping the group) leaves its folder,
        # DeepSpeed's optimizer shards included: the next save on the machine removes it.
        with make_scratch("ckpt") as tmp:
            root = Path(tmp)
            self.engine.save_checkpoint(
                str(root / DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True
            )
            save_rng_state(root, self.rank)
            with self._gathered():
                adapter, non_lora = trainable_state(self.engine.module)
            if self.rank == 0:
                assert self.tracker is not None
                export = write_trainables(root / EXPORT_DIR, self.engine.module, adapter, non_lora)
                self._keep_best(export, root)
                self._queue_metrics()
                if final:
                    # No restart follows the final report, so what is sent now is never resent.
                    self.tracker.flush(force=True)
                state.tracking = self.tracker.pending()
                (root / STATE_FILE).write_text(json.dumps(asdict(state)))
            last = state.history[-1] if state.history else {}
            metrics = {
                "step": state.step,
                "train_loss": last.get("train_loss", float("nan")),
                "eval_loss": state.evals[-1]["eval_loss"] if state.evals else float("nan"),
                "final": final,
            }
            self.env.report(metrics, root)
        if self.tracker is not None and not final:
            self.tracker.flush()

    def close(self) -> None:
        """Remove this worker's scratch (the kept best export); the checkpoints hold their copies."""
        self._scratch.cleanup()

    def _keep_best(self, export: Path, root: Path) -> None:
        """Refresh the kept best export when this step is the best; else copy it in as ``best/``."""
        best = self.state.best_step
        if best is None:
            return
        if best == self.state.step:
            shutil.rmtree(self.best_dir, ignore_errors=True)
            shutil.copytree(export, self.best_dir)
            (self.best_dir / BEST_STEP_FILE).write_text(json.dumps({"step": best}))
        elif (self.best_dir / BEST_STEP_FILE).is_file():
            shutil.copytree(self.best_dir, root / BEST_DIR)


def _restore_best(ckpt_dir: Path, state: TrainState, best_dir: Path) -> None:
    """After a restart: the best export the resumed checkpoint knows about becomes the kept one."""
    if state.best_step is None:
        return
    source = ckpt_dir / (EXPORT_DIR if state.best_step == state.step else BEST_DIR)
    if source.is_dir():
        shutil.rmtree(best_dir, ignore_errors=True)
        shutil.copytree(source, best_dir)
        (best_dir / BEST_STEP_FILE).write_text(json.dumps({"step": state.best_step}))


def best_export(checkpoint: Path) -> tuple[Path, TrainState]:
    """The export of the best step (lowest eval loss; the last without validation) in the newest
    checkpoint of a run, and that checkpoint's training state.

    Raises:
        FileNotFoundError: when the checkpoint lacks the best step's weights.
    """
    state = TrainState.load(checkpoint / STATE_FILE)
    if state.best_step is None or state.best_step == state.step:
        return checkpoint / EXPORT_DIR, state
    best = checkpoint / BEST_DIR
    step_file = best / BEST_STEP_FILE
    if not step_file.is_file() or json.loads(step_file.read_text())["step"] != state.best_step:
        raise FileNotFoundError(f"{checkpoint}: no export of the best step {state.best_step}")
    return best, state


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker, train_loop_config=...)``)."""
    worker = Worker(RunSpec(**config))
    try:
        worker.run()
    finally:
        worker.close()
