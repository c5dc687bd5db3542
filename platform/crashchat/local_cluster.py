"""Standalone Ray processes on this machine: a head, or a whole multi-node cluster.

``ray start`` runs each node as its own process group; several nodes on one machine stand in for
a cluster (a CPU-decode node, a "GPU" node with a custom resource). They are stopped by the GCS
port on their command lines, so other Ray clusters on the machine are left alone (``ray stop``
would stop them all). Token authentication is on, as Ray does for local clusters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crashchat.config import LocalClusterConfig, NodeSpec

DEFAULT_CLUSTER_STATE = Path("runs/cluster/cluster-state.json")


class ClusterError(RuntimeError):
    """A Ray process failed to start; the message carries its output."""


@dataclass
class ClusterState:
    """What ``start_local_cluster`` started."""

    address: str
    dashboard_url: str
    nodes: list[str] = field(default_factory=list)


_HANDED_OUT: set[int] = set()


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port nothing listens on right now, never one this process handed out before.

    The port is free, not reserved: without the memory a second call can return the same port
    before the first is bound (two agents of one node once got the same port).
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT and port not in (exclude or set()):
            _HANDED_OUT.add(port)
            return port


def ray_bin() -> str:
    """The ``ray`` CLI of this interpreter's environment."""
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def enable_token_auth() -> None:
    """Token authentication for clusters this process starts or joins.

    Must run before ``ray`` is imported: Ray reads the mode once.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def _node_args(node: NodeSpec, taken: set[int]) -> list[str]:
    # Several nodes share this machine: each agent gets its own ports (the defaults collide).
    args = [
        f"--dashboard-agent-listen-port={free_port(taken)}",
        f"--dashboard-agent-grpc-port={free_port(taken)}",
        f"--runtime-env-agent-port={free_port(taken)}",
        f"--metrics-export-port={free_port(taken)}",
        f"--num-cpus={node.num_cpus}",
        f"--num-gpus={node.num_gpus}",
        f"--object-store-memory={node.object_store_mb * 2**20}",
        "--disable-usage-stats",
    ]
    if node.resources:
        args.append(f"--resources={json.dumps(node.resources)}")
    if node.labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    return args


def _run_ray_start(args: list[str]) -> None:
    enable_token_auth()
    env = os.environ.copy()
    # Jobs run `python ...`: on these nodes that must be this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [ray_bin(), "start", *args], capture_output=True, text=True, timeout=180, env=env
    )
    if done.returncode != 0:
        raise ClusterError(f"ray start {' '.join(args)} failed: {done.stderr.strip()[-1500:]}")


def start_head(
    num_cpus: int | None = None,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = 8265,
    node: NodeSpec | None = None,
) -> str:
    """Start a standalone Ray head; returns its GCS address (``host:port``)."""
    port = free_port({dashboard_port})
    args = ["--head", f"--port={port}"]
    if dashboard:
        args += [
            "--include-dashboard=true",
            f"--dashboard-host={dashboard_host}",
            f"--dashboard-port={dashboard_port}",
        ]
    else:
        args.append("--include-dashboard=false")
    if node is not None:
        args += _node_args(node, {dashboard_port})
    else:
        args.append("--disable-usage-stats")
        if num_cpus:
            args.append(f"--num-cpus={num_cpus}")
    _run_ray_start(args)
    return f"{_node_ip()}:{port}"


def _node_ip() -> str:
    """The address Ray advertises for this machine (it rewrites 127.0.0.1 to it)."""
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process this user can see."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # The command name in stat is in parentheses and may hold spaces: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(proc.name)] = (ppid, cmd)
    return out


def cluster_processes(address: str) -> dict[int, str]:
    """pid -> command line of the Ray processes of the local cluster at ``address``.

    The GCS, raylets and workers name the GCS port on their command lines; the agents a raylet
    starts rename themselves (``ray::DashboardAgent``), so descendants of matches count too.
    Workers' command lines are Ray's process titles (``ray::ServeReplica:app:deployment``,
    ``ray::RayTrainWorker``), which tell one cluster's actors from another's of the same name.
    """
    port = re.escape(address.rsplit(":", 1)[-1])
    mark = re.compile(rf"(:|--gcs_server_port=|--port=){port}(?!\d)")
    procs = _processes()
    found = {pid for pid, (_, cmd) in procs.items() if "ray" in cmd and mark.search(cmd)}
    found.discard(os.getpid())
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        kids.discard(os.getpid())
        grew = bool(kids)
        found |= kids
    return {pid: procs[pid][1] for pid in sorted(found)}


def head_processes(address: str) -> list[int]:
    """PIDs of the Ray processes of the local cluster at ``address`` (:func:`cluster_processes`)."""
    return list(cluster_processes(address))


def serve_replicas(app: str, address: str | None = None) -> dict[str, set[int]]:
    """PIDs of the live Serve replicas of ``app`` by deployment, told by Ray's process titles
    (``ray::ServeReplica:<app>:<deployment>``): of the local cluster at ``address``, or of every
    cluster on the machine when it is None."""
    if address:
        procs = cluster_processes(address)
    else:
        procs = {pid: cmd for pid, (_, cmd) in _processes().items()}
    title = f"ServeReplica:{app}:"
    out: dict[str, set[int]] = {}
    for pid, cmd in procs.items():
        if title in cmd:  # a zombie's command line is empty
            out.setdefault(cmd.split(title, 1)[1].split()[0].split(".")[0], set()).add(pid)
    return out


def stop_head(address: str, timeout_s: float = 3.0) -> None:
    """Terminate the local Ray cluster at ``address`` (SIGTERM, then SIGKILL).

    Also forgets it as this machine's current cluster, as ``ray stop`` does, or a later
    ``ray.init()`` would try to join the dead head.

    Args:
        address: The cluster's GCS address.
        timeout_s: How long SIGTERM is given before SIGKILL. Callers shut Serve and their
            drivers down first; what is left are Ray's own daemons. While the GCS answers
            them they exit on SIGTERM in about 0.1 s (a raylet whose GCS was stopped with it
            took over 4 s). The GCS does not exit on SIGTERM here (measured: still up after
            12 s), and the autoscaler monitor's SIGTERM handler reports "the autoscaler
            failed" to every driver, so both get SIGKILL once the others are gone.
    """
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if current.read_text().strip() == address:
            current.unlink()
    _signal_and_wait(address, signal.SIGTERM, timeout_s, spare=_SIGKILL_ONLY)
    _signal_and_wait(address, signal.SIGKILL, 10.0)


# The head's processes stop_head does not SIGTERM, told by their command lines.
_SIGKILL_ONLY = ("ray/gcs/gcs_server", "autoscaler/_private/monitor.py")


def _signal_and_wait(address: str, sig: int, timeout_s: float, spare: tuple[str, ...] = ()) -> None:
    """Send ``sig`` to the cluster's processes (but ``spare``) until they are gone or
    ``timeout_s`` passes; processes that appear meanwhile (a worker the live GCS had started)
    get it too."""
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        procs = cluster_processes(address)
        targets = [pid for pid, cmd in procs.items() if not any(s in cmd for s in spare)]
        if not targets or time.monotonic() >= deadline:
            return
        for pid in set(targets) - signalled:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
            signalled.add(pid)
        time.sleep(0.1)


def start_local_cluster(
    cfg: LocalClusterConfig, state_file: Path = DEFAULT_CLUSTER_STATE
) -> ClusterState:
    """Start the head and every worker node of ``cfg``; record them in ``state_file``.

    Raises:
        ClusterError: when a node fails to start (the nodes already started are stopped).
    """
    address = start_head(
        dashboard=True,
        dashboard_host=cfg.dashboard_host,
        dashboard_port=cfg.dashboard_port,
        node=cfg.head,
    )
    try:
        for node in cfg.workers:
            _run_ray_start([f"--address={address}", *_node_args(node, {cfg.dashboard_port})])
    except ClusterError:
        stop_head(address)
        raise
    try:
        wait_for_jobs_api(f"http://{cfg.dashboard_host}:{cfg.dashboard_port}")
    except ClusterError:
        stop_head(address)
        raise
    state = ClusterState(
        address,
        f"http://{cfg.dashboard_host}:{cfg.dashboard_port}",
        [cfg.head.name, *(n.name for n in cfg.workers)],
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(asdict(state), indent=2))
    return state


def wait_for_jobs_api(url: str, timeout_s: float = 120.0) -> None:
    """Wait until the Jobs API at ``url`` accepts requests (its agent starts after the head).

    Raises:
        ClusterError: when it is not ready within ``timeout_s``.
    """
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception as exc:  # not up yet: connection refused, 500 no agent, ...
            last = str(exc)[:300]
        time.sleep(0.3)
    raise ClusterError(f"the Jobs API at {url} was not ready in {timeout_s:.0f} s: {last}")


def stop_local_cluster(state_file: Path = DEFAULT_CLUSTER_STATE) -> ClusterState:
    """Stop the cluster recorded in ``state_file``.

    Raises:
        ClusterError: when no cluster is recorded there.
    """
    if not state_file.is_file():
        raise ClusterError(f"{state_file}: no local cluster is recorded")
    state = ClusterState(**json.loads(state_file.read_text()))
    stop_head(state.address)
    state_file.unlink(missing_ok=True)
    return state
