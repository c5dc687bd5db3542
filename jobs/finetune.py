"""Ray job: LoRA fine-tuning of VideoLLaMA3 with Ray Train + DeepSpeed, tracked in MLflow.

Launch on a cluster (the working directory ships the project)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/finetune.py --config jobs/configs/videollama3-7b.yaml \\
        --data /shared/preprocessed --model /shared/VideoLLaMA3-7B-native \\
        --output /shared/checkpoints --strategy all

or locally: ``python jobs/finetune.py ... --address local``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crashchat.config import ConfigError, TrainConfig, build_config
from crashchat.ray_utils import leave_job_working_dir
from crashchat.training.runner import ResourceError, plan_mixtures, run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML with a TrainConfig")
    parser.add_argument("--data", required=True, help="preprocessed dataset folder")
    parser.add_argument("--model", required=True, help="base model folder or hub id")
    parser.add_argument("--output", required=True, help="checkpoints land in OUTPUT/<mixture>/")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--mixture", help="one mixture (task key or group name)")
    group.add_argument("--strategy", help="monotask | homogeneous | heterogeneous | all")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--address", default="auto", help="'auto' inside a Ray job, or 'local'")
    args = parser.parse_args(argv)

    try:
        cfg = build_config(args.config, TrainConfig, args.overrides)
        mixtures = plan_mixtures(args.mixture, args.strategy)
        data, output = Path(args.data).resolve(), Path(args.output).resolve()
        model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
        leave_job_working_dir(output)
        results, note = run_training(
            cfg, data, model, output, mixtures, args.address, on_event=print
        )
    except (ConfigError, KeyError, ValueError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"results": [r.to_json() for r in results], "tracking": note}, indent=2))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
