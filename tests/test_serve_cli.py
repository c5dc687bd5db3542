"""``crashchat serve up`` as users run it: foreground until a signal, or detached until ``down``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
from typer.testing import CliRunner, Result

from crashchat.local_cluster import free_port, head_processes
from crashchat.serving.lifecycle import serve_haproxies
from helpers import make_checkpoints

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "crashchat.cli"]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, synth_dir: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    prompts = json.loads((synth_dir / "prompts.json").read_text())
    return make_checkpoints(
        tiny_model_dir, tmp_path_factory.mktemp("cli_ckpts"), ["crash_recognition"], prompts
    )


def _up_args(checkpoints: Path, synth_dir: Path, port: int) -> list[str]:
    return [
        *CLI,
        "serve",
        "up",
        "--checkpoints",
        str(checkpoints),
        "--config",
        str(REPO / "serve/tiny.yaml"),
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--allowed-root",
        str(synth_dir),
    ]


def _analyze(url: str, clip: Path) -> dict:  # type: ignore[type-arg]
    resp = requests.post(
        url + "v1/analyze",
        json={"video_path": str(clip), "tasks": ["crash_recognition"]},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listener(port: int) -> psutil.Process:
    """The process listening on ``port``; asserts it listens on loopback only."""
    found = [
        c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"
    ]
    assert found and all(c.laddr.ip == "127.0.0.1" for c in found), found
    assert found[0].pid is not None
    return psutil.Process(found[0].pid)


# SIGTERM to the process alone (kill PID), or to its whole process group, Ray's processes
# included (systemd's KillMode=control-group): both end within a bound, leaving nothing behind.
@pytest.mark.parametrize(("ingress", "target"), [("proxy", "process"), ("haproxy", "group")])
def test_foreground_serve_stops_cleanly_on_sigterm(
    checkpoints: Path, synth_dir: Path, ingress: str, target: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*_up_args(checkpoints, synth_dir, port), "--set", f"ingress={ingress}",
         "--set", "shutdown_timeout_s=10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as under systemd
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once every deployment runs
        info = json.loads(line)
        assert info["url"] == f"http://127.0.0.1:{port}/"
        assert info["checkpoints"] == ["crash_recognition", "baseline"]
        clip = sorted((synth_dir / "videos").glob("*.mp4"))[0]
        assert "answer" in _analyze(info["url"], clip)["results"]["crash_recognition"]
        assert info["ingress"] == ingress
        # Who answers on the port: Ray's proxy actor, or the HAProxy it starts in its place.
        assert ("haproxy" in _listener(port).name()) == (ingress == "haproxy")
        family = psutil.Process(proc.pid).children(recursive=True)
        ray_pids = set(head_processes(info["ray_address"]))
        assert ray_pids, "the Ray started by serve up was not found"
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        # Before the bound, a group SIGTERM took about 60 s (Serve waiting on a dead controller).
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
        or head_processes(info["ray_address"])
    ):
        time.sleep(0.5)
    left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [] and head_processes(info["ray_address"]) == []
    assert not _port_open(port)


# Detached with HAProxy only: the detached mechanics are the same for both ingresses, and the
# foreground test covers the proxy.
@pytest.mark.parametrize("ingress", ["haproxy"])
def test_detached_serve_outlives_its_command_until_down(
    checkpoints: Path, synth_dir: Path, tmp_path: Path, ingress: str
) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    spools = lambda: set(Path(tempfile.gettempdir()).glob("crashchat-uploads-*"))  # noqa: E731
    before = spools()
    up = subprocess.run(
        [
            *_up_args(checkpoints, synth_dir, port),
            "--detach",
            "--state-file",
            str(state),
            "--set",
            f"ingress={ingress}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    address = None
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        info = json.loads(up.stdout.strip().splitlines()[-1])
        address = info["ray_address"]
        assert info["detached"] and json.loads(state.read_text())["started_ray"]
        clip = sorted((synth_dir / "videos").glob("*.mp4"))[1]
        assert "answer" in _analyze(info["url"], clip)["results"]["crash_recognition"]
        # The head started by the detached command (not this process) has the ingress it asked.
        assert ("haproxy" in _listener(port).name()) == (ingress == "haproxy")
        down = subprocess.run(
            [*CLI, "serve", "down", "--state-file", str(state)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert down.returncode == 0, down.stderr[-2000:]
        assert not state.exists()
        assert head_processes(address) == []
        assert not _port_open(port)
        assert serve_haproxies() == {}  # Serve's own; a unit test runs a fake haproxy
        assert spools() - before == set(), "the decoder's upload folder outlived it"
        # Forgotten as the machine's current cluster, so a later ray.init() starts afresh.
        current = Path("/tmp/ray/ray_current_cluster")
        assert not current.exists() or current.read_text().strip() != address
        again = subprocess.run(
            [*CLI, "serve", "down", "--state-file", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 2 and "no detached endpoint" in again.stderr
    finally:
        if address and head_processes(address):
            from crashchat.local_cluster import stop_head

            stop_head(address)


def _serve_config(out: Path, checkpoints: Path, *extra: str) -> Result:
    from crashchat.cli import app

    return CliRunner().invoke(
        app, ["serve", "config", "--out", str(out), "--checkpoints", str(checkpoints), *extra]
    )


def test_serve_config_command_writes_a_deployable_file(checkpoints: Path, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve" / "tiny.yaml"
    config = ["--config", str(REPO / "serve/tiny.yaml"), "--max-upload-mb", "12"]
    done = _serve_config(out, checkpoints, *config)
    assert done.exit_code == 0, done.stderr[-2000:]
    import yaml

    data = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(data)
    args = data["applications"][0]["args"]
    assert args["checkpoints"] == str(checkpoints.resolve())
    assert args["config"]["limits"]["max_upload_mb"] == 12
    assert "cluster_env" not in json.loads(done.stdout.strip().splitlines()[-1])
    # HAProxy ingress is the cluster's setting, not the file's: the command says what to set.
    again = _serve_config(out, checkpoints, "--set", "ingress=haproxy")
    assert again.exit_code == 0, again.stderr[-2000:]
    info = json.loads(again.stdout.strip().splitlines()[-1])
    assert info["cluster_env"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
