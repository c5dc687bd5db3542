"""Bring the endpoint up and down, and write the equivalent Serve config file.

``serve_up`` starts (or joins) Ray, runs the application and returns where it listens. In the
foreground the caller waits for SIGINT/SIGTERM and calls ``serve_down``; ``detach`` starts a
standalone Ray head (so Serve outlives this process) and records it in a state file that
``crashchat serve down`` reads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crashchat.config import ServeConfig
from crashchat.local_cluster import enable_token_auth, start_head, stop_head
from crashchat.serving.catalog import Catalog
from crashchat.serving.requests import ExposureError, check_exposure

DEFAULT_STATE = Path("runs/serve/serve-state.json")


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


def serve_haproxies(config_path: str | None = None) -> dict[int, int]:
    """pid -> parent pid of the HAProxy processes running Ray Serve's config.

    Ray's HAProxy ingress runs ``haproxy -f <config>`` as a child of a Serve actor; any other
    haproxy on the machine (another config) is not Serve's.

    Args:
        config_path: The HAProxy config Serve writes (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``).
    """
    import psutil

    config_path = config_path or os.environ.get(
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg"
    )
    found = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not any("haproxy" in Path(c).name for c in cmd[:2]):
            continue
        if config_path in [b for a, b in itertools.pairwise(cmd) if a == "-f"]:
            found[proc.info["pid"]] = proc.info["ppid"]
    return found


def orphan_haproxies(config_path: str | None = None) -> list[int]:
    """PIDs of HAProxy processes Ray Serve started whose Ray is gone.

    When the Serve actor that started an HAProxy (:func:`serve_haproxies`) is killed outright
    (SIGKILL, a lost node) the HAProxy lives on, still holding the HTTP port and its stats
    (8404) and exporter (9101) ports, and the next endpoint cannot start. Its parent is then
    init (or not a Ray process at all). A child of one of them (a worker HAProxy forks, or a
    fork not yet exec'd) is not an orphan of its own: stopping its parent stops it.

    Args:
        config_path: The HAProxy config Serve writes (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``).
    """
    import psutil

    found = []
    haproxies = serve_haproxies(config_path)
    for pid, ppid in haproxies.items():
        if ppid in haproxies:
            continue
        try:
            parent_cmd = " ".join(psutil.Process(ppid).cmdline()) if ppid > 1 else ""
        except psutil.Error:
            parent_cmd = ""
        if "ray" not in parent_cmd:
            found.append(pid)
    return sorted(found)


def reap_orphan_haproxies(config_path: str | None = None) -> list[int]:
    """Terminate :func:`orphan_haproxies` and what they forked (SIGTERM, then SIGKILL after 5 s).

    Returns:
        The PIDs of the orphans (not of their children).
    """
    import psutil

    orphans, procs = [], []
    for pid in orphan_haproxies(config_path):
        try:
            proc = psutil.Process(pid)
            # Children first: an HAProxy stopped on its own stops its workers, but a killed
            # one (or any other parent) leaves them holding the ports.
            tree = [*proc.children(recursive=True), proc]
        except psutil.Error:
            continue
        orphans.append(pid)
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        procs += tree
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return orphans


def deploy(catalog: Catalog, cfg: ServeConfig) -> str:
    """Run the application on the connected Ray cluster; returns its URL.

    Raises:
        ServeSetupError: when the cluster lacks what ``cfg.ingress`` needs.
    """
    from ray import serve

    from crashchat.serving.builder import build_application

    check_ingress(cfg)
    if cfg.ingress == "haproxy":
        reaped = reap_orphan_haproxies()
        if reaped:
            print(f"stopped HAProxy left behind by a killed Ray: pids {reaped}", file=sys.stderr)
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
    try:
        check_exposure(cfg.host, cfg.token_env)
    except ExposureError as exc:
        raise ServeSetupError(str(exc)) from None
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
    try:
        ensure_ray(address, num_cpus)
        address = ray.get_runtime_context().gcs_address
        url = deploy(catalog, cfg)
    except BaseException:
        # A failed start must not leave the Ray it started behind (a detached head outlives us).
        if owned:
            _stop_owned_ray(address if detach else None)
        raise
    state = ServeState(address, url, cfg.app_name, owned, os.getpid())
    if detach:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(asdict(state), indent=2))
        ray.shutdown()
    return state


def _stop_owned_ray(head: str | None) -> None:
    """Shut down Serve and the Ray this process started (and the detached head, if any)."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        if ray.is_initialized():
            serve.shutdown()
    ray.shutdown()
    if head:
        with contextlib.suppress(Exception):
            stop_head(head)


def serve_down(state: ServeState | None = None, state_file: Path = DEFAULT_STATE) -> ServeState:
    """Stop Serve and the Ray that ``serve up`` started.

    Raises:
        ServeSetupError: when nothing is recorded as running.
    """
    recorded = state is None
    if state is None:
        if not state_file.is_file():
            raise ServeSetupError(f"{state_file}: no detached endpoint is recorded")
        state = ServeState(**json.loads(state_file.read_text()))
    if recorded and state.started_ray and not _gcs_reachable(state.address):
        # The head is gone (a reboot, a kill): nothing to shut down, only a stale record.
        state_file.unlink(missing_ok=True)
        return state
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
    if recorded:  # a foreground endpoint never touches another endpoint's record
        state_file.unlink(missing_ok=True)
    return state


def _gcs_reachable(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def stop_foreground(state: ServeState, timeout_s: float) -> str:
    """``serve_down`` for a foreground ``serve up``, bounded by ``timeout_s``.

    A SIGTERM to the whole process group (systemd's default ``KillMode=control-group``) reaches
    Ray's own processes too; Serve's graceful shutdown would then wait out its timeouts for a
    controller that is gone (about 60 s). So the graceful path runs only while the GCS answers,
    and whatever is still up after ``timeout_s`` (or once the GCS stops answering) is killed
    when this process started that Ray (a joined cluster is left alone).

    Returns:
        ``"stopped"`` (graceful), ``"killed"`` (Ray's processes had to be killed) or
        ``"abandoned"`` (a joined cluster did not confirm in time: the app may still run there).
        Unless ``"stopped"``, the caller should leave with ``os._exit``: Ray's exit hooks may
        wait on the dead cluster too.
    """
    import threading

    if _gcs_reachable(state.address):
        worker = threading.Thread(target=serve_down, args=(state,), daemon=True)
        worker.start()
        deadline = time.monotonic() + timeout_s
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(0.5)
            if worker.is_alive() and not _gcs_reachable(state.address):
                break
        if not worker.is_alive():
            return "stopped"
    if not state.started_ray:  # never kill a cluster we only joined
        return "abandoned"
    stop_head(state.address)
    return "killed"


def live_endpoint(state_file: Path) -> ServeState | None:
    """The detached endpoint recorded in ``state_file`` when its Ray still answers, else None."""
    if not state_file.is_file():
        return None
    try:
        state = ServeState(**json.loads(state_file.read_text()))
    except (ValueError, TypeError):
        return None
    return state if _gcs_reachable(state.address) else None


def wait_forever(stop: Any) -> None:
    """Sleep until ``stop()`` is true (set by a signal handler)."""
    while not stop():
        time.sleep(0.2)
