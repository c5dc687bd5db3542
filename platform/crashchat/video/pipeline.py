"""The preprocessing job: annotations + videos -> model-ready Parquet samples, on Ray Data.

Flow per clip (one video shared by several task records is decoded once):
probe (PyAV, in the worker) -> decode (decord, in its own Ray task so a decoder crash kills only
that process; retried a bounded number of times) -> the model's processor -> one row per record.
Any failure becomes a row of the failures table; every good sample is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from crashchat.config import PreprocessConfig
from crashchat.data.annotations import Sample
from crashchat.data.validation import catalog_from_files, check_video_path, collect_samples
from crashchat.ray_utils import ensure_ray
from crashchat.video.decode import DecodedClip, DecodeSpec, decode_task
from crashchat.video.probe import VideoRejected, probe_video
from crashchat.video.samples import FAILURE_FIELDS, ROW_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION

ProgressFn = Callable[[int, int, int], None]  # (clips done, clips failed, clips total)


@dataclass
class PreprocessResult:
    """What a preprocessing run wrote."""

    out: Path
    clips: int
    samples: int
    failures: list[dict[str, Any]]
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts for printing."""
        return {
            "out": str(self.out),
            "clips": self.clips,
            "samples": self.samples,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 2),
            "per_task": self.manifest.get("counts", {}).get("per_task", {}),
        }


def _failure(
    video: str | None, stage: str, reason: str, sample: Sample | None = None, **extra: Any
) -> dict[str, Any]:
    row = {
        "video": video,
        "record_id": sample.record_id if sample else None,
        "task": sample.task if sample else None,
        "split": sample.split if sample else None,
        "stage": stage,
        "reason": reason,
    }
    return row | extra


def _record_dict(s: Sample) -> dict[str, Any]:
    return {
        "record_id": s.record_id,
        "task": s.task,
        "split": s.split,
        "source": s.source or "",
        "prompt": s.prompt,
        "answer": s.answer,
    }


class ClipWorker:
    """Ray Data worker: probes, has clips decoded in crash-isolated tasks, runs the processor."""

    def __init__(
        self, model: str, cfg_json: dict[str, Any], spec: DecodeSpec, decode_options: dict[str, Any]
    ) -> None:
        import ray
        from transformers import AutoProcessor

        from crashchat.video.model_inputs import InputBuilder

        self.cfg = PreprocessConfig.model_validate(cfg_json)
        self.spec = spec
        self.builder = InputBuilder(AutoProcessor.from_pretrained(model, trust_remote_code=False))
        self.decode = ray.remote(decode_task).options(**decode_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        clips = list(
            zip(
                batch["video"].to_pylist(),
                batch["path"].to_pylist(),
                [json.loads(r) for r in batch["records"].to_pylist()],
                strict=True,
            )
        )
        # Probe every clip, then keep all their decodes in flight at once and process each clip
        # as its frames arrive, so decoding overlaps the processor.
        rows: dict[int, list[dict[str, Any]]] = {}
        pending: dict[Any, int] = {}
        last_progress = time.monotonic()
        for i, (video, path, records) in enumerate(clips):
            try:
                probe = probe_video(path, self.cfg.limits)
            except VideoRejected as exc:
                rows[i] = self._fail_all(video, records, "probe", str(exc))
                continue
            ref = self.decode.remote(path, probe.width, probe.height, probe.frames, self.spec)
            pending[ref] = i
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                if time.monotonic() - last_progress > self.cfg.decode_timeout_s:
                    self._cancel_oldest(pending, clips, rows)
                    last_progress = time.monotonic()
                continue
            last_progress = time.monotonic()
            ref = ready[0]
            i = pending.pop(ref)
            video, _path, records = clips[i]
            try:
                clip = self._get(ref)
            except RuntimeError as exc:
                rows[i] = self._fail_all(video, records, "decode", str(exc))
                continue
            rows[i] = self._process(video, clip, records)
        ordered = [r for i in range(len(clips)) for r in rows[i]]
        return pa.Table.from_pylist(ordered, schema=ROW_SCHEMA)

    def _fail_all(
        self, video: str, records: list[dict[str, Any]], stage: str, reason: str
    ) -> list[dict[str, Any]]:
        return [
            {
                "kind": "failure",
                "video": video,
                "record_id": r["record_id"],
                "task": r["task"],
                "split": r["split"],
                "stage": stage,
                "reason": reason,
            }
            for r in records
        ]

    def _cancel_oldest(
        self, pending: dict[Any, int], clips: list[Any], rows: dict[int, list[dict[str, Any]]]
    ) -> None:
        """No decode finished for ``decode_timeout_s``: cancel the oldest one (the hung one).

        Decodes are submitted in order and queued ones wait behind running ones, so a rolling
        no-progress timeout does not fail clips that were merely queued behind a hung decoder.
        """
        import ray

        ref = next(iter(pending))
        i = pending.pop(ref)
        ray.cancel(ref, force=True)
        video, _path, records = clips[i]
        reason = f"decode timed out after {self.cfg.decode_timeout_s:.0f} s without progress (task cancelled)"
        rows[i] = self._fail_all(video, records, "decode", reason)

    def _get(self, ref: Any) -> DecodedClip:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise RuntimeError(
                str(cause).splitlines()[-1] if str(cause) else type(cause).__name__
            ) from None
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.OutOfMemoryError,
        ) as exc:
            attempts = self.cfg.decode_retries + 1
            raise RuntimeError(
                f"decoder process died ({type(exc).__name__}) on all {attempts} attempt(s)"
            ) from None

    def _process(
        self, video: str, clip: DecodedClip, records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        try:
            vid = self.builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames)
        except Exception as exc:
            return self._fail_all(video, records, "process", f"video processor failed: {exc}")
        rows: list[dict[str, Any]] = []
        for r in records:
            try:
                ids, labels = self.builder.tokens(vid, r["prompt"], r["answer"])
            except Exception as exc:
                rows += self._fail_all(video, [r], "process", str(exc))
                continue
            rows.append(
                r
                | {
                    "kind": "sample",
                    "video": video,
                    "num_frames": len(clip.indices),
                    "timestamps": clip.timestamps,
                    "frame_indices": clip.indices,
                    "input_ids": ids,
                    "labels": labels,
                    "pixel_values": vid.pixels.tobytes(),
                    "pixel_shape": list(vid.pixels.shape),
                    "video_grid_thw": vid.grid_thw,
                    "video_merge_size": vid.merge_size,
                    "video_compression_mask": vid.compression_mask,
                    "decode_node": clip.node_id,
                }
            )
        return rows


class ShardWriter:
    """Writes sample rows to ``part-NNNNN.parquet`` shards of a fixed row count, in arrival order."""

    def __init__(self, folder: Path, rows_per_shard: int) -> None:
        self.folder, self.rows_per_shard = folder, rows_per_shard
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.shards = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        head, tail = table.slice(0, n), table.slice(n)
        pq.write_table(head, self.folder / f"part-{self.shards:05d}.parquet", compression="zstd")
        self.shards += 1
        self.rows += head.num_rows
        self.pending = [tail] if tail.num_rows else []
        self.pending_rows = tail.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)


def placement_options(cfg: PreprocessConfig) -> tuple[dict[str, Any], str]:
    """Ray resource/label options for decode work, and a note on what was chosen."""
    import ray

    opts: dict[str, Any] = {}
    notes = []
    res = cfg.placement.resource
    if res and ray.cluster_resources().get(res, 0) > 0:
        opts["resources"] = {res: cfg.placement.resource_per_task}
        notes.append(f"decode pinned to nodes with resource {res!r}")
    elif res:
        notes.append(f"no node offers resource {res!r}: decode runs anywhere")
    if cfg.placement.node_labels:
        opts["label_selector"] = dict(cfg.placement.node_labels)
        notes.append(f"decode requires node labels {cfg.placement.node_labels}")
    return opts, "; ".join(notes)


def _model_frame_size(model: str) -> int | None:
    meta = Path(model) / "crashchat_model.json"
    return json.loads(meta.read_text()).get("frame_size") if meta.is_file() else None


def _plan(
    annotations: list[str | Path], video_root: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any], list[Sample]]:
    files, issues = collect_samples(annotations)
    failures = [
        _failure(None, "annotation", i.message, file=i.file, index=i.index, field=i.field)
        for i in issues
    ]
    seen: dict[str, Sample] = {}
    for ann in files:
        for s in ann.samples:
            seen.setdefault(s.record_id, s)
    by_video: dict[str, list[Sample]] = {}
    for s in seen.values():
        by_video.setdefault(s.video, []).append(s)
    clips = []
    for video in sorted(by_video):
        samples = sorted(by_video[video], key=lambda s: s.record_id)
        reason = check_video_path(video, video_root)
        if reason is not None:
            failures += [
                _failure(video, "probe", reason.replace(f" under {video_root}", ""), s)
                for s in samples
            ]
            continue
        clips.append(
            {
                "video": video,
                "path": str((video_root / video).resolve()),
                "records": json.dumps([_record_dict(s) for s in samples]),
            }
        )
    return clips, failures, files, list(seen.values())


def _collect(
    raw: pa.Table,
    writer: ShardWriter,
    counts: Counter[tuple[str, str]],
    failures: list[dict[str, Any]],
) -> tuple[int, int]:
    """Route one worker batch: samples to the shard writer, failures to the list.

    Returns:
        (clips in the batch, clips of which no sample survived).
    """
    # Blocks holding only failures arrive with null-typed sample columns.
    batch = raw.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
    is_sample = pa.compute.equal(batch["kind"], "sample")
    samples = batch.filter(is_sample).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
    writer.add(samples)
    counts.update(zip(samples["task"].to_pylist(), samples["split"].to_pylist(), strict=True))
    failed_rows = (
        batch.filter(pa.compute.invert(is_sample)).select(list(FAILURE_FIELDS)).to_pylist()
    )
    failures.extend(failed_rows)
    videos = set(batch["video"].to_pylist())
    failed_videos = {r["video"] for r in failed_rows} - set(samples["video"].to_pylist())
    return len(videos), len(failed_videos)


def run_preprocess(
    annotations: list[str | Path],
    video_root: str | Path,
    model: str | Path,
    out: str | Path,
    cfg: PreprocessConfig | None = None,
    address: str | None = "local",
    progress: ProgressFn | None = None,
) -> PreprocessResult:
    """Run the preprocessing job and write ``out`` (samples, manifest, failures, prompts).

    Args:
        annotations: Annotation files or folders.
        video_root: Folder the annotations' video paths are relative to.
        model: Model directory whose processor prepares the inputs.
        out: Output folder (its previous samples are replaced).
        cfg: Job settings.
        address: ``local`` starts Ray here; ``auto`` or an address joins a cluster. An already
            initialised Ray is used as is.
        progress: Called after each clip with (done, failed, total).
    """
    import ray
    import ray.data

    cfg = cfg or PreprocessConfig()
    start = time.perf_counter()
    out, root, model = Path(out), Path(video_root), str(model)
    samples_dir = out / "samples"
    shutil.rmtree(samples_dir, ignore_errors=True)
    samples_dir.mkdir(parents=True)
    clips, failures, files, unique = _plan(annotations, root)
    spec = DecodeSpec(
        cfg.fps,
        cfg.max_frames,
        cfg.min_frames,
        cfg.frame_size or _model_frame_size(model),
        cfg.max_visual_tokens,
        fault_injection=cfg.fault_injection,
    )
    writer = ShardWriter(samples_dir, cfg.rows_per_shard)
    counts: Counter[tuple[str, str]] = Counter()
    placement_note = ""
    started = ensure_ray(address) if clips else False
    try:
        if clips:
            opts, placement_note = placement_options(cfg)
            decode_opts = {
                "num_cpus": cfg.decode_num_cpus,
                "max_retries": cfg.decode_retries,
                "retry_exceptions": False,
                **opts,
            }
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = False
            ds = ray.data.from_items(
                clips, override_num_blocks=max(1, -(-len(clips) // cfg.clips_per_batch))
            ).map_batches(
                ClipWorker,
                fn_constructor_kwargs={
                    "model": model,
                    "cfg_json": cfg.model_dump(),
                    "spec": spec,
                    "decode_options": decode_opts,
                },
                batch_size=cfg.clips_per_batch,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(cfg.workers, len(clips))),
                num_cpus=cfg.worker_num_cpus,
                **opts,
            )
            done = failed = 0
            for raw in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                assert isinstance(raw, pa.Table)
                n_done, n_failed = _collect(raw, writer, counts, failures)
                done, failed = done + n_done, failed + n_failed
                if progress is not None:
                    progress(done, failed, len(clips))
        writer.close()
    finally:
        if started:
            ray.shutdown()

    catalog = catalog_from_files(files)
    catalog.save(out / "prompts.json")
    with (out / "failures.jsonl").open("w") as fh:
        for f in failures:
            fh.write(json.dumps(f, ensure_ascii=False) + "\n")
    from transformers import AutoProcessor

    from crashchat.video.model_inputs import PixelNorm

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "video_root": str(root),
        "config": cfg.model_dump(),
        "decode": asdict(spec),
        "placement": placement_note,
        "pixel_norm": PixelNorm.from_processor(
            AutoProcessor.from_pretrained(model).video_processor
        ).to_json(),
        "annotations": {
            str(f.path): hashlib.sha256(f.path.read_bytes()).hexdigest()
            for f in files
            if f.path.is_file()
        },
        "counts": {
            "clips": len(clips),
            "records": len(unique),
            "samples": writer.rows,
            "failures": len(failures),
            "shards": writer.shards,
            **_count_tables(counts),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return PreprocessResult(
        out, len(clips), writer.rows, failures, time.perf_counter() - start, manifest
    )


def _count_tables(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per-task, per-split and per-task-and-split sample counts for the manifest."""
    per_task: Counter[str] = Counter()
    per_split: Counter[str] = Counter()
    cross: dict[str, dict[str, int]] = {}
    for (task, split), n in sorted(counts.items()):
        per_task[task] += n
        per_split[split] += n
        cross.setdefault(task, {})[split] = n
    return {
        "per_task": dict(sorted(per_task.items())),
        "per_split": dict(sorted(per_split.items())),
        "per_task_split": cross,
    }
