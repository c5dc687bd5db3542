"""Decode benchmark: naive sequential decoding vs the Ray Data pipeline vs the decode ceiling.

Run: ``.venv/bin/python benchmarks/decode.py [--clips 32] [--width 320 --height 240 --fps 30]``

In one run, on the same generated clips:
  (a) naive: a sequential loop that decodes each clip fully with decord at full resolution,
      samples at 10 fps and resizes the samples (the upstream approach);
  (b) pipeline: ``run_preprocess`` on a local Ray with all cores (decode at the model's size in
      crash-isolated tasks, the real processor, Parquet output). A job pays a fixed start-up
      (worker processes importing torch and transformers: about 10 s on 2 cores), so it runs on
      half the clips and on all of them; the throughput is the marginal one between the two runs,
      and the start-up is printed on its own line;
  (c) ceiling: decord decoding exactly the pipeline's frames at its size in one process, times
      the core count.
The last line prints ``speedup_vs_naive=X ceiling_fraction=Y frames_per_s=Z``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import decord
import torch


def _target(vr: decord.VideoReader, size: int | None, n: int) -> tuple[int, int]:
    from crashchat.video.decode import DecodeSpec, resolve_frame_size

    h, w = vr[0].shape[:2]
    return resolve_frame_size(w, h, n, DecodeSpec(frame_size=size))


def naive(paths: list[Path], size: int | None) -> int:
    frames = 0
    for p in paths:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
        full = vr.get_batch(list(range(len(vr)))).asnumpy()
        fps = vr.get_avg_fps()
        step = max(fps / 10.0, 1.0)
        idx = [min(int(k * step + step / 2), len(vr) - 1) for k in range(int(len(vr) / step))]
        sampled = torch.from_numpy(full[idx]).permute(0, 3, 1, 2).float()
        torch.nn.functional.interpolate(
            sampled, size=_target(vr, size, len(idx)), mode="bilinear", antialias=True
        )
        frames += len(idx)
    return frames


def ceiling(paths: list[Path], size: int | None) -> int:
    from crashchat.video.frame_sampling import sample_frames

    frames = 0
    for p in paths:
        probe = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
        s = sample_frames(len(probe), probe.get_avg_fps())
        h, w = _target(probe, size, len(s.indices))
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1, width=w, height=h)
        vr.get_batch(s.indices).asnumpy()
        frames += len(s.indices)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--frame-size",
        type=int,
        default=56,
        help="square decode size (the tiny model's 56); 0 = the processor's pixel budget as for the 7B",
    )
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray

    from crashchat.config import PreprocessConfig, SynthConfig, TinyModelConfig
    from crashchat.data.annotations import make_record, write_annotation_file
    from crashchat.data.synth import generate_dataset
    from crashchat.data.synth.labels import all_label_text
    from crashchat.models.tiny import build_tiny_model
    from crashchat.video.pipeline import run_preprocess

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="crashchat-bench-"))
    cfg = SynthConfig(
        videos=args.clips,
        seed=0,
        width=args.width,
        height=args.height,
        fps=args.fps,
        min_duration=args.seconds,
        max_duration=args.seconds,
        normal_fraction=0.3,
    )
    generate_dataset(work / "data", cfg)
    model = build_tiny_model(work / "model", TinyModelConfig(), all_label_text())
    size = args.frame_size or None
    paths = sorted((work / "data" / "videos").glob("*.mp4"))
    print(
        f"{len(paths)} clips {args.width}x{args.height} @ {args.fps} fps, {args.seconds} s; frame size {size}; {cores} cores"
    )

    ceiling(paths[:2], size)  # warm the page cache for every contender alike
    t = time.perf_counter()
    n_naive = naive(paths, size)
    naive_s = time.perf_counter() - t
    t = time.perf_counter()
    n_ceil = ceiling(paths, size)
    ceil_s = time.perf_counter() - t
    ceiling_fps = n_ceil / ceil_s * cores

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        by_clip: dict[str, list[Path]] = {}
        runs = []
        for part, subset in (("half", paths[: len(paths) // 2]), ("all", paths)):
            # One recognition record per clip: the work is the video, not the text.
            ann = work / f"ann_{part}"
            ann.mkdir()
            prompt = "Is there a crash? Answer Yes or No."
            write_annotation_file(
                ann / "crashchat_bench_crash_recognition_test.json",
                [make_record(f"videos/{p.name}", prompt, "Yes", "BENCH") for p in subset],
            )
            pcfg = PreprocessConfig(
                workers=cores,
                decode_num_cpus=max(0.5, (cores - 0.25 * cores) / cores),
                frame_size=size,
            )
            t = time.perf_counter()
            result = run_preprocess(
                [ann], work / "data", model, work / f"out_{part}", pcfg, address=None
            )
            runs.append((time.perf_counter() - t, result))
            assert not result.failures, result.failures[:3]
            by_clip[part] = subset
    finally:
        ray.shutdown()
    frames = [
        sum(
            len(x)
            for x in pq.read_table(str(r.out / "samples"), columns=["frame_indices"])[
                "frame_indices"
            ].to_pylist()
        )
        for _, r in runs
    ]
    assert frames[1] == n_ceil, (frames, n_ceil)
    (t_half, _), (t_all, _) = runs
    n_pipe, pipe_s = frames[1] - frames[0], t_all - t_half
    startup = t_half - frames[0] * pipe_s / n_pipe
    print(
        f"pipeline  end to end: {frames[1]} frames in {t_all:.2f} s = {frames[1] / t_all:.0f} frames/s; "
        f"{frames[0]} frames in {t_half:.2f} s"
    )
    print(
        f"pipeline  start-up {startup:.1f} s per job (worker processes importing torch/transformers)"
    )
    naive_fps, pipe_fps = n_naive / naive_s, n_pipe / pipe_s
    print(f"naive     {n_naive} frames in {naive_s:.2f} s = {naive_fps:.0f} frames/s")
    print(
        f"ceiling   {n_ceil} frames in {ceil_s:.2f} s x {cores} cores = {ceiling_fps:.0f} frames/s"
    )
    print(
        f"pipeline  marginal: {n_pipe} more frames in {pipe_s:.2f} s more = {pipe_fps:.0f} frames/s (decode, processor, Parquet)"
    )
    print(
        f"speedup_vs_naive={pipe_fps / naive_fps:.2f} ceiling_fraction={pipe_fps / ceiling_fps:.2f} frames_per_s={pipe_fps:.0f}"
    )


if __name__ == "__main__":
    main()
