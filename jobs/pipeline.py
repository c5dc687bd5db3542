"""Ray job: the whole pipeline, preprocess -> train -> evaluate -> compare -> serve, as one job.

Launch on a cluster (the project ships with the job)::

    crashchat submit pipeline --address http://127.0.0.1:8265 \\
        --config jobs/configs/pipeline-tiny.yaml --annotations /shared/data \\
        --video-root /shared/data --model /shared/model --output /shared/run

or ``ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py ...``,
or locally with ``--address local``. Output: OUTPUT/preprocessed, OUTPUT/checkpoints/<mixture>,
OUTPUT/eval/<mixture|baseline>, OUTPUT/comparison; MLflow holds one run per mixture, the
baseline's evaluation run and the comparison run; with a ``serve`` section the checkpoints stay
deployed on the cluster's Serve after the job ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crashchat.config import ConfigError, PipelineConfig, build_config
from crashchat.evaluation.compare import run_compare
from crashchat.evaluation.runner import run_evaluation
from crashchat.ray_utils import ensure_ray, leave_job_working_dir
from crashchat.serving.lifecycle import ServeSetupError
from crashchat.training.runner import ResourceError, plan_mixtures, run_training
from crashchat.video.pipeline import run_preprocess


def deploy(cfg: PipelineConfig, out: Path, model: str) -> dict[str, object]:
    """Serve the trained checkpoints (and the baseline) on this cluster; returns where."""
    from crashchat.serving.catalog import build_catalog_from_dir
    from crashchat.serving.lifecycle import deploy as deploy_app

    assert cfg.serve is not None
    best = out / "comparison" / "best_checkpoints.json"
    prompts = cfg.serve.prompts or str(out / "preprocessed" / "prompts.json")
    catalog = build_catalog_from_dir(
        out / "checkpoints", model, best if best.is_file() else None, prompts=prompts
    )
    return {"url": deploy_app(catalog, cfg.serve), "checkpoints": catalog.names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML with a PipelineConfig")
    parser.add_argument("--annotations", nargs="+", required=True, help="annotation files/folders")
    parser.add_argument("--video-root", required=True, help="folder the video paths are under")
    parser.add_argument("--model", required=True, help="base model folder")
    parser.add_argument("--output", required=True, help="folder for every stage's output")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--address", default="auto", help="'auto' inside a Ray job, or 'local'")
    args = parser.parse_args(argv)

    try:
        cfg = build_config(args.config, PipelineConfig, args.overrides)
        mixtures = plan_mixtures(cfg.mixture, None if cfg.mixture else cfg.strategy)
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # One experiment for the whole pipeline: training runs, evaluations and the comparison.
    cfg.evaluate.tracking = cfg.train.tracking
    out = Path(args.output).resolve()
    args.annotations = [str(Path(a).resolve()) for a in args.annotations]
    args.video_root, args.model = (
        str(Path(args.video_root).resolve()),
        str(Path(args.model).resolve()),
    )
    leave_job_working_dir(out)
    started = ensure_ray(args.address)  # one connection: the stages reuse it
    try:
        pre = run_preprocess(
            args.annotations, args.video_root, args.model, out / "preprocessed", cfg.preprocess
        )
        print(json.dumps({"stage": "preprocess", **pre.summary()}), flush=True)
        results, note = run_training(
            cfg.train, out / "preprocessed", args.model, out / "checkpoints", mixtures, None, print
        )
        print(json.dumps({"stage": "train", "results": [r.to_json() for r in results]}), flush=True)
        if note:
            print(f"tracking: {note}", flush=True)
        models = {r.mixture: r.checkpoint for r in results if r.checkpoint}
        if cfg.evaluate_baseline:
            models["baseline"] = args.model
        for name, model in models.items():
            ev = run_evaluation(
                str(model), out / "eval" / name, cfg.evaluate, data=out / "preprocessed"
            )
            print(json.dumps({"stage": "evaluate", "model": name, **ev.summary()}), flush=True)
        if cfg.compare:
            comp, _files, run_id = run_compare(
                cfg.train.tracking.experiment, out / "comparison", True, cfg.train.tracking.uri
            )
            print(json.dumps({"stage": "compare", "best": comp.best, "run_id": run_id}), flush=True)
        if cfg.serve is not None:
            print(json.dumps({"stage": "serve", **deploy(cfg, out, args.model)}), flush=True)
    except (ConfigError, FileNotFoundError, ValueError, ResourceError, ServeSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
