"""Ray job: decode and preprocess annotated videos into training-ready Parquet samples.

Launch on a cluster (the working directory ships the project)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/preprocess.py --annotations data/ --video-root data/ \\
        --model runs/demo/model --out runs/demo/preprocessed

or locally: ``python jobs/preprocess.py ... --address local``.
"""

from __future__ import annotations

import argparse
import json
import sys

from crashchat.config import ConfigError, PreprocessConfig, build_config
from crashchat.video.pipeline import run_preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--annotations", nargs="+", required=True, help="annotation files or folders"
    )
    parser.add_argument("--video-root", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="YAML with a PreprocessConfig")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--address", default="auto", help="'auto' inside a Ray job, or 'local'")
    args = parser.parse_args(argv)

    try:
        cfg = build_config(args.config, PreprocessConfig, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    result = run_preprocess(
        args.annotations, args.video_root, args.model, args.out, cfg, args.address
    )
    print(json.dumps(result.summary(), indent=2))
    return 1 if cfg.strict and result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
