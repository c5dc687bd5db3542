"""Bring the endpoint up and down, and write the equivalent Serve config file.

``serve_up`` starts (or joins) Ray, runs the application and returns where it listens. In the
foreground the caller waits for SIGINT/SIGTERM and calls ``serve_down``; ``detach`` starts a
standalone Ray head (so Serve outlives this process) and records it in a state file that
``crashchat serve down`` reads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from crashchat.config import ServeConfig
from crashchat.local_cluster import enable_token_auth, start_head, stop_head
from crashchat.serving.catalog import Catalog, deployment_name

DEFAULT_STATE = Path("runs/serve/serve-state.json")
APP_IMPORT_PATH = "crashchat.serving.app:build_app"


class ServeSetupError(RuntimeError):
    """The endpoint cannot be started as asked; the message says why and what to change."""


@dataclass
class ServeState:
    """What ``serve up --detach`` started, for ``serve down``."""

    address: str
    url: str
    app_name: str
    started_ray: bool
    pid: int


def check_exposure(cfg: ServeConfig) -> None:
    """Binding beyond loopback needs a bearer token in ``cfg.token_env``.

    Raises:
        ServeSetupError: when the host is not loopback and no token is set.
    """
    from crashchat.serving.requests import is_loopback

    if not is_loopback(cfg.host) and not os.environ.get(cfg.token_env):
        raise ServeSetupError(
            f"host {cfg.host} is reachable from other machines: set a bearer token in "
            f"${cfg.token_env} (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


def check_ingress(cfg: ServeConfig) -> None:
    """The connected Ray cluster was started with what ``cfg.ingress`` needs.

    Raises:
        ServeSetupError: naming the variable the cluster lacks.
    """
    wanted = cfg.ray_env()
    if not wanted:
        return
    import ray

    @ray.remote(num_cpus=0)
    def cluster_env(names: list[str]) -> dict[str, str | None]:
        return {n: os.environ.get(n) for n in names}

    have = ray.get(cluster_env.remote(list(wanted)), timeout=60)
    if have.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        raise ServeSetupError(
            f"ingress: {cfg.ingress} needs a Ray cluster started with "
            "RAY_SERVE_ENABLE_HA_PROXY=1 in its environment; this one was not (start it with "
            "that variable, let `serve up` start Ray by leaving out --address, or set "
            "ingress: proxy)"
        )


def deploy(catalog: Catalog, cfg: ServeConfig) -> str:
    """Run the application on the connected Ray cluster; returns its URL.

    Raises:
        ServeSetupError: when the cluster lacks what ``cfg.ingress`` needs.
    """
    from ray import serve

    from crashchat.serving.app import build_application

    check_ingress(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_application(catalog, cfg), name=cfg.app_name, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}/"


def serve_up(
    catalog: Catalog,
    cfg: ServeConfig,
    address: str | None = None,
    detach: bool = False,
    num_cpus: int | None = None,
    state_file: Path = DEFAULT_STATE,
) -> ServeState:
    """Deploy ``catalog`` under ``cfg`` and wait until every deployment is running.

    Args:
        catalog: What to serve.
        cfg: Serve settings.
        address: A Ray cluster to join; None starts one (in-process, or a head when detached).
        detach: Leave the endpoint running after this process exits.
        num_cpus: CPUs of a Ray this call starts.
        state_file: Where a detached endpoint is recorded for ``serve down``.

    Raises:
        ServeSetupError: exposure without a token, or Ray failing to start.
    """
    check_exposure(cfg)
    if address is None and detach:
        # Before Ray is imported: it reads the auth mode once, and the head uses tokens.
        enable_token_auth()
    import ray

    from crashchat.ray_utils import ensure_ray

    owned = address is None  # this call starts the Ray it serves on, and stops it on down
    if owned:
        os.environ.update(cfg.ray_env())  # inherited by the Ray processes started below
    if owned and detach:
        address = start_head(num_cpus)
    ensure_ray(address, num_cpus)
    address = ray.get_runtime_context().gcs_address
    url = deploy(catalog, cfg)
    state = ServeState(address, url, cfg.app_name, owned, os.getpid())
    if detach:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(asdict(state), indent=2))
        ray.shutdown()
    return state


def serve_down(state: ServeState | None = None, state_file: Path = DEFAULT_STATE) -> ServeState:
    """Stop Serve and the Ray that ``serve up`` started.

    Raises:
        ServeSetupError: when nothing is recorded as running.
    """
    if state is None:
        if not state_file.is_file():
            raise ServeSetupError(f"{state_file}: no detached endpoint is recorded")
        state = ServeState(**json.loads(state_file.read_text()))
    if state.started_ray:
        enable_token_auth()  # the head start_head made
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=state.address, log_to_driver=False, configure_logging=False)
    if state.started_ray:
        serve.shutdown()
    else:
        serve.delete(state.app_name)
    ray.shutdown()
    if state.started_ray and state.pid != os.getpid():
        stop_head(state.address)
    state_file.unlink(missing_ok=True)
    return state


def wait_forever(stop: Any) -> None:
    """Sleep until ``stop()`` is true (set by a signal handler)."""
    while not stop():
        time.sleep(0.2)


def deployment_settings(catalog: Catalog | None, cfg: ServeConfig) -> list[dict[str, Any]]:
    """The ``deployments`` section of a Serve config: every deployment's scaling and resources.

    Without a catalog (checkpoints resolved on the cluster, e.g. from the registry) the model
    deployments are left out: their settings travel in ``args.config`` instead.
    """
    from crashchat.serving.app import _deployment_options

    named = [("router", cfg.router), ("decoder", cfg.decoder)]
    if cfg.mode == "multiplexed":
        named.append(("model_multiplexed", cfg.model))
    elif catalog is not None:
        named += [(deployment_name(n), cfg.replica(n)) for n in catalog.names]
    out = []
    for name, settings in named:
        opts = _deployment_options(settings, name, cfg.replica_env())
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

    ServeDeploySchema.model_validate(config) if hasattr(
        ServeDeploySchema, "model_validate"
    ) else ServeDeploySchema.parse_obj(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `crashchat serve config`; deploy with `serve deploy` or `serve run`.\n"
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return out
