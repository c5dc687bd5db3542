"""Ray job: batch evaluation of a checkpoint, registry model or base model on Ray Data.

Launch on a cluster (the working directory ships the project)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/evaluate.py --model models:/crashchat@heterogeneous \\
        --annotations /shared/annotations --video-root /shared/videos --out /shared/eval/hete

or locally: ``python jobs/evaluate.py ... --address local``.
"""

from __future__ import annotations

import argparse
import json
import sys

from crashchat.config import ConfigError, EvalConfig, build_config
from crashchat.evaluation.runner import run_evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="checkpoint, base model or models:/NAME@ALIAS"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--annotations", nargs="+", help="annotation files or folders")
    parser.add_argument("--video-root")
    parser.add_argument("--data", help="instead of annotations: a preprocessed dataset")
    parser.add_argument("--config", help="YAML with an EvalConfig")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--address", default="auto", help="'auto' inside a Ray job, or 'local'")
    args = parser.parse_args(argv)

    try:
        cfg = build_config(args.config, EvalConfig, args.overrides)
        result = run_evaluation(
            args.model, args.out, cfg, args.annotations, args.video_root, args.data, args.address
        )
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
