"""Driver side of fine-tuning: plan mixtures, check resources, run Ray Train, write checkpoints.

One ``TorchTrainer.fit`` per training mixture. After each fit the best checkpoint (lowest eval
loss, or the last one without validation data) becomes the platform checkpoint in
``OUTPUT/<mixture>/``, is logged to the mixture's MLflow run and registered with the mixture name
as alias.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crashchat.config import TrainConfig
from crashchat.data.tasks import Mixture, get_mixture, get_task, mixtures_for_strategy
from crashchat.models.checkpoint import write_platform_checkpoint
from crashchat.tracking import PENDING_FILE, Tracker, resolve_tracking_uri
from crashchat.tracking.lineage import dataset_digest, dataset_input, source_tags
from crashchat.training.loop import RunSpec, TrainState, best_export
from crashchat.video.samples import load_manifest, read_samples


class ResourceError(RuntimeError):
    """The cluster cannot hold the requested training workers plus the data stage."""


@dataclass
class MixtureResult:
    """What one mixture's training produced."""

    mixture: str
    strategy: str
    tasks: list[str]
    checkpoint: str | None
    run_id: str | None
    steps: int = 0
    best_step: int | None = None
    best_eval_loss: float | None = None
    stopped_early: bool = False
    attempts: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    tracking_note: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Summary without the per-step history."""
        out = asdict(self)
        out.pop("history")
        return out


def plan_mixtures(mixture: str | None, strategy: str | None) -> list[Mixture]:
    """The mixtures to train: one named mixture, or a strategy's (``all``: the nine).

    ``mixture`` may also be a comma-separated list of task keys: an ad-hoc mixture named after
    its tasks joined by ``__`` (used e.g. to pre-train a tiny stand-in base).
    """
    if mixture and strategy:
        raise ValueError("give --mixture or --strategy, not both")
    if mixture and "," in mixture:
        keys = tuple(get_task(k.strip()).key for k in mixture.split(",") if k.strip())
        return [Mixture("__".join(keys), "custom", keys)]
    if mixture:
        return [get_mixture(mixture)]
    return list(mixtures_for_strategy(strategy or "all"))


def check_resources(cfg: TrainConfig) -> str:
    """Fail fast when the cluster cannot fit the workers and keep CPU for the data stage.

    Returns:
        A one-line description of what will be used.

    Raises:
        ResourceError: naming what is missing.
    """
    import ray

    sc = cfg.scaling
    total = ray.cluster_resources()
    need_cpu = sc.num_workers * sc.cpus_per_worker + sc.data_cpus
    problems = []
    if total.get("CPU", 0) + 1e-9 < need_cpu:
        problems.append(
            f"{sc.num_workers} workers x {sc.cpus_per_worker} CPU + {sc.data_cpus} CPU for the "
            f"data stage = {need_cpu:g} CPU, the cluster has {total.get('CPU', 0):g}"
        )
    if sc.use_gpu and total.get("GPU", 0) < sc.num_workers:
        problems.append(f"{sc.num_workers} GPUs requested, the cluster has {total.get('GPU', 0):g}")
    for res, amount in sc.worker_resources.items():
        if total.get(res, 0) + 1e-9 < amount * sc.num_workers:
            problems.append(
                f"resource {res!r}: {amount * sc.num_workers:g} needed, {total.get(res, 0):g} offered"
            )
    per_worker = {"CPU": sc.cpus_per_worker, **sc.worker_resources}
    if sc.use_gpu:
        per_worker["GPU"] = 1
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(
        all(n["Resources"].get(k, 0) + 1e-9 >= v for k, v in per_worker.items()) for n in nodes
    ):
        problems.append(f"no node can hold one worker ({per_worker})")
    if problems:
        raise ResourceError(
            "training cannot start, the cluster is too small: "
            + "; ".join(problems)
            + ". Lower scaling.num_workers / scaling.cpus_per_worker / scaling.data_cpus or add nodes."
        )
    return f"{sc.num_workers} workers x {per_worker}, {sc.data_cpus:g} CPU kept for data"


def _row_counts(manifest: dict[str, Any], tasks: list[str], split: str) -> int:
    per = manifest["counts"]["per_task_split"]
    return sum(int(per.get(t, {}).get(split, 0)) for t in tasks)


def _epochs(cfg: TrainConfig, mixture: Mixture) -> float:
    return cfg.schedule.monotask_epochs if len(mixture.tasks) == 1 else cfg.schedule.epochs


def build_run_spec(
    cfg: TrainConfig,
    manifest: dict[str, Any],
    mixture: Mixture,
    base_model: str,
    run_key: str,
    tracking: dict[str, Any],
    data_dir: str = "",
) -> RunSpec:
    """What every worker of one mixture's run receives."""
    tasks = list(mixture.tasks)
    return RunSpec(
        config=cfg.model_dump(mode="json"),
        base_model=base_model,
        mixture=mixture.name,
        tasks=tasks,
        epochs=_epochs(cfg, mixture),
        train_rows=_row_counts(manifest, tasks, cfg.train_split),
        val_rows=_row_counts(manifest, tasks, cfg.val_split),
        pixel_norm=manifest["pixel_norm"],
        run_key=run_key,
        tracking=tracking,
        data_dir=data_dir,
    )


def _prompts_for(data_dir: Path, tasks: list[str]) -> dict[str, Any]:
    path = data_dir / "prompts.json"
    prompts = json.loads(path.read_text()) if path.is_file() else {}
    if isinstance(prompts, dict) and "prompts" in prompts:
        prompts = prompts["prompts"]
    return {t: prompts[t] for t in tasks if t in prompts}


class TrainingRun:
    """Trains mixtures one after another against one tracking store."""

    def __init__(
        self,
        cfg: TrainConfig,
        data_dir: str | Path,
        base_model: str,
        output: str | Path,
        on_event: Callable[[str], None] | None = None,
        runs_root: str | Path = "runs",
    ) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir).resolve()
        # Workers run in other directories: a local base model is passed as an absolute path.
        self.base_model = (
            str(Path(base_model).resolve()) if Path(base_model).exists() else base_model
        )
        self.output = Path(output).resolve()
        self.manifest = load_manifest(self.data_dir)
        self.on_event = on_event or (lambda _msg: None)
        uri = resolve_tracking_uri(cfg.tracking.uri, runs_root)
        self.tracker = Tracker(uri, timeout_s=cfg.tracking.request_timeout_s, retry_interval_s=0)
        self.source = source_tags()
        # Registered versions say which data and which code made them.
        self.version_tags = {"dataset_digest": dataset_digest(self.manifest)}
        if "crashchat.git.commit" in self.source:
            self.version_tags["git_commit"] = self.source["crashchat.git.commit"]

    def train(self, mixture: Mixture) -> MixtureResult:
        """Train one mixture to its platform checkpoint: open its run, fit, publish."""
        started = time.perf_counter()
        key = f"{mixture.name}-{uuid.uuid4().hex[:8]}"
        spec = self._open_run(mixture, key)
        self.on_event(
            f"{mixture.name}: {spec.train_rows} train / {spec.val_rows} val samples, "
            f"{spec.epochs:g} epochs"
        )
        fit = self._build_trainer(mixture, spec).fit()
        if fit.checkpoint is None:
            raise RuntimeError(f"{mixture.name}: training reported no checkpoint")
        export, state = best_export(Path(fit.checkpoint.path))
        dest = self._publish(mixture, key, export, state)
        return MixtureResult(
            mixture.name,
            mixture.strategy,
            list(mixture.tasks),
            str(dest),
            self.tracker.run_id(key),
            steps=state.step,
            best_step=state.best_step,
            best_eval_loss=state.best_eval_loss,
            stopped_early=state.stopped_early,
            attempts=state.attempts,
            seconds=time.perf_counter() - started,
            history=state.history,
            evals=state.evals,
        )

    def _open_run(self, mixture: Mixture, key: str) -> RunSpec:
        """Create the mixture's MLflow run (tags, datasets, params); the workers' spec."""
        cfg = self.cfg
        spec = build_run_spec(
            cfg, self.manifest, mixture, self.base_model, key, {}, str(self.data_dir)
        )
        self.tracker.create_run(
            key,
            cfg.tracking.experiment,
            mixture.name,
            tags={"mixture": mixture.name, "strategy": mixture.strategy, **self.source},
        )
        for context, split in (("training", cfg.train_split), ("validation", cfg.val_split)):
            self.tracker.log_input(
                key,
                dataset_input(
                    self.data_dir, self.manifest, context, mixture=mixture.name, split=split
                ),
            )
        self.tracker.log(
            key,
            params={
                "mixture": mixture.name,
                "strategy": mixture.strategy,
                "tasks": ",".join(spec.tasks),
                "base_model": self.base_model,
                "data": str(self.data_dir),
                "train_samples": spec.train_rows,
                "val_samples": spec.val_rows,
                "epochs_for_mixture": spec.epochs,
                **cfg.model_dump(mode="json"),
            },
        )
        self.tracker.flush(force=True)
        spec.tracking = self.tracker.pending()
        # The worker continues the journal from here; the driver picks it up after the fit.
        self.tracker.ops = []
        return spec

    def _build_trainer(self, mixture: Mixture, spec: RunSpec) -> Any:
        """The TorchTrainer of one mixture: its workers, collectives, storage and datasets."""
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from crashchat.training.loop import train_loop_per_worker

        cfg, sc, tasks = self.cfg, self.cfg.scaling, list(mixture.tasks)
        storage = Path(cfg.storage_path or self.output / "_ray").resolve()
        # A restarted worker skips the micro-batches of its epoch it had trained on before: that
        # is exact only when every worker gets the same rows in the same order each time. Ray
        # Data then ignores locality hints when sharding; records carry no pixels (each worker
        # reads its clips itself), so little moves between nodes either way.
        ingest = DataConfig.default_ingest_options()
        ingest.preserve_order = True
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config=asdict(spec),
            scaling_config=ScalingConfig(
                num_workers=sc.num_workers,
                use_gpu=sc.use_gpu,
                resources_per_worker={"CPU": sc.cpus_per_worker, **sc.worker_resources},
            ),
            torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
            run_config=RunConfig(
                name=f"{spec.run_key}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=cfg.schedule.num_checkpoints_to_keep
                ),
            ),
            dataset_config=DataConfig(execution_options=ingest),
            datasets={
                "train": read_samples(self.data_dir, tasks, [cfg.train_split]),
                "val": read_samples(self.data_dir, tasks, [cfg.val_split]),
            },
        )

    def _publish(self, mixture: Mixture, key: str, export: Path, state: TrainState) -> Path:
        """Write the platform checkpoint, close the run (metrics, artifacts, registry)."""
        cfg = self.cfg
        # Continue the worker's journal (its unsent operations come first).
        t = state.tracking
        self.tracker.run_ids.update(t.get("run_ids", {}))
        self.tracker.ops = list(t.get("ops", [])) + self.tracker.ops
        dest = self.output / mixture.name
        meta = {
            "mixture": mixture.name,
            "strategy": mixture.strategy,
            "tasks": list(mixture.tasks),
            "step": state.best_step or state.step,
            "steps_trained": state.step,
            "eval_loss": state.best_eval_loss,
            "stopped_early": state.stopped_early,
            "mlflow_run_key": key,
            "mlflow_run_id": self.tracker.run_id(key),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        prompts = _prompts_for(self.data_dir, list(mixture.tasks))
        config = cfg.model_dump(mode="json")
        write_platform_checkpoint(
            dest, export, self.base_model, self.base_model, prompts, config, meta
        )
        final: dict[str, float] = {"steps": state.step, "attempts": state.attempts}
        if state.best_eval_loss is not None:
            final["best_eval_loss"] = state.best_eval_loss
        self.tracker.log(key, metrics=final, step=state.step, tags={"checkpoint": str(dest)})
        if cfg.tracking.log_checkpoint:
            self.tracker.log_artifacts(key, dest, "checkpoint")
            if cfg.tracking.registered_model:
                self.tracker.register(
                    key,
                    cfg.tracking.registered_model,
                    mixture.name,
                    "checkpoint",
                    tags=self.version_tags,
                )
        self.tracker.end_run(key)
        self.tracker.flush(force=True)
        return dest

    def finish(self) -> str | None:
        """Save unsent tracking operations; a note for the user when any remain."""
        self.tracker.flush(force=True)
        path = self.tracker.save_pending(self.output / PENDING_FILE)
        if path is None:
            return None
        return (
            f"MLflow at {self.tracker.uri} was unreachable ({self.tracker.last_error}); "
            f"{len(self.tracker.ops)} tracking operations are kept in {path}. Send them with "
            f"`crashchat tracking sync {path}` once it is back."
        )


def _describe_error(exc: BaseException) -> str:
    """The useful part of a (possibly remote) error: its type and the last lines that say why."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    tail = [ln.strip() for ln in lines if not ln.startswith(" ")][-3:] or lines[-3:]
    return f"{type(exc).__name__}: " + " | ".join(tail)[:1500]


@dataclass(frozen=True)
class TrainInputs:
    """What a training job reads and where it writes.

    Attributes:
        data: A preprocessed dataset (``crashchat preprocess`` output).
        base_model: Native model folder (or id) the adapters are trained on.
        output: Folder of the platform checkpoints (one per mixture) and the summary.
        mixtures: The task mixtures to train, one run each.
    """

    data: str | Path
    base_model: str
    output: str | Path
    mixtures: list[Mixture]


def run_training(
    cfg: TrainConfig,
    inputs: TrainInputs,
    address: str | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[list[MixtureResult], str | None]:
    """Train each mixture; returns the results and a tracking note (None when all was sent).

    Raises:
        ResourceError: before anything starts, when the cluster is too small.
    """
    from crashchat.ray_utils import ensure_ray

    data_dir, base_model, mixtures = inputs.data, inputs.base_model, inputs.mixtures
    output = Path(inputs.output)
    output.mkdir(parents=True, exist_ok=True)
    started_ray = ensure_ray(address)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        note = check_resources(cfg)
        if on_event:
            on_event(f"resources: {note}")
        run = TrainingRun(cfg, data_dir, base_model, output, on_event)
        results = []
        for mixture in mixtures:
            try:
                results.append(run.train(mixture))
            except Exception as exc:  # one mixture failing must not lose the others
                res = MixtureResult(mixture.name, mixture.strategy, list(mixture.tasks), None, None)
                res.error = _describe_error(exc)
                results.append(res)
            if on_event:
                r = results[-1]
                on_event(
                    f"{r.mixture}: " + (r.error or f"checkpoint {r.checkpoint}, run {r.run_id}")
                )
        tracking_note = run.finish()
        (output / "training_summary.json").write_text(
            json.dumps(
                {"results": [r.to_json() for r in results], "tracking": tracking_note}, indent=2
            )
        )
        return results, tracking_note
    finally:
        if started_ray:
            import ray

            ray.shutdown()
