"""The Serve application: deployments bound together, and the Serve config file describing it.

``build_app(args)`` is the application builder Serve's own tooling imports
(``import_path: crashchat.serving.builder:build_app``); ``crashchat serve up`` calls
``build_application`` with the same result, and ``crashchat serve config`` writes the file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from ray import serve

from crashchat.config import ServeConfig, load_config
from crashchat.models.metadata import model_frame_size
from crashchat.serving.app import Router
from crashchat.serving.catalog import (
    BASELINE,
    DEFAULT_DOWNLOAD_ROOT,
    Catalog,
    build_catalog,
    deployment_name,
    processor_dir,
    processor_group,
)
from crashchat.serving.deployments import CheckpointModel, Decoder, MultiplexedModel
from crashchat.serving.requests import check_exposure
from crashchat.serving.versions import code_digest, replica_version

APP_IMPORT_PATH = "crashchat.serving.builder:build_app"


def deployment_options(
    settings: Any, name: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Serve options of one deployment from its ``ReplicaSettings`` (and the replicas' env)."""
    actor = settings.ray_actor_options()
    if env:
        # Serve reads these at import in the replica process; the job's env_vars still apply.
        actor["runtime_env"] = {"env_vars": dict(env)}
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": actor,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "autoscaling_config": settings.autoscaling.to_serve(),
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 5,
        # A stopping replica sleeps this long before it first counts its in-flight requests
        # (Serve's default 2 s): every `serve down`, scale-down and redeploy waits it out.
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    return opts


def _deployment(cls: type, options: dict[str, Any], version: str) -> Any:
    """``serve.deployment`` of a plain class with its options and code version.

    ``version`` is what Serve compares on a redeploy (see :mod:`crashchat.serving.versions`);
    ``Deployment.options`` takes it only with ``_internal=True`` (how Serve's own config
    deployments set theirs, and those still get the version Serve derives from the file), in a
    second call so the first still records the options as the user's (``serve build`` keeps them).
    """
    deployment: Any = serve.deployment(cls)
    return deployment.options(**options).options(version=version, _internal=True)


def build_application(catalog: Catalog, cfg: ServeConfig) -> Any:
    """The bound Serve application for ``catalog`` under ``cfg``."""
    cfg_json = cfg.model_dump(mode="json")
    env = cfg.replica_env()
    version = functools.partial(replica_version, code=code_digest())
    groups: dict[str, dict[str, Any]] = {}
    for c in catalog.checkpoints.values():
        groups.setdefault(
            processor_group(c),
            {"dir": processor_dir(c), "frame_size": model_frame_size(c.base_model)},
        )
    decoder = _deployment(
        Decoder,
        deployment_options(cfg.decoder, "decoder", env),
        version("decoder", [cfg_json, groups], [g["dir"] for g in groups.values()]),
    ).bind(cfg_json, groups)
    models: dict[str, Any]
    if cfg.mode == "multiplexed":
        bases = {c.base_model for c in catalog.checkpoints.values()}
        if len(bases) != 1:
            raise ValueError(
                f"multiplexed mode needs one base model; the checkpoints use {sorted(bases)}"
            )
        base = bases.pop()
        paths = {n: c.path for n, c in catalog.checkpoints.items() if n != BASELINE}
        models = {
            "multiplexed": _deployment(
                MultiplexedModel,
                deployment_options(cfg.model, "model_multiplexed", env),
                version("model_multiplexed", [paths, cfg_json], [base, *paths.values()]),
            ).bind(base, paths, cfg_json)
        }
    else:
        models = {}
        for name, c in catalog.checkpoints.items():
            deployment = deployment_name(name)
            models[name] = _deployment(
                CheckpointModel,
                deployment_options(cfg.replica(name), deployment, env),
                version(deployment, [name, c.path, cfg_json], [c.path, c.base_model]),
            ).bind(name, c.path, cfg_json)
    multiplexed = cfg.mode == "multiplexed"
    # The router sends each checkpoint's clips to the decoder under its processor group, which
    # it derives from the processor files: a changed group restarts it with the decoder.
    by_name = {n: processor_group(c) for n, c in catalog.checkpoints.items()}
    return _deployment(
        Router,
        deployment_options(cfg.router, "router", env),
        version("router", [catalog.to_args(), cfg_json, sorted(models), multiplexed, by_name]),
    ).bind(catalog.to_args(), cfg_json, decoder, models, multiplexed)


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files.

    ``args``: ``config`` (a ServeConfig mapping, or ``config_path`` with optional ``overrides``,
    ``key=value`` strings as ``--set`` takes them), and either ``catalog``
    (as written by ``crashchat serve config``), ``checkpoints`` (a folder), or ``registry`` (an
    MLflow experiment, with optional ``tracking_uri`` and ``download_root``); with either source,
    optional ``base_model`` and ``best``. The source is resolved by
    :func:`~crashchat.serving.catalog.build_catalog`, as ``crashchat serve up`` resolves it.

    Raises:
        CatalogError: naming what is missing (no source, two sources, nothing servable).
    """
    if "config_path" in args:
        cfg = load_config(args["config_path"], ServeConfig, list(args.get("overrides") or []))
    else:
        cfg = ServeConfig.model_validate(args.get("config") or {})
    check_exposure(cfg.host, cfg.token_env)  # declarative deployments: the same rule as serve up
    if "catalog" in args:
        catalog = Catalog.from_args(args["catalog"])
    else:
        catalog = build_catalog(
            checkpoints=args.get("checkpoints"),
            registry=args.get("registry"),
            base_model=args.get("base_model"),
            best=args.get("best"),
            prompts=cfg.prompts,
            download_root=args.get("download_root") or DEFAULT_DOWNLOAD_ROOT,
            tracking_uri=args.get("tracking_uri"),
        )
    return build_application(catalog, cfg)


def deployment_settings(catalog: Catalog | None, cfg: ServeConfig) -> list[dict[str, Any]]:
    """The ``deployments`` section of a Serve config: every deployment's scaling and resources.

    Without a catalog (checkpoints resolved on the cluster, e.g. from the registry) the model
    deployments are left out: their settings travel in ``args.config`` instead.
    """
    named = [("router", cfg.router), ("decoder", cfg.decoder)]
    if cfg.mode == "multiplexed":
        named.append(("model_multiplexed", cfg.model))
    elif catalog is not None:
        named += [(deployment_name(n), cfg.replica(n)) for n in catalog.names]
    out = []
    for name, settings in named:
        opts = deployment_options(settings, name, cfg.replica_env())
        out.append(opts)
    return out


def build_serve_config(
    catalog: Catalog | None, cfg: ServeConfig, source: dict[str, Any]
) -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy`` / RayService ``serveConfigV2``).

    ``source`` is how the cluster finds the checkpoints: ``{"checkpoints": DIR}``,
    ``{"registry": EXPERIMENT, ...}`` or ``{"catalog": catalog.to_args()}``.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": "/",
                "import_path": APP_IMPORT_PATH,
                "args": {"config": cfg.model_dump(mode="json"), **source},
                "deployments": deployment_settings(catalog, cfg),
            }
        ],
    }


def write_serve_config(config: dict[str, Any], out: Path) -> Path:
    """Validate ``config`` with Ray's own schema and write it as YAML.

    Raises:
        pydantic.ValidationError: when Ray's ``ServeDeploySchema`` rejects it.
    """
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `crashchat serve config`; deploy with `serve deploy` or `serve run`.\n"
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return out
