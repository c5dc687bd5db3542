"""``crashchat evaluate``: preprocess (or reuse) clips, answer with Ray Data, score, log.

Outputs in ``OUT``: ``predictions/<task>.json`` (upstream records), ``metrics.json``
(``{task: {metric: value}}``), ``inputs/`` (the preprocessed clips, with ``failures.jsonl``) and
``evaluation.json`` (what was evaluated and how).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crashchat.config import EvalConfig
from crashchat.data.tasks import get_task
from crashchat.evaluation.inference import run_inference
from crashchat.evaluation.metrics import crash_starts_from, task_metrics
from crashchat.evaluation.predictions import build_record, write_predictions
from crashchat.evaluation.reference import reference_points
from crashchat.models.checkpoint import is_checkpoint, verify_checkpoint
from crashchat.tracking import Tracker, resolve_tracking_uri


@dataclass
class EvalResult:
    """What an evaluation produced."""

    out: Path
    model: str
    metrics: dict[str, dict[str, Any]]
    counts: dict[str, int]
    failures: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    tracking_note: str | None = None
    seconds: float = 0.0
    reference: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON summary."""
        return {
            "out": str(self.out),
            "model": self.model,
            "metrics": self.metrics,
            "counts": self.counts,
            "reference": self.reference,
            "failures": len(self.failures),
            "mlflow_run_id": self.run_id,
            "tracking": self.tracking_note,
            "seconds": round(self.seconds, 1),
        }


def metric_key(task: str, name: str) -> str:
    """MLflow-safe metric name (MLflow refuses '@')."""
    return f"{task}.{name.replace('@', '_at_')}"


class ResourceError(RuntimeError):
    """The cluster cannot hold the model actors and still read data."""


def check_inference_resources(cfg: EvalConfig, read_cpus: float = 1.0) -> None:
    """Fail fast when the actor pool would take the CPU the read stage needs (a silent hang).

    Raises:
        ResourceError: naming the numbers and what to lower.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    need = cfg.workers * cfg.worker_num_cpus + read_cpus
    if need > total + 1e-9:
        raise ResourceError(
            f"evaluation needs {cfg.workers} workers x {cfg.worker_num_cpus} CPU + {read_cpus:g} "
            f"CPU to read data = {need:g} CPU, the cluster has {total:g}; lower workers or "
            "worker_num_cpus"
        )


def _trained_tasks(model: str) -> list[str] | None:
    """A checkpoint is evaluated on the tasks it was trained on; a base model on all."""
    if is_checkpoint(model):
        tasks = verify_checkpoint(model).get("tasks")
        return list(tasks) if tasks else None
    return None


def _base_of(model: str) -> str:
    if is_checkpoint(model):
        return str(verify_checkpoint(model)["base_model"])
    return model


def score(
    rows: list[dict[str, Any]], bertscore: str | None = None, parser: str = "upstream"
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Prediction records per task and their metrics, from answered rows (``parser``: the
    ``parse`` setting, ``upstream`` or ``robust``)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rec = build_record(
            row["task"], row["record_id"], row["video"], row["prompt"], row["answer"],
            row["response"] or "", parser,
        )  # fmt: skip
        if row.get("error"):
            rec["error"] = row["error"]
        by_task.setdefault(get_task(row["task"]).key, []).append(rec)
    starts = crash_starts_from(by_task.get("crash_localization", []))
    metrics = {
        task: task_metrics(task, recs, starts, bertscore, parser)
        for task, recs in sorted(by_task.items())
    }
    return by_task, metrics


def _prepare_inputs(
    local: str,
    out: Path,
    cfg: EvalConfig,
    annotations: list[str | Path] | None,
    video_root: str | Path | None,
) -> Path:
    """The evaluation's dataset, preprocessed from the annotations with the model's processor
    unless the one already there was made from the same files and settings."""
    from crashchat.video.pipeline import PreprocessInputs, dataset_is_current, run_preprocess

    if not annotations or video_root is None:
        raise ValueError("give --data, or --annotations with --video-root")
    data = Path(cfg.inputs) if cfg.inputs else out / "inputs"
    base = _base_of(local)
    if not dataset_is_current(data, annotations, video_root, base, cfg.preprocess):
        run_preprocess(cfg.preprocess, PreprocessInputs(annotations, video_root, base, data), None)
    return data


def _predict(
    local: str, out: Path, cfg: EvalConfig, inputs: EvalInputs, address: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], Path]:
    """Preprocess when needed, then answer every row of the split on Ray Data workers; (answered
    rows, preprocessing failures, the split's reference points, the preprocessed folder)."""
    from crashchat.ray_utils import ensure_ray
    from crashchat.video.samples import (
        load_manifest,
        read_failures,
        read_records_table,
        read_samples,
    )

    started_ray = ensure_ray(address)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        data = inputs.data
        if data is None:
            data = _prepare_inputs(local, out, cfg, inputs.annotations, inputs.video_root)
        check_inference_resources(cfg)
        manifest = load_manifest(data)
        tasks = cfg.tasks or _trained_tasks(local)
        dataset = read_samples(data, tasks, [cfg.split] if cfg.split else None)
        data_dir = str(Path(data).resolve())
        rows = run_inference(dataset, local, manifest["pixel_norm"], cfg, data_dir)
        failures = read_failures(data)
        ref_rows = read_records_table(data).select(["task", "split", "answer"]).to_pylist()
        reference = reference_points(ref_rows, cfg.split or "test")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return rows, failures, reference, Path(data)


@dataclass(frozen=True)
class EvalInputs:
    """What an evaluation reads and where it writes.

    Give either ``annotations`` + ``video_root`` (clips are preprocessed first, with the model's
    processor) or ``data`` (an existing preprocessed dataset made with the same processor).

    Attributes:
        model: Checkpoint folder, base model, or ``models:/name@alias``.
        out: Folder of the predictions, metrics and summary.
        annotations: Annotation files or folders.
        video_root: Folder the annotations' video paths are relative to.
        data: A preprocessed dataset.
    """

    model: str
    out: str | Path
    annotations: list[str | Path] | None = None
    video_root: str | Path | None = None
    data: str | Path | None = None


def run_evaluation(cfg: EvalConfig, inputs: EvalInputs, address: str | None = None) -> EvalResult:
    """Evaluate ``inputs.model`` on the split ``cfg`` names: predict, score, log to MLflow."""
    from crashchat.tracking.registry import resolve_model_ref

    started = time.perf_counter()
    model, out = inputs.model, Path(inputs.out)
    out.mkdir(parents=True, exist_ok=True)
    local = resolve_model_ref(model, out / "model", cfg.tracking.uri)
    local = str(Path(local).resolve()) if Path(local).exists() else local
    rows, failures, reference, data = _predict(local, out, cfg, inputs, address)
    by_task, metrics = score(rows, cfg.bertscore_model, cfg.parse)
    write_predictions(out / "predictions", by_task)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    counts = {t: len(r) for t, r in by_task.items()}
    result = EvalResult(out, model, metrics, counts, failures, reference=reference)
    if cfg.log_to_mlflow:
        result.run_id, result.tracking_note = log_evaluation(
            model, local, metrics, cfg, out, reference, data
        )
    result.seconds = time.perf_counter() - started
    (out / "evaluation.json").write_text(json.dumps(result.summary(), indent=2))
    return result


def _run_exists(tracker: Tracker, run_id: str) -> bool:
    try:
        tracker.client.get_run(run_id)
    except Exception:
        return False
    return True


def log_evaluation(
    model: str,
    local: str,
    metrics: dict[str, dict[str, Any]],
    cfg: EvalConfig,
    out: Path,
    reference: dict[str, Any] | None = None,
    data: Path | None = None,
) -> tuple[str | None, str | None]:
    """Log metrics to the checkpoint's training run, or to a new baseline run; with the
    evaluated dataset as the run's ``evaluation`` input and the parser as the ``parse`` tag."""
    from crashchat.tracking.lineage import dataset_input, source_tags
    from crashchat.video.samples import load_manifest

    tracker = Tracker(resolve_tracking_uri(cfg.tracking.uri), cfg.tracking.request_timeout_s, 0)
    run_id = None
    if is_checkpoint(local):
        meta = verify_checkpoint(local)
        run_id = meta.get("mlflow_run_id")
        mixture, strategy = meta.get("mixture", "imported"), meta.get("strategy", "imported")
    else:
        mixture, strategy = "baseline", "baseline"
    if run_id and not _run_exists(tracker, run_id):
        run_id = None  # trained against another tracking store: record the evaluation here
    key = run_id or f"eval-{mixture}-{int(time.time())}"
    if run_id:
        tracker.run_ids[key] = run_id
    else:
        tracker.create_run(
            key, cfg.tracking.experiment, f"{mixture}-eval",
            tags={"mixture": mixture, "strategy": strategy, "kind": "evaluation", **source_tags()},
        )  # fmt: skip
        tracker.log(key, params={"model": model, "mixture": mixture, "strategy": strategy})
    if data is not None:
        tracker.log_input(
            key, dataset_input(data, load_manifest(data), "evaluation", split=cfg.split or "all")
        )
    values = {
        metric_key(task, name): float(v)
        for task, suite in metrics.items()
        for name, v in suite.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    values.update(
        {
            f"reference.{k}": float(v)
            for k, v in (reference or {}).items()
            if isinstance(v, int | float)
        }
    )
    tracker.log(key, values, step=0, tags={"evaluated": "true", "parse": cfg.parse})
    tracker.log_artifacts(key, out / "predictions", "evaluation/predictions")
    if not run_id:
        tracker.end_run(key)
    tracker.flush(force=True)
    path = tracker.save_pending(out / "tracking_pending.json")
    note = None
    if path is not None:
        note = f"MLflow unreachable ({tracker.last_error}); kept in {path}"
    return tracker.run_id(key), note
