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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from crashchat.config import TrainConfig
from crashchat.models.loading import load_model
from crashchat.models.lora import apply_lora, count_parameters, trainable_state
from crashchat.tracking import Tracker
from crashchat.training.deepspeed_config import build_deepspeed_config
from crashchat.video.model_inputs import IGNORE_INDEX, PixelNorm
from crashchat.video.samples import collate_rows

STATE_FILE = "state.json"
EXPORT_DIR = "export"
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
    steps_per_epoch = micro_per_worker // cfg.grad_accum_steps
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


def _all_reduce(values: list[float]) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


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


class Worker:
    """One training worker: model engine, data shards, state; methods follow the loop's phases."""

    def __init__(self, spec: RunSpec, env: Any = None) -> None:
        import deepspeed
        from transformers import get_scheduler

        self.spec = spec
        self.cfg = cfg = TrainConfig.model_validate(spec.config)
        self.env = env = env or RayTrainEnv()
        self.rank, self.world = env.rank, env.world
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

        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=schedule,
            config=build_deepspeed_config(cfg, self.world, self.dtype_name),
        )
        self.norm = PixelNorm(**spec.pixel_norm)
        self.train_shard = env.shard("train")
        self.val_shard = env.shard("val")
        self.state = TrainState(tracking=spec.tracking)
        with env.resume_dir() as ckpt_dir:
            if ckpt_dir is not None:
                self.engine.load_checkpoint(
                    os.path.join(ckpt_dir, DS_DIR), tag=DS_TAG, load_module_strict=False
                )
                self.state = TrainState.load(ckpt_dir / STATE_FILE)
        self.state.attempts += 1
        self.tracker: Tracker | None = None
        if self.rank == 0:
            t = self.state.tracking
            self.tracker = Tracker(
                t["uri"],
                timeout_s=cfg.tracking.request_timeout_s,
                retry_interval_s=cfg.tracking.retry_interval_s,
                ops=t.get("ops"),
                run_ids=t.get("run_ids"),
                # A restart may replay what already reached the store; never log a step twice.
                skip_logged_steps=self.state.attempts > 1,
            )

    # -- phases --------------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device) for k, v in batch.items()}
        if self.dtype_name != "fp32":
            dtype = torch.bfloat16 if self.dtype_name == "bf16" else torch.float16
            out["pixel_values_videos"] = out["pixel_values_videos"].to(dtype)
        return out

    def run(self) -> None:
        """Train until the step budget or early stopping; checkpoint and commit metrics."""
        cfg, state = self.cfg, self.state
        accum = cfg.grad_accum_steps
        micro_per_epoch = self.steps_per_epoch * accum
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, micro-batches, tokens, samples
        started = time.perf_counter()
        while state.step < self.total_steps and not state.stopped_early:
            consumed = 0
            for rows in _micro_batches(
                self.train_shard, cfg.schedule.micro_batch_size, cfg.seed + state.epoch
            ):
                consumed += 1
                if consumed <= state.micro_in_epoch:
                    continue  # already trained on before the restart
                if consumed > micro_per_epoch:
                    continue  # drain the epoch's remainder: every split must finish its epoch
                batch = self._to_device(collate_rows(rows, self.norm, self.pad_id))
                loss = self.engine(**batch).loss
                self.engine.backward(loss)
                self.engine.step()
                state.micro_in_epoch = consumed
                sums = [
                    sums[0] + float(loss.detach()),
                    sums[1] + 1,
                    sums[2] + float(batch["attention_mask"].sum()),
                    sums[3] + len(rows),
                ]
                if consumed % accum:
                    continue
                elapsed = time.perf_counter() - started
                self._record_step(sums, elapsed)
                sums, started = [0.0, 0.0, 0.0, 0.0], time.perf_counter()
                if self._after_step():
                    break
            if state.micro_in_epoch >= micro_per_epoch or consumed < micro_per_epoch:
                state.epoch += 1
                state.micro_in_epoch = 0
        self._save(final=True)

    def _record_step(self, sums: list[float], elapsed: float) -> None:
        total = _all_reduce([*sums, elapsed])
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
                batch = self._to_device(collate_rows(rows, self.norm, self.pad_id))
                n = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                loss_sum += float(self.engine(**batch).loss) * n
                tokens += n
        self.engine.train()
        loss_sum, tokens = _all_reduce([loss_sum, tokens])
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
        from safetensors.torch import save_file

        state = self.state
        with tempfile.TemporaryDirectory(prefix="crashchat-ckpt-") as tmp:
            root = Path(tmp)
            self.engine.save_checkpoint(
                str(root / DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True
            )
            with self._gathered():
                adapter, non_lora = trainable_state(self.engine.module)
            if self.rank == 0:
                assert self.tracker is not None
                export = root / EXPORT_DIR
                export.mkdir()
                if adapter is not None:
                    self.engine.module.save_pretrained(str(export / "adapter"), state_dict=adapter)
                if non_lora:
                    save_file(non_lora, str(export / "non_lora_trainables.safetensors"))
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker, train_loop_config=...)``)."""
    Worker(RunSpec(**config)).run()
