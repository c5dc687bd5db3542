"""Serving pieces that need no Ray: routing, request checks, config files, exposure rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest
import yaml

from crashchat.config import ConfigError, ServeConfig, load_config
from crashchat.local_cluster import head_processes
from crashchat.serving.builder import build_serve_config, write_serve_config
from crashchat.serving.catalog import (
    BASELINE,
    Catalog,
    CatalogError,
    RouteError,
    build_catalog_from_dir,
)
from crashchat.serving.requests import (
    ExposureError,
    RequestError,
    check_exposure,
    check_media_type,
    check_path,
    limited_stream,
    parse_tasks,
)
from helpers import make_checkpoints

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, synth_dir: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    prompts = json.loads((synth_dir / "prompts.json").read_text())
    root = tmp_path_factory.mktemp("served")
    return make_checkpoints(
        tiny_model_dir, root, ["crash_recognition", "perception_centric", "heterogeneous"], prompts
    )


def test_auto_routes_to_the_most_specialised_checkpoint(checkpoints: Path, synth_dir: Path) -> None:
    catalog = build_catalog_from_dir(checkpoints, prompts=synth_dir / "prompts.json")
    assert set(catalog.names) == {
        "crash_recognition",
        "perception_centric",
        "heterogeneous",
        BASELINE,
    }
    assert catalog.route("crash_recognition").name == "crash_recognition"  # monotask first
    assert catalog.route("crash_localization").name == "perception_centric"  # then the group
    assert catalog.route("causal_reasoning").name == "heterogeneous"  # then all-task
    # The baseline answers all six tasks with the prompts file's prompts.
    assert set(catalog.checkpoints[BASELINE].tasks) == set(catalog.tasks)
    assert len(catalog.tasks) == 6
    assert catalog.route("causal_reasoning", BASELINE).name == BASELINE
    with pytest.raises(RouteError, match="does not answer task 'causal_reasoning'"):
        catalog.route("causal_reasoning", "crash_recognition")
    with pytest.raises(RouteError, match=r"unknown checkpoint 'nope'.*served checkpoints"):
        catalog.route("crash_recognition", "nope")
    with pytest.raises(RouteError, match="unknown task 'bogus'; known tasks"):
        catalog.resolve_tasks(["bogus"])
    assert catalog.resolve_tasks("all") == catalog.tasks
    # The upstream file-name spelling of a task is accepted.
    assert catalog.resolve_tasks(["cause_reasoning"]) == ["causal_reasoning"]


def test_best_evaluated_checkpoint_wins_auto(checkpoints: Path, tmp_path: Path) -> None:
    best = tmp_path / "best_checkpoints.json"
    best.write_text(
        json.dumps(
            {
                "crash_recognition": {
                    "mixture": "heterogeneous",
                    "checkpoint": str(checkpoints / "heterogeneous"),
                },
                "crash_localization": {"mixture": "gone", "checkpoint": "/nowhere/gone"},
            }
        )
    )
    catalog = build_catalog_from_dir(checkpoints, best_file=best)
    assert catalog.route("crash_recognition").name == "heterogeneous"
    # A best checkpoint that is not deployed falls back to strategy order.
    assert catalog.route("crash_localization").name == "perception_centric"
    assert catalog.to_json()["auto"]["crash_recognition"] == "heterogeneous"
    again = Catalog.from_args(json.loads(json.dumps(catalog.to_args())))
    assert again.to_json() == catalog.to_json()


def test_catalog_errors_name_the_folder(tmp_path: Path, checkpoints: Path) -> None:
    with pytest.raises(CatalogError, match="no platform checkpoint"):
        build_catalog_from_dir(tmp_path)
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(checkpoints / "crash_recognition", damaged / "crash_recognition")
    (damaged / "crash_recognition" / "prompts.json").write_text("{}")
    with pytest.raises(CatalogError, match=r"prompts\.json"):
        build_catalog_from_dir(damaged)


def _versions(app: object) -> dict[str, str]:
    """Deployment name -> the code version ``serve.run`` would send, over the bound graph."""
    out: dict[str, str] = {}
    todo = [app]
    while todo:
        node = todo.pop()
        deployment = node._bound_deployment  # type: ignore[attr-defined]
        out[deployment.name] = deployment.version
        for arg in deployment.init_args:  # the router's decoder, and its models' dict
            values = arg.values() if isinstance(arg, dict) else [arg]
            todo += [v for v in values if hasattr(v, "_bound_deployment")]
    return out


def test_a_redeploy_restarts_only_the_replicas_whose_inputs_changed(
    checkpoints: Path, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """serve.run would draw a random code version and restart every replica on a redeploy."""
    import shutil

    from crashchat.serving.builder import build_application

    ckpts, base = tmp_path / "ckpts", tmp_path / "base"
    shutil.copytree(checkpoints, ckpts)
    shutil.copytree(tiny_model_dir, base)  # the baseline's own copy of the base model
    cfg = load_config(REPO / "serve/tiny.yaml", ServeConfig)

    def build(c: ServeConfig) -> dict[str, str]:
        catalog = build_catalog_from_dir(ckpts, base_model=base, prompts=synth_dir / "prompts.json")
        return _versions(build_application(catalog, c))

    first = build(cfg)
    assert len(first) == 6 and all(first.values())  # router, decoder, three models, baseline
    assert build(cfg) == first  # nothing changed: every replica stays
    # A rewritten adapter restarts its model's replicas only.
    adapter = next((ckpts / "perception_centric").rglob("*.safetensors"))
    stat = adapter.stat()
    os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = build(cfg)
    assert {d for d, v in second.items() if v != first[d]} == {"model_perception_centric"}
    # Processor settings decide how the router and decoder prepare a clip, even when the new
    # file keeps the old one's size and mtime (a copy made with shutil.copy2, cp -a).
    config = base / "processor_config.json"
    stat, text = config.stat(), config.read_text()
    resampled = text.replace('"resample": 3', '"resample": 2', 1)
    assert len(resampled) == len(text) and resampled != text
    config.write_text(resampled)
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = build(cfg)
    assert {d for d, v in third.items() if v != second[d]} == {
        "router",
        "decoder",
        "model_baseline",
    }
    # A setting every replica is built with restarts them all.
    cfg.max_new_tokens += 1
    assert not set(build(cfg).items()) & set(third.items())


def test_path_checks(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    clip = root / "a.mp4"
    clip.write_bytes(b"x")
    outside = tmp_path / "b.mp4"
    outside.write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside)
    assert check_path(str(clip), [str(root)]) == str(clip.resolve())
    cases = {
        str(root / ".." / "b.mp4"): (403, "'..'"),
        str(outside): (403, "outside the allowed roots"),
        str(root / "link.mp4"): (403, "outside the allowed roots"),  # symlinks resolved first
        str(root / "missing.mp4"): (404, "does not exist"),
    }
    for raw, (status, text) in cases.items():
        with pytest.raises(RequestError) as err:
            check_path(raw, [str(root)])
        assert err.value.status == status and text in err.value.detail, raw
    with pytest.raises(RequestError) as err:
        check_path(str(clip), [])
    assert err.value.status == 403 and "no --allowed-root" in err.value.detail
    with pytest.raises(RequestError) as err:
        check_path(None, [str(root)])
    assert err.value.status == 422 and "video_path" in err.value.detail


def test_media_types_and_tasks() -> None:
    check_media_type("video/mp4", "a.mp4")
    check_media_type("application/octet-stream", "a.mkv")
    for ctype, name in [("text/plain", "a.txt"), ("image/png", "a.png"), (None, "notes")]:
        with pytest.raises(RequestError) as err:
            check_media_type(ctype, name)
        assert err.value.status == 415 and name in err.value.detail
    assert parse_tasks(None) == "all"
    assert parse_tasks("crash_recognition, crash_localization") == [
        "crash_recognition",
        "crash_localization",
    ]
    with pytest.raises(RequestError) as err:
        parse_tasks(3)
    assert err.value.status == 422 and "tasks" in err.value.detail


def test_upload_limit_stops_reading_early() -> None:
    consumed: list[int] = []

    async def source():  # type: ignore[no-untyped-def]
        for i in range(100):
            consumed.append(i)
            yield b"x" * 1024

    async def drain(declared: str | None) -> int:
        n = 0
        async for chunk in limited_stream(source(), 10 * 1024, declared):
            n += len(chunk)
        return n

    with pytest.raises(RequestError) as err:
        asyncio.run(drain(None))
    assert err.value.status == 413
    assert len(consumed) == 11  # stopped at the first chunk over the limit, not at the end
    consumed.clear()
    with pytest.raises(RequestError) as err:
        asyncio.run(drain(str(50 * 1024)))
    assert err.value.status == 413 and consumed == []  # Content-Length refused before reading


def test_exposure_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRASHCHAT_SERVE_TOKEN", raising=False)
    check_exposure("127.0.0.1", "CRASHCHAT_SERVE_TOKEN")  # loopback: fine
    with pytest.raises(ExposureError, match="CRASHCHAT_SERVE_TOKEN"):
        check_exposure("0.0.0.0", "CRASHCHAT_SERVE_TOKEN")
    monkeypatch.setenv("CRASHCHAT_SERVE_TOKEN", "s3cret")
    check_exposure("0.0.0.0", "CRASHCHAT_SERVE_TOKEN")


def test_serve_config_validation_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("model:\n  autoscaling:\n    min_replicas: 3\n    max_replicas: 1\n")
    with pytest.raises(ConfigError, match=r"model\.autoscaling"):
        load_config(bad, ServeConfig)
    bad.write_text("mode: sideways\n")
    with pytest.raises(ConfigError, match="mode"):
        load_config(bad, ServeConfig)


def test_generated_serve_config_passes_rays_schema(checkpoints: Path, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    cfg = load_config(REPO / "serve/tiny.yaml", ServeConfig)
    catalog = build_catalog_from_dir(checkpoints)
    out = write_serve_config(
        build_serve_config(catalog, cfg, {"checkpoints": str(checkpoints)}), tmp_path / "s.yaml"
    )
    data = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "crashchat.serving.builder:build_app"
    names = {d["name"] for d in data["applications"][0]["deployments"]}
    assert names == {"router", "decoder"} | {f"model_{n}" for n in catalog.names}
    model = next(
        d for d in data["applications"][0]["deployments"] if d["name"] == "model_heterogeneous"
    )
    assert model["autoscaling_config"]["max_replicas"] == cfg.model.autoscaling.max_replicas
    assert model["max_queued_requests"] == cfg.model.max_queued_requests
    # The args rebuild the same config.
    assert ServeConfig.model_validate(app.args["config"]) == cfg


def test_head_processes_only_match_their_port() -> None:
    # No Ray cluster listens on port 1 here: nothing must match (and our own process never does).
    assert head_processes("127.0.0.1:1") == []
    assert os.getpid() not in head_processes("127.0.0.1:1")


@pytest.mark.timeout(60)
def test_orphaned_haproxy_is_found_and_stopped_but_a_living_one_is_not(tmp_path: Path) -> None:
    import subprocess
    import time

    import psutil

    from crashchat.serving.lifecycle import (
        orphan_haproxies,
        reap_orphan_haproxies,
        serve_haproxies,
    )

    cfg = str(tmp_path / "haproxy.cfg")
    fake = tmp_path / "haproxy"  # stands in for the binary: same name, same arguments
    # Its subshell is a child with the same command line, as a worker HAProxy forks (and as any
    # fork is until it execs): part of its parent, never an orphan of its own.
    fake.write_text("#!/bin/sh\n( sleep 120; : ); :\n")
    fake.chmod(0o755)
    # Started by a process that then exits: re-parented to init, as when Ray's actor is killed.
    subprocess.run(["sh", "-c", f"{fake} -db -f {cfg} >/dev/null 2>&1 &"], check=True)
    # A child of this (non-Ray) process would count as orphaned too; one of a Ray-named parent
    # stays: run it under a shell whose command line names ray.
    living = subprocess.Popen(["sh", "-c", f"{fake} -db -f {cfg}; : ray"])
    try:
        # Both fakes and their subshells up: the orphan, and the living one (its shell's child).
        # (A subshell's fork of sleep shares its command line until it execs: wait for exactly 4.)
        deadline, found = time.monotonic() + 10, {}
        while time.monotonic() < deadline and len(found) != 4:
            time.sleep(0.1)
            found = serve_haproxies(cfg)
        assert len(found) == 4, found
        orphans = orphan_haproxies(cfg)
        assert len(orphans) == 1
        assert psutil.Process(orphans[0]).ppid() != living.pid
        assert orphan_haproxies(str(tmp_path / "other.cfg")) == []  # another config: not ours
        assert reap_orphan_haproxies(cfg) == orphans
        assert not psutil.pid_exists(orphans[0]) or psutil.Process(orphans[0]).status() == "zombie"
        assert orphan_haproxies(cfg) == []
        assert living.poll() is None and any(
            "haproxy" in " ".join(c.cmdline()) for c in psutil.Process(living.pid).children()
        )
    finally:
        # The living one's tree, and whatever a failed reap left.
        procs = psutil.Process(living.pid).children(recursive=True)
        for pid in serve_haproxies(cfg):
            with contextlib.suppress(psutil.Error):
                procs += [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        living.kill()
        living.wait()


def test_a_stale_endpoint_record_is_cleared_and_blocks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    # A stale record touches neither Ray nor this process's auth mode (a later in-process Ray
    # would otherwise start a GCS wanting tokens its client does not send).
    monkeypatch.setenv("RAY_AUTH_MODE", "unset by teardown")  # restored even if this fails
    monkeypatch.delenv("RAY_AUTH_MODE")

    from crashchat.local_cluster import free_port
    from crashchat.serving.lifecycle import ServeSetupError, ServeState, live_endpoint, serve_down

    record = tmp_path / "serve-state.json"
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the recorded head is gone
    state = ServeState(
        address=dead, url="http://127.0.0.1:1/", app_name="crashchat", started_ray=True, pid=1
    )
    record.write_text(json.dumps(state.__dict__))
    assert live_endpoint(record) is None  # a stale record does not block a new --detach
    # A stale record is cleared by `serve down` without trying to reach the dead head.
    assert serve_down(state_file=record).address == dead
    assert not record.exists() and "RAY_AUTH_MODE" not in os.environ
    with pytest.raises(ServeSetupError, match="no detached endpoint"):
        serve_down(state_file=record)


def test_a_dashboard_url_in_ray_address_is_not_a_cluster_to_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crashchat.ray_utils import JOB_CONFIG_ENV, resolve_address

    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what `ray job submit` reads
    assert resolve_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(None) == "auto"
    assert resolve_address("local") == "local"


def test_a_path_with_a_nul_character_is_a_422() -> None:
    from crashchat.serving.requests import RequestError, check_path

    with pytest.raises(RequestError) as err:
        check_path("a\x00b.mp4", ["/tmp"])
    assert err.value.status == 422 and "NUL" in err.value.detail


def test_router_refuses_past_max_in_flight_at_once_and_counts_back_down() -> None:
    """limits.max_in_flight: the overload refusal happens before any work (the chaos benchmark's
    overload phase found refusals waiting seconds for the deployments' queues)."""
    from types import SimpleNamespace

    from crashchat.serving.app import Router
    from crashchat.serving.requests import RequestError

    cfg = ServeConfig()
    cfg.limits.max_in_flight = 2
    router = SimpleNamespace(cfg=cfg, in_flight=0)
    with Router._admitted(router), Router._admitted(router):  # type: ignore[arg-type]
        assert router.in_flight == 2
        with pytest.raises(RequestError) as refused, Router._admitted(router):  # type: ignore[arg-type]
            pass
        assert refused.value.status == 503 and "2 requests in flight" in refused.value.detail
        assert refused.value.headers == {"Retry-After": str(cfg.limits.retry_after_s)}
    assert router.in_flight == 0
    with pytest.raises(ValueError), Router._admitted(router):  # type: ignore[arg-type]
        raise ValueError("the work failed")
    assert router.in_flight == 0  # a failed request leaves the count
    router.cfg = ServeConfig()  # no bound by default
    with Router._admitted(router), Router._admitted(router), Router._admitted(router):  # type: ignore[arg-type]
        assert router.in_flight == 3


_NICENESS_PROBE = """
import os, threading
from crashchat.serving.cpu_priority import set_niceness
ready, stop = threading.Event(), threading.Event()
def wait():
    ready.set()
    stop.wait()
before = threading.Thread(target=wait, daemon=True)  # started before: set by the call
before.start()
ready.wait()
assert set_niceness(7) is None
after = threading.Thread(target=lambda: print(os.getpriority(os.PRIO_PROCESS, 0)))
after.start()  # started after: inherits
after.join()
# The threads alive now (a joined thread can linger in /proc for a moment; its entry may vanish).
alive = [threading.main_thread().native_id, before.native_id]
print(sorted({os.getpriority(os.PRIO_PROCESS, tid) for tid in alive}))
stop.set()
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_niceness_reaches_every_thread_of_the_replica() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NICENESS_PROBE], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["7", "[7]"]


def test_niceness_that_cannot_be_set_is_a_reason_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crashchat.serving import cpu_priority

    def refuse(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cpu_priority.os, "setpriority", refuse)
    reason = cpu_priority.set_niceness(-5)
    assert reason == "could not set niceness -5: Permission denied"
    with pytest.raises(ValueError, match="niceness"):
        ServeConfig.model_validate({"model": {"niceness": 25}})


def test_scratch_of_a_dead_owner_is_swept_and_a_living_ones_is_not(tmp_path: Path) -> None:
    import subprocess

    from crashchat.scratch import _namespace, make_scratch, sweep_scratch

    dead = subprocess.Popen(["true"])  # a PID that has exited
    dead.wait()
    ns = _namespace()
    gone = tmp_path / f"crashchat-best-{ns}-{dead.pid}-abc"
    (gone / "adapter").mkdir(parents=True)
    mine = tmp_path / f"crashchat-best-{ns}-{os.getpid()}-def"
    mine.mkdir()
    elsewhere = tmp_path / f"crashchat-best-{ns}0-{dead.pid}-ghi"  # another namespace's
    elsewhere.mkdir()
    booted = tmp_path / f"crashchat-best-0{ns}-{dead.pid}-mno"  # another machine's (boot)
    booted.mkdir()
    other_kind = tmp_path / f"crashchat-uploads-{ns}-{dead.pid}-jkl"
    other_kind.mkdir()
    assert sweep_scratch("best", tmp_path) == [gone]
    assert not gone.exists() and mine.exists() and elsewhere.exists() and other_kind.exists()
    assert booted.exists()
    scratch = make_scratch("best")
    assert Path(scratch.name).name.startswith(f"crashchat-best-{ns}-{os.getpid()}-")
    scratch.cleanup()
    assert not Path(scratch.name).exists()
