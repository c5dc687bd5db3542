"""Training overhead benchmark: the same DeepSpeed loop launched by torchrun vs through Ray Train.

Run: ``.venv/bin/python benchmarks/train_overhead.py [--steps 40] [--workers 2]``

In one run, on the same preprocessed synthetic data and the same tiny model and config
(jobs/configs/tiny-cpu.yaml with a fixed step count, no evaluation):
  (a) direct: ``torchrun --standalone --nproc_per_node N -m crashchat.training.torchrun`` (rows
      read straight from Parquet, gloo process group set up by torchrun);
  (b) Ray Train: ``run_training`` on a local Ray (TorchTrainer, Ray Data streaming the same
      Parquet into the workers).
Throughput is the median ``samples_per_s`` over the steps after the first few (warm-up), as the
loop itself measures it per optimizer step. Start-up and end-to-end wall times print on their
own lines. The last line prints ``ray_train_throughput_ratio=R`` (Ray over direct).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build_data(root: Path, clips: int) -> tuple[Path, Path]:
    cli = [sys.executable, "-m", "crashchat.cli"]
    data, model, pre = root / "data", root / "model", root / "pre"
    subprocess.run([*cli, "data", "synth", "--out", str(data), "--videos", str(clips)], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*cli, "model", "tiny", "--out", str(model), "--text", str(data),
                    "--config", str(REPO / "jobs/configs/tiny-model.yaml")], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*cli, "preprocess", "--annotations", str(data), "--video-root", str(data),
                    "--model", str(model), "--out", str(pre), "--fps", "2",
                    "--config", str(REPO / "jobs/configs/preprocess-tiny.yaml")], check=True,
                   capture_output=True)  # fmt: skip
    return pre, model


def _throughput(history: list[dict[str, float]], warmup: int) -> float:
    rates = [h["samples_per_s"] for h in history[warmup:]] or [h["samples_per_s"] for h in history]
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--mixture", default="heterogeneous")
    args = parser.parse_args()

    from crashchat.config import TrainConfig, load_config
    from crashchat.data.tasks import get_mixture
    from crashchat.training.runner import TrainInputs, build_run_spec, run_training
    from crashchat.video.samples import load_manifest

    root = Path(tempfile.mkdtemp(prefix="train-bench-"))
    print(f"building data in {root}", flush=True)
    pre, model = _build_data(root, args.clips)
    cfg = load_config(REPO / "jobs/configs/tiny-cpu.yaml", TrainConfig)
    cfg.scaling.num_workers = args.workers
    cfg.schedule.global_batch_size = 2 * args.workers
    cfg.schedule.max_steps = args.steps
    cfg.schedule.eval_every = cfg.schedule.save_every = args.steps
    cfg.schedule.eval_max_samples = 2
    cfg.tracking.uri = f"sqlite:///{root / 'mlflow.db'}"
    mixture = get_mixture(args.mixture)

    # (a) direct torchrun
    spec = build_run_spec(
        cfg, load_manifest(pre), mixture, str(model), "bench-direct",
        {"uri": cfg.tracking.uri, "ops": [], "run_ids": {}},
    )  # fmt: skip
    # The direct run has no driver to create its MLflow run: give it one.
    from crashchat.tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    tracker.create_run("bench-direct", cfg.tracking.experiment, "bench-direct")
    tracker.flush(force=True)
    spec.tracking = tracker.pending()
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    storage = root / "direct"
    storage.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={args.workers}", "-m", "crashchat.training.torchrun",
         "--spec", str(spec_path), "--data", str(pre), "--storage", str(storage)],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=(root / "direct.log").open("w"),
    )  # fmt: skip
    direct_wall = time.perf_counter() - t0
    direct = json.loads((storage / "result.json").read_text())["history"]

    # (b) Ray Train
    t0 = time.perf_counter()
    inputs = TrainInputs(pre, str(model), root / "ray", [mixture])
    results, _ = run_training(cfg, inputs, address="local")
    ray_wall = time.perf_counter() - t0
    (res,) = results
    if res.error:
        print(f"Ray Train run failed: {res.error}")
        return 1

    d, r = _throughput(direct, args.warmup), _throughput(res.history, args.warmup)
    print(
        f"steps={args.steps} workers={args.workers} global_batch={cfg.schedule.global_batch_size}"
    )
    print(f"direct_torchrun samples_per_s={d:.2f} wall_s={direct_wall:.1f}")
    print(f"ray_train       samples_per_s={r:.2f} wall_s={ray_wall:.1f}")
    print(f"ray_train_throughput_ratio={r / d:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
