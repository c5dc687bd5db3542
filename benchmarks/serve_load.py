"""Serving load benchmark: dynamic batching on vs off, and the router's overhead.

Run: ``.venv/bin/python benchmarks/serve_load.py [--seconds 20] [--concurrency 16]``

In one run, on a local Ray with the tiny model (one LoRA checkpoint, serve/tiny.yaml),
loopback only and bounded in requests and time:
  (a) saturation with dynamic batching (``max_batch_size`` 8) and without (1): requests/s and
      p50/p99 latency of ``POST /v1/analyze`` (JSON path, one text task with the default answer
      budget of 160 tokens, so the model is the bottleneck), from ``--concurrency`` clients for
      ``--seconds``;
  (b) below saturation (2 clients): the error rate;
  (c) router overhead: one request at a time, p50 latency over HTTP through the router minus p50
      of the same work done by calling the decoder and model deployment handles directly (the
      two alternate, so drift weighs on both alike; one-token answers, so the model's time and
      its noise do not drown the router's), for both APIs in turn, so the OpenAI route's cost
      over ``/v1/analyze`` is a paired difference (``openai_minus_analyze_p50_ms``).
      ``--ingress proxy`` measures Ray Serve's Python proxy in front of the router instead of
      its HAProxy ingress (the default here).
``--api openai`` sends the same work as OpenAI chat completions (``POST /v1/chat/completions``,
the clip as a ``file://`` video part, the task's prompt as text) instead of ``/v1/analyze``.
Last line: ``batching_speedup=X router_overhead_ms_p50=Y p99_ms=Z error_rate=E``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASK = "crash_description"
MAX_REQUESTS = 5000


def _build(root: Path) -> tuple[Path, Path]:
    """Synthetic clips, the tiny model, and one checkpoint with a random adapter."""
    from crashchat.config import SynthConfig, TinyModelConfig
    from crashchat.data.synth import generate_dataset
    from crashchat.data.synth.labels import all_label_text
    from crashchat.models.tiny import build_random_checkpoint, build_tiny_model

    data = root / "data"
    generate_dataset(data, SynthConfig(videos=8, seed=3))
    model_dir = build_tiny_model(root / "model", TinyModelConfig(), all_label_text())
    prompts = json.loads((data / "prompts.json").read_text())
    meta = {"mixture": TASK, "strategy": "monotask", "tasks": [TASK]}
    build_random_checkpoint(model_dir, root / "ckpts" / TASK, meta, {TASK: prompts[TASK]})
    return data, root / "ckpts"


def _load(url: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads posting ``body`` for ``seconds``: rps, latencies, errors."""
    import requests

    lat: list[float] = []
    errors = [0]
    sent = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            with lock:
                if sent[0] >= MAX_REQUESTS:
                    return
                sent[0] += 1
            start = time.perf_counter()
            try:
                ok = session.post(url, json=body, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    lat.append((time.perf_counter() - start) * 1000)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    lat.sort()
    n = len(lat)
    return {
        "clients": clients,
        "requests": n + errors[0],
        "rps": n / elapsed,
        "p50_ms": lat[n // 2] if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "error_rate": errors[0] / max(1, n + errors[0]),
    }


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on this machine (Ray, Serve, this one)."""
    import psutil

    out: dict[str, float] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
            times = proc.info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        if times is None:
            continue
        if proc.info["pid"] == me:
            kind = "benchmark (clients + driver)"
        elif cmd.startswith("ray::"):
            kind = cmd.split()[0].split(":bench")[0] + (
                ":" + cmd.split(":bench:")[1].split()[0] if ":bench:" in cmd else ""
            )
        elif "raylet" in cmd or "gcs_server" in cmd:
            kind = "raylet/gcs"
        elif "haproxy" in (proc.info["name"] or ""):
            kind = "haproxy"
        else:
            continue
        out[kind] = out.get(kind, 0.0) + times.user + times.system
    return out


def _cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Cores used per process kind between two :func:`_cpu_seconds` samples."""
    used = {k: (after[k] - before.get(k, 0.0)) / wall for k in after}
    return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _deploy(catalog: Any, cfg: Any, batch: int, answer_tokens: int | None = None) -> None:
    from ray import serve

    from crashchat.serving.builder import build_application

    cfg = cfg.model_copy(deep=True)
    cfg.model.max_batch_size = batch
    if answer_tokens is not None:
        cfg.max_new_tokens_text = answer_tokens
    cfg.model.autoscaling.min_replicas = cfg.model.autoscaling.max_replicas = 1
    serve.run(build_application(catalog, cfg), name="bench", route_prefix="/")


def _direct_call(catalog: Any, clip: Path) -> Any:
    """The router's work without the router: decoder handle, then model handle."""
    from ray import serve

    from crashchat.serving.catalog import processor_group
    from crashchat.serving.messages import Question

    ckpt = catalog.checkpoints[TASK]
    group = processor_group(ckpt)
    decoder = serve.get_deployment_handle("decoder", "bench")
    model = serve.get_deployment_handle(f"model_{TASK}", "bench")

    def call() -> None:
        clip_inputs = decoder.decode.remote(group, {"path": str(clip)}).result(timeout_s=60)
        model.answer.remote(Question(clip_inputs, TASK, ckpt.prompts[TASK])).result(timeout_s=60)

    return call


def _request(api: str, port: int, clip: Path, prompt: str) -> tuple[str, dict[str, Any]]:
    """URL and JSON body of one request for ``api`` (the same clip and task either way)."""
    base = f"http://127.0.0.1:{port}/v1/"
    if api == "analyze":
        return base + "analyze", {"video_path": str(clip), "tasks": [TASK]}
    content = [
        {"type": "video_url", "video_url": {"url": clip.resolve().as_uri()}},
        {"type": "text", "text": prompt},
    ]
    return base + "chat/completions", {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=100, help="Requests for (c).")
    parser.add_argument(
        "--cpu-profile",
        action="store_true",
        help="Also print the cores each process kind used during each saturation run.",
    )
    parser.add_argument(
        "--no-low-latency",
        action="store_true",
        help="Serve's default event loops and request logging (ServeConfig.low_latency false).",
    )
    parser.add_argument(
        "--ingress",
        choices=("haproxy", "proxy"),
        default="haproxy",
        help="ServeConfig.ingress: Ray Serve's HAProxy ingress, or its Python proxy actor.",
    )
    parser.add_argument(
        "--api",
        choices=("analyze", "openai"),
        default="analyze",
        help="POST /v1/analyze, or the OpenAI-compatible /v1/chat/completions.",
    )
    parser.add_argument(
        "--max-new-tokens-text",
        type=int,
        default=160,
        help="Answer budget of the text task (the platform default; the random tiny model "
        "rarely stops early, so this sets how model-bound a request is).",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import serve

    from crashchat.config import ServeConfig, load_config
    from crashchat.local_cluster import free_port
    from crashchat.serving.catalog import build_catalog_from_dir

    with tempfile.TemporaryDirectory() as tmp:
        data, ckpts = _build(Path(tmp))
        clip = sorted((data / "videos").glob("*.mp4"))[0]
        cfg = load_config(REPO / "serve/tiny.yaml", ServeConfig)
        cfg.port = free_port()
        cfg.limits.allowed_roots = [str(data)]
        cfg.max_new_tokens_text = args.max_new_tokens_text
        cfg.low_latency = not args.no_low_latency
        cfg.ingress = args.ingress
        os.environ.update(cfg.ray_env())  # read by the Ray that ray.init starts below
        catalog = build_catalog_from_dir(ckpts, with_baseline=False)
        url, body = _request(args.api, cfg.port, clip, catalog.checkpoints[TASK].prompts[TASK])
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
            results = {}
            for batch in (8, 1):
                _deploy(catalog, cfg, batch)
                _load(url, body, 4, 3)  # warm-up
                before, began = _cpu_seconds(), time.monotonic()
                results[batch] = _load(url, body, args.concurrency, args.seconds)
                print(json.dumps({"max_batch_size": batch, **results[batch]}), flush=True)
                if args.cpu_profile:
                    share = _cpu_share(before, _cpu_seconds(), time.monotonic() - began)
                    print(json.dumps({"cores_used": share}), flush=True)
            _deploy(catalog, cfg, 8)
            below = _load(url, body, 2, args.seconds / 2)
            print(json.dumps({"below_saturation": below}), flush=True)
            import requests

            # A one-token answer, so model time (and its noise) does not drown the overhead.
            _deploy(catalog, cfg, 8, answer_tokens=1)
            # Interleaved, so drift (autoscaling, caches) weighs on every path alike; both APIs
            # every round, so the OpenAI route's cost over /v1/analyze is a paired difference.
            direct_call = _direct_call(catalog, clip)
            prompt = catalog.checkpoints[TASK].prompts[TASK]
            apis = {a: _request(a, cfg.port, clip, prompt) for a in ("analyze", "openai")}
            lat: dict[str, list[float]] = {"analyze": [], "openai": [], "direct": []}
            session = requests.Session()  # keep-alive, as bulk clients and the load phase use
            for i in range(args.sequential):
                order = list(apis.items())
                for api, (api_url, api_body) in order if i % 2 else order[::-1]:  # no order bias
                    start = time.perf_counter()
                    session.post(api_url, json=api_body, timeout=60).raise_for_status()
                    lat[api].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                direct_call()
                lat["direct"].append((time.perf_counter() - start) * 1000)
            http_p50, direct = statistics.median(lat[args.api]), statistics.median(lat["direct"])
            pairs = zip(lat["openai"], lat["analyze"], strict=True)
            line = {"ingress": args.ingress, "api": args.api, "direct_p50_ms": direct}
            line |= {f"{a}_http_p50_ms": statistics.median(lat[a]) for a in apis}
            line["openai_minus_analyze_p50_ms"] = statistics.median(o - a for o, a in pairs)
            print(json.dumps(line), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    speedup = results[8]["rps"] / max(results[1]["rps"], 1e-9)
    print(
        f"batching_speedup={speedup:.2f} router_overhead_ms_p50={http_p50 - direct:.1f} "
        f"p99_ms={results[8]['p99_ms']:.0f} error_rate={below['error_rate']:.3f}"
    )


if __name__ == "__main__":
    main()
