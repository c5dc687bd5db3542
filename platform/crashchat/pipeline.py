"""The whole pipeline as one run: preprocess -> train -> evaluate -> compare -> serve.

``crashchat pipeline`` (and ``jobs/pipeline.py``, which runs that command) call
:func:`run_pipeline`. It sits above the consumers it chains (``video``, ``training``,
``evaluation``, ``serving``); nothing in the library imports it.

Output under ``output``: ``preprocessed/`` (and ``preprocessed-eval/`` when evaluation samples
clips differently), ``checkpoints/<mixture>/``, ``eval/<mixture|baseline>/``, ``comparison/``.
MLflow holds one run per mixture, the baseline's evaluation run and the comparison run, all in
the training config's experiment; with a ``serve`` section the checkpoints stay deployed on the
cluster's Serve after the run ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crashchat.config import PipelineConfig
from crashchat.ray_utils import ensure_ray

if TYPE_CHECKING:
    from crashchat.data.tasks import Mixture
    from crashchat.training.runner import MixtureResult
    from crashchat.video.pipeline import PreprocessInputs

Report = Callable[[dict[str, Any]], None]  # one call per finished stage
Events = Callable[[str], None]  # progress messages (training's resources, tracking notes)


@dataclass(frozen=True)
class PipelineInputs:
    """What the pipeline reads and where it writes; absolute paths (a job may change directory)."""

    annotations: list[str]
    video_root: str
    model: str
    output: Path

    @classmethod
    def resolved(
        cls,
        annotations: list[str | Path],
        video_root: str | Path,
        model: str | Path,
        output: str | Path,
    ) -> PipelineInputs:
        """The inputs with every path made absolute."""
        return cls(
            [str(Path(a).resolve()) for a in annotations],
            str(Path(video_root).resolve()),
            str(Path(model).resolve()),
            Path(output).resolve(),
        )


def _preprocess_inputs(inputs: PipelineInputs, out: Path) -> PreprocessInputs:
    """The pipeline's annotations, videos and model, preprocessed into ``out``."""
    from crashchat.video.pipeline import PreprocessInputs

    return PreprocessInputs(inputs.annotations, inputs.video_root, inputs.model, out)


def _line(report: Report, stage: str, **fields: Any) -> None:
    """Report one finished stage: its name and results."""
    report({"stage": stage, **fields})


def timed(report: Report) -> Report:
    """``report`` with each stage's wall time (``seconds``, since the previous stage ended)."""
    last = time.monotonic()

    def send(stage: dict[str, Any]) -> None:
        nonlocal last
        now = time.monotonic()
        report({**stage, "seconds": round(now - last, 1)})
        last = now

    return send


def print_stage(stage: dict[str, Any]) -> None:
    """The default report: one JSON line per stage, flushed so a job's logs show it at once."""
    print(json.dumps(stage), flush=True)


def evaluation_data(cfg: PipelineConfig, inputs: PipelineInputs, report: Report) -> Path:
    """The training data when evaluation samples clips the same way; else the evaluation split
    preprocessed at the evaluation settings (upstream: 10,240 visual tokens to train, 16,384 to
    evaluate)."""
    from crashchat.video.pipeline import run_preprocess

    keys = ("fps", "max_frames", "min_frames", "frame_size", "max_visual_tokens")
    train, ev = cfg.preprocess.model_dump(), cfg.evaluate.preprocess.model_dump()
    if all(train[k] == ev[k] for k in keys):
        return inputs.output / "preprocessed"
    settings = cfg.evaluate.preprocess.model_copy(
        update={"splits": [cfg.evaluate.split] if cfg.evaluate.split else None}
    )
    out = inputs.output / "preprocessed-eval"
    pre = run_preprocess(settings, _preprocess_inputs(inputs, out))
    _line(report, "preprocess-eval", **pre.summary())
    return out


def deploy(cfg: PipelineConfig, inputs: PipelineInputs) -> dict[str, object]:
    """Serve the trained checkpoints (and the baseline) on the connected cluster; returns where.

    Raises:
        CatalogError: when no checkpoint is servable.
        ServeSetupError: when the cluster lacks what the serve config needs.
    """
    from crashchat.serving.catalog import build_catalog
    from crashchat.serving.lifecycle import deploy as deploy_app

    assert cfg.serve is not None
    out = inputs.output
    best = out / "comparison" / "best_checkpoints.json"
    catalog = build_catalog(
        checkpoints=out / "checkpoints",
        base_model=inputs.model,
        best=best if best.is_file() else None,
        prompts=cfg.serve.prompts or str(out / "preprocessed" / "prompts.json"),
    )
    return {"url": deploy_app(catalog, cfg.serve), "checkpoints": catalog.names}


def _stages(
    cfg: PipelineConfig,
    inputs: PipelineInputs,
    mixtures: list[Mixture],
    report: Report,
    on_event: Events,
) -> list[MixtureResult]:
    """Run every stage on the connected Ray; returns the training results."""
    from crashchat.evaluation.compare import run_compare
    from crashchat.evaluation.runner import EvalInputs, run_evaluation
    from crashchat.training.runner import TrainInputs, run_training
    from crashchat.video.pipeline import run_preprocess

    out = inputs.output
    pre = run_preprocess(cfg.preprocess, _preprocess_inputs(inputs, out / "preprocessed"))
    _line(report, "preprocess", **pre.summary())
    train = TrainInputs(out / "preprocessed", inputs.model, out / "checkpoints", mixtures)
    results, note = run_training(cfg.train, train, None, on_event)
    _line(report, "train", results=[r.to_json() for r in results], tracking=note)
    if note:
        on_event(f"tracking: {note}")
    eval_data = evaluation_data(cfg, inputs, report)
    models = {r.mixture: r.checkpoint for r in results if r.checkpoint}
    if cfg.evaluate_baseline:
        models["baseline"] = inputs.model
    for name, model in models.items():
        ev = run_evaluation(
            cfg.evaluate, EvalInputs(str(model), out / "eval" / name, data=eval_data)
        )
        _line(report, "evaluate", **{**ev.summary(), "name": name})
    if cfg.compare:
        tracking = cfg.train.tracking
        comp, _files, run_id = run_compare(
            tracking.experiment, out / "comparison", True, tracking.uri
        )
        _line(report, "compare", best=comp.best, run_id=run_id)
    if cfg.serve is not None:
        _line(report, "serve", **deploy(cfg, inputs))
    return results


def run_pipeline(
    cfg: PipelineConfig,
    inputs: PipelineInputs,
    address: str | None,
    report: Report = print_stage,
    on_event: Events = print,
) -> list[MixtureResult]:
    """Run preprocess -> train -> evaluate -> compare -> (serve) on one Ray connection.

    Args:
        cfg: The pipeline's settings; its evaluations and comparison are tracked in the
            training config's experiment (one experiment for the whole pipeline).
        inputs: Absolute paths (:meth:`PipelineInputs.resolved`).
        address: Ray address as :func:`~crashchat.ray_utils.ensure_ray` takes it.
        report: Receives each finished stage's results (``{"stage": NAME, ..., "seconds": S}``,
            S the stage's wall time).
        on_event: Receives progress messages.

    Returns:
        The training results, one per mixture (a failed mixture carries its ``error``).

    Raises:
        KeyError, ValueError: an unknown mixture or strategy (before Ray starts).
        ResourceError, FileNotFoundError, CatalogError, ServeSetupError: a stage failed.
    """
    from crashchat.training.runner import plan_mixtures

    mixtures = plan_mixtures(cfg.mixture, None if cfg.mixture else cfg.strategy)
    cfg.evaluate.tracking = cfg.train.tracking
    started = ensure_ray(address)  # one connection: the stages reuse it
    try:
        return _stages(cfg, inputs, mixtures, timed(report), on_event)
    finally:
        if started:
            import ray

            ray.shutdown()
