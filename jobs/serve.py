"""Ray job: deploy checkpoints on the cluster's Ray Serve (they stay up after the job ends).

Launch on a cluster (the project ships with the job)::

    crashchat submit serve --address http://127.0.0.1:8265 \\
        --config jobs/configs/serve-videollama3-7b.yaml --registry crashchat-7b

or ``serve deploy serve/<name>.yaml`` with a file from ``crashchat serve config``.
"""

from __future__ import annotations

import argparse
import json
import sys

from crashchat.config import ConfigError, ServeConfig, build_config
from crashchat.ray_utils import ensure_ray
from crashchat.serving.catalog import (
    CatalogError,
    build_catalog_from_dir,
    build_catalog_from_registry,
)
from crashchat.serving.lifecycle import ServeSetupError, deploy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", help="folder of platform checkpoints")
    source.add_argument("--registry", help="MLflow experiment whose aliases are served")
    parser.add_argument("--base-model", help="baseline model [default: the checkpoints' base]")
    parser.add_argument("--best", help="best_checkpoints.json from crashchat compare")
    parser.add_argument("--download-root", default="/tmp/crashchat-serve-models")
    parser.add_argument("--config", help="YAML with a ServeConfig")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--address", default="auto", help="'auto' inside a Ray job")
    args = parser.parse_args(argv)

    try:
        cfg = build_config(args.config, ServeConfig, args.overrides)
        if args.checkpoints:
            catalog = build_catalog_from_dir(
                args.checkpoints, args.base_model, args.best, prompts=cfg.prompts
            )
        else:
            catalog = build_catalog_from_registry(
                args.registry, args.download_root, None, args.base_model, prompts=cfg.prompts
            )
    except (ConfigError, CatalogError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensure_ray(args.address)
    try:
        url = deploy(catalog, cfg)
    except ServeSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = {"url": url, "checkpoints": catalog.names}
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
