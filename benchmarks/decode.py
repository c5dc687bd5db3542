"""Preprocessing benchmark: the naive upstream loop vs the Ray Data pipeline vs the ceiling.

Run: ``.venv/bin/python benchmarks/decode.py [--clips 16] [--budgets tiny,7b] [--rss-clips 32]``

On the same generated clips, in one run, at two frame budgets (the tiny model's 56x56 frames,
and the 7B processor's: HD clips, 96 frames at 10 fps, 10,240 visual tokens per clip with token
compression, as ``jobs/configs/preprocess.yaml``), each clip named by 6 records:

  (a) naive: the upstream loop in one process: decode every frame with decord at full
      resolution, sample at 10 fps, resize, the video processor, tokenize the records;
  (b) pipeline: ``run_preprocess`` on a local Ray with every core; a job pays a fixed start-up
      (worker processes importing torch and transformers), so it runs on half the clips and on
      all of them and the throughput is the marginal one between the two runs;
  (c) ceiling: the pipeline's per-clip work (probe, hash, decode at the target size, the
      processor, write the clip row, tokenize and write the records) in one process per core,
      without Ray.

It also reports bytes per record against schema version 1 (the same rows with the pixels stored
with every record, written as that layout wrote them) and the driver's peak RSS while
preprocessing N and 4N small clips. The last line is for the 7B budget:
``speedup_vs_naive=X ceiling_fraction=Y bytes_per_record=B frames_per_s=Z``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BUDGETS = {
    # name: (width, height, fps, seconds, frame_size, max_visual_tokens, compression)
    "tiny": (320, 240, 30, 8.0, 56, 16384, False),
    "7b": (1280, 720, 30, 10.0, None, 10240, True),
}


def make_model(work: Path, frame_size: int | None, budget: int, compression: bool) -> Path:
    """The tiny model; for the 7B budget its processor gets the 7B's settings."""
    from crashchat.config import TinyModelConfig
    from crashchat.data.synth.labels import all_label_text
    from crashchat.models.metadata import read_model_meta, write_model_meta
    from crashchat.models.processors import video_size
    from crashchat.models.tiny import build_tiny_model

    out = build_tiny_model(
        work / f"model-{budget}-{frame_size}", TinyModelConfig(), all_label_text()
    )
    if frame_size is None:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(out)
        proc.video_processor.size = video_size(budget)
        proc.video_processor.use_token_compression = compression
        proc.save_pretrained(out)
        meta = read_model_meta(out)
        meta.pop("frame_size", None)  # a 7B-like model: the processor's own size rules apply
        write_model_meta(out, meta)
    return out


def make_clips(
    work: Path, name: str, n: int, width: int, height: int, fps: int, seconds: float
) -> Path:
    from crashchat.config import SynthConfig
    from crashchat.data.synth import generate_dataset

    root = work / f"data-{name}"
    cfg = SynthConfig(
        videos=n, seed=0, width=width, height=height, fps=fps, min_duration=seconds,
        max_duration=seconds, normal_fraction=0.3,
    )  # fmt: skip
    generate_dataset(root, cfg)
    return root


# One record per task and clip, as a CrashChat clip with all six tasks (answers in each task's
# strict format: the validation refuses anything else).
ANSWERS = {
    "crash_recognition": "Yes",
    "crash_description": "The car turns left and hits the truck coming the other way.",
    "causal_reasoning": "The car turned without yielding to oncoming traffic.",
    "prevention_reasoning": "The car should have waited until the lane was clear.",
    "pre_crash_localization": "2.5 seconds",
    "crash_localization": "3.0 - 5.0 seconds",
}
RECORDS_PER_CLIP = len(ANSWERS)


def task_records() -> list[tuple[str, str, str, str]]:
    """(task, task file name, prompt, answer) of the six tasks, in one order for every loop."""
    from crashchat.data.synth.labels import PROMPTS
    from crashchat.data.tasks import TASKS

    return [(k, TASKS[k].file_name, PROMPTS[k], a) for k, a in ANSWERS.items()]


def write_annotations(folder: Path, paths: list[Path]) -> Path:
    """Six records per clip, one per task file, with the tasks' own prompts."""
    from crashchat.data.annotations import make_record, write_annotation_file

    folder.mkdir(parents=True)
    for _, file_name, prompt, answer in task_records():
        records = [make_record(f"videos/{p.name}", prompt, answer, "BENCH") for p in paths]
        write_annotation_file(folder / f"crashchat_bench_{file_name}_test.json", records)
    return folder


# -- (a) naive ----------------------------------------------------------------------------------
def naive(paths: list[Path], model: Path, frame_size: int | None, budget: int) -> int:
    import decord
    import numpy as np
    import torch
    from transformers import AutoProcessor

    from crashchat.video.decode import DecodeSpec, resolve_frame_size
    from crashchat.video.model_inputs import InputBuilder

    builder = InputBuilder(AutoProcessor.from_pretrained(model))
    spec = DecodeSpec(frame_size=frame_size, max_visual_tokens=budget)
    frames = 0
    for p in paths:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1)
        full = vr.get_batch(list(range(len(vr)))).asnumpy()
        fps = vr.get_avg_fps()
        step = max(fps / 10.0, 1.0)
        idx = [min(int(k * step + step / 2), len(vr) - 1) for k in range(int(len(vr) / step))]
        if len(idx) > 96:
            idx = [idx[i] for i in np.linspace(0, len(idx) - 1, 96).round().astype(int)]
        h, w = resolve_frame_size(full.shape[2], full.shape[1], len(idx), spec)
        sampled = torch.from_numpy(full[idx]).permute(0, 3, 1, 2).float()
        resized = torch.nn.functional.interpolate(
            sampled, size=(h, w), mode="bilinear", antialias=True
        )
        arr = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        vid = builder.video(arr, idx, fps, len(vr))
        for _, _, prompt, answer in task_records():
            builder.tokens(vid, prompt, answer)
        frames += len(idx)
    return frames


# -- (c) ceiling --------------------------------------------------------------------------------
def _ceiling_clip(job: tuple[str, str, str, int | None, int, int]) -> int:
    """The pipeline's per-clip work, without Ray (one pool process per core)."""
    path, model, out, frame_size, budget, index = job
    from crashchat.config import ProbeLimits
    from crashchat.video.clip_processing import clip_key, file_sha256, input_builder, settings_key
    from crashchat.video.decode import DecodeSpec, decode_clip
    from crashchat.video.probe import probe_video
    from crashchat.video.samples import write_clip, write_records

    spec = DecodeSpec(frame_size=frame_size, max_visual_tokens=budget)
    builder = input_builder(model)
    probe = probe_video(path, ProbeLimits())
    key = clip_key(file_sha256(path), settings_key(spec, builder.processor.video_processor))
    clip = decode_clip(path, probe.width, probe.height, probe.frames, spec, probe.fps)
    vid = builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames)
    write_clip(out, {
        "clip_key": key, "video": path, "file_sha256": key, "settings_key": key,
        "num_frames": len(clip.indices), "timestamps": clip.timestamps,
        "frame_indices": clip.indices, "frame_tokens": vid.frame_tokens,
        "pixel_values": vid.pixels.tobytes(), "pixel_shape": list(vid.pixels.shape),
        "video_grid_thw": vid.grid_thw, "video_merge_size": vid.merge_size,
        "video_compression_mask": vid.compression_mask, "source_fps": clip.source_fps,
        "source_frames": clip.source_frames, "width": probe.width, "height": probe.height,
        "duration": probe.duration, "codec": probe.codec, "decode_node": "",
    })  # fmt: skip
    rows = []
    for i, (task, _, prompt, answer) in enumerate(task_records()):
        ids, labels = builder.tokens(vid, prompt, answer)
        rows.append({"record_id": f"{index}-{i}", "task": task, "split": "test",
                     "video": path, "source": "BENCH", "prompt": prompt, "answer": answer,
                     "clip_key": key, "input_ids": ids, "labels": labels})  # fmt: skip
    write_records(out, index, rows)
    return len(clip.indices)


def ceiling(
    paths: list[Path], model: Path, out: Path, frame_size: int | None, budget: int, cores: int
) -> tuple[int, float]:
    jobs = [(str(p), str(model), str(out), frame_size, budget, i) for i, p in enumerate(paths)]
    with mp.get_context("spawn").Pool(cores) as pool:
        pool.map(_ceiling_clip, jobs[:cores])  # imports and processor loads, as a warm start
        t = time.perf_counter()
        frames = sum(pool.map(_ceiling_clip, jobs, chunksize=1))
        return frames, time.perf_counter() - t


# -- (b) pipeline -------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def pipeline_run(
    ann: Path, root: Path, model: Path, out: Path, frame_size: int | None, budget: int, cores: int
) -> tuple[float, Any, int]:
    from crashchat.config import PreprocessConfig
    from crashchat.video.pipeline import run_preprocess

    cfg = PreprocessConfig(workers=cores, frame_size=frame_size, max_visual_tokens=budget)
    with PeakRSS() as rss:
        t = time.perf_counter()
        result = run_preprocess([ann], root, model, out, cfg, address=None)
        seconds = time.perf_counter() - t
    assert not result.failures, result.failures[:3]
    return seconds, result, rss.peak


def frames_of(out: Path) -> int:
    import pyarrow.parquet as pq

    return sum(
        pq.ParquetFile(f).read(columns=["num_frames"])["num_frames"].to_pylist()[0]
        for f in (out / "clips").glob("*.parquet")
    )


def layout_bytes(out: Path, records: int) -> tuple[float, float]:
    """(bytes per record in this layout, in schema version 1: pixels with every record)."""
    import pyarrow.parquet as pq

    from crashchat.video.samples import read_samples_table

    now = sum(f.stat().st_size for d in ("clips", "samples") for f in (out / d).glob("*.parquet"))
    v1 = out.parent / f"{out.name}-v1.parquet"
    table = read_samples_table(out).drop(["clip_key"])
    pq.write_table(table, str(v1), compression="zstd", row_group_size=256)
    before = v1.stat().st_size
    v1.unlink()
    return now / records, before / records


def bench_budget(name: str, n: int, work: Path, cores: int) -> dict[str, float]:
    width, height, fps, seconds, frame_size, budget, compression = BUDGETS[name]
    root = make_clips(work, name, n, width, height, fps, seconds)
    model = make_model(work, frame_size, budget, compression)
    paths = sorted((root / "videos").glob("*.mp4"))
    size = f"{frame_size}x{frame_size}" if frame_size else f"{budget} visual tokens"
    print(
        f"[{name}] {len(paths)} clips {width}x{height} @ {fps} fps, {seconds} s; budget {size}; {cores} cores",
        flush=True,
    )
    naive(paths[:1], model, frame_size, budget)  # warm the page cache and the imports alike
    t = time.perf_counter()
    n_naive = naive(paths, model, frame_size, budget)
    naive_s = time.perf_counter() - t
    n_ceil, ceil_s = ceiling(paths, model, work / f"ceiling-{name}", frame_size, budget, cores)
    runs = []
    for part, subset in (("half", paths[: len(paths) // 2]), ("all", paths)):
        ann = write_annotations(work / f"ann-{name}-{part}", subset)
        runs.append(
            pipeline_run(ann, root, model, work / f"out-{name}-{part}", frame_size, budget, cores)
        )
    (t_half, r_half, _), (t_all, r_all, _) = runs
    f_half, f_all = frames_of(r_half.out), frames_of(r_all.out)
    assert f_all == n_ceil == n_naive, (f_all, n_ceil, n_naive)
    pipe_fps = (f_all - f_half) / (t_all - t_half)
    naive_fps, ceil_fps = n_naive / naive_s, n_ceil / ceil_s
    per_record, per_record_v1 = layout_bytes(r_all.out, r_all.samples)
    print(f"[{name}] naive     {n_naive} frames in {naive_s:.2f} s = {naive_fps:.0f} frames/s")
    print(
        f"[{name}] ceiling   {n_ceil} frames in {ceil_s:.2f} s = {ceil_fps:.0f} frames/s ({cores} processes, no Ray)"
    )
    print(
        f"[{name}] pipeline  {f_all} frames in {t_all:.2f} s end to end; marginal {f_all - f_half} frames in {t_all - t_half:.2f} s = {pipe_fps:.0f} frames/s"
    )
    print(
        f"[{name}] storage   {per_record / 1e6:.2f} MB per record; {per_record_v1 / 1e6:.2f} MB with pixels per record (schema 1): {per_record / per_record_v1:.2f}x"
    )
    return {
        "speedup_vs_naive": pipe_fps / naive_fps,
        "ceiling_fraction": pipe_fps / ceil_fps,
        "bytes_per_record": per_record,
        "bytes_ratio_vs_v1": per_record / per_record_v1,
        "frames_per_s": pipe_fps,
    }


def bench_rss(n: int, work: Path, cores: int) -> tuple[int, int]:
    """Driver peak RSS growth preprocessing n and 4n small clips."""
    root = make_clips(work, "rss", 4 * n, 112, 112, 10, 2.5)
    model = make_model(work, 56, 16384, False)
    paths = sorted((root / "videos").glob("*.mp4"))
    peaks = []
    for count in (n, 4 * n):
        ann = write_annotations(work / f"ann-rss-{count}", paths[:count])
        _, _, peak = pipeline_run(ann, root, model, work / f"out-rss-{count}", 56, 16384, cores)
        peaks.append(peak)
    return peaks[0], peaks[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--budgets", default="tiny,7b")
    parser.add_argument(
        "--rss-clips", type=int, default=32, help="N for the driver RSS at N and 4N clips (0: skip)"
    )
    args = parser.parse_args()

    import ray

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="crashchat-bench-"))
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        results = {b: bench_budget(b, args.clips, work, cores) for b in args.budgets.split(",")}
        if args.rss_clips:
            small, large = bench_rss(args.rss_clips, work, cores)
            print(
                f"driver peak RSS: {small / 2**20:.0f} MiB at {args.rss_clips} clips, {large / 2**20:.0f} MiB at {4 * args.rss_clips} clips ({(large / small - 1) * 100:+.1f}%)"
            )
    finally:
        ray.shutdown()
    last = results.get("7b") or next(iter(results.values()))
    print(
        f"speedup_vs_naive={last['speedup_vs_naive']:.2f} ceiling_fraction={last['ceiling_fraction']:.2f} "
        f"bytes_per_record={last['bytes_per_record']:.0f} frames_per_s={last['frames_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
