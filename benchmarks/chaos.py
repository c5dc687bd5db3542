"""Chaos benchmark: bulk inference and preprocessing keep every item while processes die.

Run: ``.venv/bin/python benchmarks/chaos.py [--quick] [--ingress proxy,haproxy]``

Loopback only, bounded in items and time; on this machine's tiny model:

  1. bulk inference under kills: ``crashchat serve up --detach`` with two checkpoints, one
     ``/v1/batch`` (at least 200 items in the full run: synthetic clips, the three real clips
     when ``../shared`` has them, and a few bad items) sent by the client ``crashchat serve
     batch`` uses, while a chaos loop SIGKILLs a random Serve replica (a model, the decoder, the
     router) every 3 s for two minutes (15 s in quick mode); once per ingress (Ray Serve's
     proxy, its HAProxy). Every item must end with exactly one final line; items hit
     by a kill are resent (they are idempotent).
  2. preprocessing under node loss: a multi-node Ray on this machine (``ray.cluster_utils``),
     ``run_preprocess`` over at least 200 clips pinned to the ``cpu_decode`` node, whose raylet
     is killed once mid-job and comes back: every good clip written once, none failed.
  3. overload: three times the measured capacity (requests/s of 4 clients), offered open-loop
     (a request every 1/rate s whatever the answers) for a while: the excess is refused with 503
     and ``Retry-After`` quickly, admitted requests succeed, replica memory stays flat, and the
     endpoint is back to its normal latency soon after the load stops.

The overload phase runs on the last ingress's endpoint once its bulk phase is done (one ``serve
up`` per ingress; the router admitting 8 analyze requests at once), alone. Quick mode runs the
node-loss phase (its own Ray cluster, no timing checks) beside the endpoint's start-up and bulk
phase; the full run keeps every phase to itself.

Last line: ``chaos_items=N lost=0 duplicates=0 success_rate=S retried=R
overload_refusal_p99_ms=P rss_growth_pct=G``. ``--quick`` (run by ``make test`` and ``make
chaos``, with the checks of ``tests/test_chaos.py``; about 2 minutes here) runs one ingress
(HAProxy), 20 items, 15 s of kills, 12 clips and 8 s of overload. ``--client threads`` offers
the overload from 64 threads of ``requests`` instead of one aiohttp event loop (the same figures
here: the client is not what the refusals wait for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_CLIPS = REPO.parent / "shared" / "data" / "real-clips"
CLI = [sys.executable, "-m", "crashchat.cli"]
APP = "crashchat"
TASKS = "crash_recognition,crash_localization"
CHECKPOINTS = {"crash_recognition": "monotask", "perception_centric": "homogeneous"}
VICTIMS = ("model_crash_recognition", "model_perception_centric", "decoder", "router")
# One endpoint per ingress serves the bulk phase and then the overload phase. The router's
# admission bound refuses past 8 analyze requests at once, before any work, so under overload
# the models' and decoder's queues never fill (a batch's items are bounded by its own
# `batch_concurrency`, not by this). Autoscaling stays as configured (up to 2 replicas): with
# one replica per deployment, a replica killed every 3 s for two minutes left none of the
# full run's 200 items answered through Ray Serve's proxy (each stream broke on a router kill
# before an item got through a restarted decoder and model, until the client's resends ran out).
ENDPOINT = ["limits.request_timeout_s=30", "limits.max_in_flight=8"]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def build(work: Path, clips: int) -> tuple[Path, Path, Path]:
    """Synthetic clips, the tiny model and two checkpoints with random adapters."""
    from crashchat.config import SynthConfig, TinyModelConfig
    from crashchat.data.synth import generate_dataset
    from crashchat.data.synth.labels import all_label_text
    from crashchat.data.tasks import get_mixture
    from crashchat.models.tiny import build_random_checkpoint, build_tiny_model

    data = work / "data"
    generate_dataset(data, SynthConfig(videos=clips, seed=11, min_duration=2.5, max_duration=3.5))
    model = build_tiny_model(work / "model", TinyModelConfig(), all_label_text())
    prompts = json.loads((data / "prompts.json").read_text())
    for seed, (name, strategy) in enumerate(CHECKPOINTS.items(), 1):
        tasks = list(get_mixture(name).tasks)
        meta = {"mixture": name, "strategy": strategy, "tasks": tasks}
        build_random_checkpoint(
            model, work / "ckpts" / name, meta, {t: prompts[t] for t in tasks}, seed
        )
    return data, model, work / "ckpts"


# -- processes ----------------------------------------------------------------------------------
def replicas() -> dict[str, set[int]]:
    """PIDs of the live Serve replicas by deployment (of any cluster on this machine)."""
    from crashchat.local_cluster import serve_replicas

    return serve_replicas(APP)


def replica_rss() -> dict[str, int]:
    """Resident memory of every replica, by deployment and pid."""
    import psutil

    out = {}
    for name, pids in replicas().items():
        for pid in pids:
            try:
                out[f"{name}:{pid}"] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
    return out


class Chaos(threading.Thread):
    """Kill a random replica of ``VICTIMS`` every ``every_s`` for ``duration_s`` (or until
    stopped); then Serve gets to recover and the batch to finish."""

    def __init__(self, every_s: float, duration_s: float, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.rng = every_s, random.Random(seed)
        self.deadline = time.monotonic() + duration_s
        self.stop = threading.Event()
        self.kills: list[str] = []
        self.seen: dict[str, set[int]] = {}

    def run(self) -> None:
        while not self.stop.wait(self.every_s) and time.monotonic() < self.deadline:
            live = replicas()
            for name, pids in live.items():
                self.seen.setdefault(name, set()).update(pids)
            targets = [(n, p) for n in VICTIMS for p in sorted(live.get(n, ()))]
            if not targets:
                continue
            name, pid = self.rng.choice(targets)
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills.append(name)
            except ProcessLookupError:
                pass

    def restarts(self) -> dict[str, int]:
        """Replica processes that replaced a killed one, by deployment."""
        for name, pids in replicas().items():
            self.seen.setdefault(name, set()).update(pids)
        return {n: max(0, len(p) - 1) for n, p in self.seen.items()}


def serve_up(
    ckpts: Path, roots: list[Path], ingress: str, state: Path, overrides: list[str]
) -> str:
    from crashchat.local_cluster import free_port

    port = free_port()
    args = [*CLI, "serve", "up", "--checkpoints", str(ckpts), "--config",
            str(REPO / "serve/tiny.yaml"), "--port", str(port), "--num-cpus", "2",
            "--detach", "--state-file", str(state), "--set", f"ingress={ingress}"]  # fmt: skip
    for root in roots:
        args += ["--allowed-root", str(root)]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"serve up failed: {done.stderr[-2000:]}")
    return f"http://127.0.0.1:{port}/"


def serve_down(state: Path) -> None:
    subprocess.run(
        [*CLI, "serve", "down", "--state-file", str(state)], capture_output=True, timeout=300
    )


# -- 1. bulk inference under kills --------------------------------------------------------------
def batch_items(data: Path, n: int, bad_dir: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """``n`` items cycling over the clips (and the real ones), plus three bad ones."""
    clips = sorted((data / "videos").glob("*.mp4"))
    if REAL_CLIPS.exists():
        clips += sorted(REAL_CLIPS.glob("*.mp4"))
    items = [
        {"id": f"item-{i:04d}", "video_path": str(clips[i % len(clips)]), "tasks": TASKS}
        for i in range(n)
    ]
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "garbage.mp4").write_bytes(os.urandom(4000))
    bad = [
        {"id": "bad-missing", "video_path": str(bad_dir / "missing.mp4"), "tasks": TASKS},
        {"id": "bad-garbage", "video_path": str(bad_dir / "garbage.mp4"), "tasks": TASKS},
        {"id": "bad-outside", "video_path": "/etc/hostname", "tasks": TASKS},
    ]
    return items + bad, {b["id"] for b in bad}


def bulk_under_kills(
    url: str, ingress: str, items: list[dict[str, Any]], bad: set[str], every_s: float,
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    from crashchat.serving.client import send_batch

    # Memory is measured from warm replicas: a model replica's first requests allocate its
    # working buffers (about 100 MB for the tiny model), which is not growth over a run.
    list(send_batch(url, items[:2], timeout_s=300, retries=2))
    rss_start = replica_rss()
    chaos = Chaos(every_s, seconds)
    started = time.monotonic()
    lines, arrivals = [], []
    chaos.start()
    try:
        # Bounded: a stall (no line for timeout_s) or a break with nothing answered is resent
        # at most `retries` times in a row; a break after progress is resent freely.
        for line in send_batch(url, items, timeout_s=seconds + 120, retries=8, backoff_s=2.0):
            if "summary" in line:
                continue
            lines.append(line)
            arrivals.append(time.monotonic() - started)
    finally:
        chaos.stop.set()
        chaos.join()
    time.sleep(3)
    rss_end = replica_rss()
    restarts = chaos.restarts()
    ids = Counter(str(line["id"]) for line in lines)
    good = [line for line in lines if str(line["id"]) not in bad]
    ok = [line for line in good if "result" in line]
    causes = Counter(
        f"{line['error']['status']}: {str(line['error']['detail'])[:60]}"
        for line in good if "error" in line
    )  # fmt: skip
    growth = [
        (rss_end[k] - v) / v * 100 for k, v in rss_start.items() if k in rss_end and v
    ]  # replicas that lived through the run
    return {
        "ingress": ingress,
        "items": len(items),
        "answered": len(ids),
        "lost": len(items) - len(ids),
        "duplicates": sum(c - 1 for c in ids.values() if c > 1),
        "succeeded": len(ok),
        "good_items": len(items) - len(bad),
        "bad_items_refused": sum(1 for line in lines if str(line["id"]) in bad and "error" in line),
        "failed_by_cause": dict(causes),
        "retried": sum(1 for line in lines if line.get("retries")),
        "kills": Counter(chaos.kills),
        "replica_restarts": restarts,
        "p50_s": round(_pct(arrivals, 0.5), 2),
        "p99_s": round(_pct(arrivals, 0.99), 2),
        "rss_start_mb": {k: round(v / 2**20) for k, v in rss_start.items()},
        "rss_end_mb": {k: round(v / 2**20) for k, v in rss_end.items()},
        "rss_growth_pct_max": round(max(growth), 1) if growth else 0.0,
    }


# -- 2. preprocessing under node loss -----------------------------------------------------------
def preprocess_under_node_loss(work: Path, clips: int) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from crashchat.config import PreprocessConfig, SynthConfig
    from crashchat.data.synth import generate_dataset
    from crashchat.local_cluster import ray_bin, stop_head
    from crashchat.video.clip_processing import file_sha256
    from crashchat.video.pipeline import PreprocessInputs, run_preprocess
    from crashchat.video.samples import read_records_table, stored_clip_keys

    data = work / "node-loss-data"
    generate_dataset(data, SynthConfig(videos=clips, seed=5, min_duration=2.5, max_duration=3.0))
    model = work / "model"
    # The GCS marks a dead raylet after `failure_threshold` failed health checks; Ray's default
    # 3 s period spends about 15 s of the phase noticing. A check of a live raylet fails only
    # when its RPC is refused or times out (10 s), so a 1 s period does not flap on busy cores.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": health}
    )
    decode = cluster.add_node(num_cpus=1, resources={"cpu_decode": 4})
    killed = threading.Event()

    def progress(done: int, _failed: int, total: int) -> None:
        if not killed.is_set() and done >= total // 3:
            killed.set()
            threading.Thread(target=lose_node, daemon=True).start()

    def lose_node() -> None:
        cluster.remove_node(decode, allow_graceful=False)  # SIGKILL of the raylet
        time.sleep(3)
        # The node comes back as `ray start` brings one (cluster_utils can only add nodes from
        # the main thread, which is running the job).
        subprocess.run(
            [ray_bin(), "start", f"--address={cluster.address}", "--num-cpus=1",
             '--resources={"cpu_decode": 4}'],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    address = cluster.address  # None once the cluster is shut down
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        cfg = PreprocessConfig(
            fps=2, max_frames=8, frame_size=56, workers=1, clips_per_batch=2, decode_retries=3
        )
        out = work / "node-loss-out"
        inputs = PreprocessInputs([data], data, model, out)
        result = run_preprocess(cfg, inputs, address=None, progress=progress)
    finally:
        ray.shutdown()
        # While the GCS lives, every daemon (the node `ray start` brought back included) exits
        # on SIGTERM at once; a raylet whose GCS is gone takes seconds.
        stop_head(address)
        cluster.shutdown()
    records = read_records_table(out)
    ids = Counter(records["record_id"].to_pylist())
    distinct = {file_sha256(p) for p in (data / "videos").glob("*.mp4")}
    return {
        "clips": clips,
        "node_killed": killed.is_set(),
        "stored_clips": len(stored_clip_keys(out)),
        "distinct_clip_contents": len(distinct),
        "records": records.num_rows,
        "duplicated_records": sum(c - 1 for c in ids.values() if c > 1),
        "failed": len(result.failures),
        "failures": result.failures[:3],
    }


# -- 3. overload --------------------------------------------------------------------------------
def _post(session: Any, url: str, body: dict[str, Any]) -> tuple[int, float, str | None]:
    """(status or -1, milliseconds, Retry-After) of one request."""
    import requests

    t = time.perf_counter()
    try:
        resp = session.post(url, json=body, timeout=60)
        code, retry = resp.status_code, resp.headers.get("Retry-After")
    except requests.RequestException:
        code, retry = -1, None
    return code, (time.perf_counter() - t) * 1000, retry


def _fire(
    url: str, body: dict[str, Any], clients: int, seconds: float
) -> list[tuple[int, float, str | None]]:
    import requests

    out: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            got = _post(session, url, body)
            with lock:
                out.append(got)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def _offer(
    url: str, body: dict[str, Any], rate: float, seconds: float
) -> list[tuple[int, float, str | None]]:
    """Open-loop load: a request every 1/``rate`` s for ``seconds``, whatever the answers are.

    A closed loop of clients that resend the moment they are refused (ignoring ``Retry-After``)
    offers as much as the router can refuse, not a multiple of the capacity.
    """
    import requests

    local = threading.local()
    out: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def send() -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        got = _post(local.session, url, body)
        with lock:
            out.append(got)

    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            pool.submit(send)
    return out


def _offer_async(
    url: str, body: dict[str, Any], rate: float, seconds: float
) -> list[tuple[int, float, str | None]]:
    """:func:`_offer` from one event loop (aiohttp, Ray's own HTTP client library).

    64 threads of ``requests`` contend for the client's GIL on a 2-core machine that also runs
    the endpoint; one loop adds no thread switches to what it measures.
    """
    import asyncio

    import aiohttp

    async def post(session: Any) -> tuple[int, float, str | None]:
        t = time.perf_counter()
        try:
            async with session.post(url, json=body) as resp:
                await resp.read()
                code, retry = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            code, retry = -1, None
        return code, (time.perf_counter() - t) * 1000, retry

    async def run() -> list[tuple[int, float, str | None]]:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            start = time.monotonic()
            tasks = []
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(post(session)))
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def overload(
    url: str,
    clip: Path,
    seconds: float,
    client: str = "async",
    windows_s: tuple[float, float] = (8, 10),
) -> dict[str, Any]:
    """Three times the capacity for ``seconds``; ``windows_s``: how long the normal latency (one
    client) and the capacity (4 clients) are measured first."""
    body = {"video_path": str(clip), "tasks": ["crash_recognition"]}
    baseline = _fire(url + "v1/analyze", body, 1, windows_s[0])
    normal = statistics.median(ms for c, ms, _ in baseline if c == 200)
    capacity_clients = 4
    measured = _fire(url + "v1/analyze", body, capacity_clients, windows_s[1])
    rps = sum(1 for c, _, _ in measured if c == 200) / windows_s[1]
    rss_start = replica_rss()
    # Autoscaling is on (as users run it): the replicas during the load are part of the figures.
    before = {name: len(pids) for name, pids in replicas().items()}
    offer = _offer_async if client == "async" else _offer
    load = offer(url + "v1/analyze", body, 3 * rps, seconds)
    rss_end = replica_rss()
    after = {name: len(pids) for name, pids in replicas().items()}
    stopped = time.monotonic()
    recovered_s = None
    while time.monotonic() - stopped < 60:
        window = _fire(url + "v1/analyze", body, 1, 3)
        ok = [ms for c, ms, _ in window if c == 200]
        if ok and statistics.median(ok) <= normal * 1.5 + 20:
            recovered_s = round(time.monotonic() - stopped, 1)
            break
    refused = [(ms, r) for c, ms, r in load if c == 503]
    admitted = [c for c, _, _ in load if c != 503]
    growth = [(rss_end[k] - v) / v * 100 for k, v in rss_start.items() if k in rss_end and v]
    return {
        "client": client,
        "capacity_rps": round(rps, 2),
        "offered_rps": round(3 * rps, 2),
        "requests": len(load),
        "refused_503": len(refused),
        "refusals_with_retry_after": sum(1 for _, r in refused if r),
        "refusal_p50_ms": round(_pct([ms for ms, _ in refused], 0.5), 1),
        "refusal_p99_ms": round(_pct([ms for ms, _ in refused], 0.99), 1),
        "admitted": len(admitted),
        "admitted_ok": sum(1 for c in admitted if c == 200),
        "normal_p50_ms": round(normal, 1),
        "recovered_after_s": recovered_s,
        "rss_growth_pct_max": round(max(growth), 1) if growth else 0.0,
        "replicas_at_load_start": before,
        "replicas_at_load_end": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the bounded version make test runs")
    parser.add_argument(
        "--ingress", default=None, help="comma list (default: proxy,haproxy; quick: haproxy)"
    )
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--clips", type=int, default=None, help="clips of the node-loss phase")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument(
        "--client",
        choices=("async", "threads"),
        default="async",
        help="overload's load generator: one event loop, or 64 threads of requests",
    )
    parser.add_argument(
        "--phases",
        default="bulk,node_loss,overload",
        help="comma list of the phases to run (all by default; one, to work on it)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    unknown = phases - {"bulk", "node_loss", "overload"}
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}: bulk, node_loss, overload")
    quick = args.quick
    # Quick mode's one ingress is HAProxy, whose refusals do not cross Serve's Python proxy.
    ingresses = (args.ingress or ("haproxy" if quick else "proxy,haproxy")).split(",")
    items = args.items or (20 if quick else 200)
    clips = args.clips or (12 if quick else 200)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="crashchat-chaos-") as tmp:
        work = Path(tmp)
        data, _model, ckpts = build(work, 12 if quick else 24)
        report: dict[str, Any] = {"bulk": []}
        batch, bad = batch_items(data, items, work / "bad")
        roots = [data, work / "bad"] + ([REAL_CLIPS] if REAL_CLIPS.exists() else [])

        def node_loss() -> None:
            report["node_loss"] = preprocess_under_node_loss(work, clips)
            print(json.dumps({"node_loss": report["node_loss"]}), flush=True)

        def up_and_bulk(ingress: str, state: Path) -> str:
            url = serve_up(ckpts, roots, ingress, state, ENDPOINT)
            if "bulk" in phases:
                every, seconds = (3.0, 15) if quick else (3.0, 120)
                bulk = bulk_under_kills(url, ingress, batch, bad, every, seconds)
                report["bulk"].append(bulk)
                print(json.dumps({"bulk": bulk}), flush=True)
            return url

        # Quick mode runs the node-loss phase (its own Ray cluster, no timing checks; in this
        # thread, as cluster_utils needs) beside the first endpoint's start-up and bulk phase.
        # The overload phase, whose refusal latency is measured, always runs alone.
        beside = quick and "node_loss" in phases and "bulk" in phases
        for n, ingress in enumerate(ingresses if phases & {"bulk", "overload"} else []):
            last = n == len(ingresses) - 1
            if "bulk" not in phases and not last:
                continue
            state = work / f"serve-{ingress}.json"
            try:
                if beside and n == 0:
                    with ThreadPoolExecutor(1) as pool:
                        endpoint = pool.submit(up_and_bulk, ingress, state)
                        try:
                            node_loss()
                        except BaseException:
                            endpoint.exception()  # the endpoint's state first, for serve_down
                            raise
                        url = endpoint.result()
                else:
                    url = up_and_bulk(ingress, state)
                if "overload" in phases and last:
                    clip = sorted((data / "videos").glob("*.mp4"))[0]
                    windows = (3.0, 4.0) if quick else (8.0, 10.0)
                    load = overload(url, clip, 8 if quick else 60, args.client, windows)
                    report["overload"] = {"ingress": ingress, **load}
                    print(json.dumps({"overload": report["overload"]}), flush=True)
            finally:
                serve_down(state)
        if "node_loss" in phases and not beside:
            node_loss()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    bulk_all = report["bulk"]
    n = sum(b["items"] for b in bulk_all)
    good = sum(b["good_items"] for b in bulk_all)
    ok = sum(b["succeeded"] for b in bulk_all)
    load = report.get("overload", {})
    rss = max([b["rss_growth_pct_max"] for b in bulk_all] + [load.get("rss_growth_pct_max", 0.0)])
    print(
        f"chaos_items={n} lost={sum(b['lost'] for b in bulk_all)} "
        f"duplicates={sum(b['duplicates'] for b in bulk_all)} success_rate={ok / max(good, 1):.3f} "
        f"retried={sum(b['retried'] for b in bulk_all)} "
        f"overload_refusal_p99_ms={load.get('refusal_p99_ms')} rss_growth_pct={rss}"
    )


if __name__ == "__main__":
    main()
