"""The preprocessing job: annotations + videos -> a clips table and a samples table, on Ray Data.

Flow per clip (one video named by several task records is processed once per setting):
probe (PyAV) and content hash (in a Ray Data worker) -> a clip already stored with the same key
is reused; otherwise decode (decord), the model's processor and the clip's row are one call of
a processor actor the worker owns, so a decoder crash kills only that process (restarted, the
clip retried a bounded number of times) and the pixels never travel through the object store
-> the worker tokenizes the clip's records and writes them.
Workers write both tables; the driver only receives failures and counts, so its memory stays
flat however many clips there are. Any failure becomes a row of the failures table; every good
sample is written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from crashchat.config import PreprocessConfig
from crashchat.data.annotations import Sample
from crashchat.data.validation import catalog_from_files, check_video_path, collect_samples
from crashchat.models.metadata import model_frame_size
from crashchat.ray_utils import ensure_ray
from crashchat.video import samples as store
from crashchat.video.clip_processing import (
    ClipJob,
    ProcessorPool,
    clip_key,
    file_sha256,
    input_builder,
    settings_key,
    tokenizing_builder,
)
from crashchat.video.decode import DecodeSpec, decode_spec
from crashchat.video.probe import VideoRejected, probe_video

ProgressFn = Callable[[int, int, int], None]  # (clips done, clips failed, clips total)

# What a worker hands back to the driver per batch: counts and failures, never pixels.
RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "clip" (a processed clip) or "failure"
        ("clip_key", pa.string()),
        ("reused", pa.bool_()),
        ("counts", pa.string()),  # JSON {task: {split: n}} of the clip's written records
        ("failure", pa.string()),  # JSON failure row
    ]
)


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
        counts = self.manifest.get("counts", {})
        return {
            "out": str(self.out),
            "clips": self.clips,
            "clips_decoded": counts.get("clips_decoded"),
            "clips_reused": counts.get("clips_reused"),
            "samples": self.samples,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 2),
            "per_task": counts.get("per_task", {}),
        }


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
    """Ray Data worker: probes and hashes clips, has new ones processed by its crash-isolated
    processor actors, tokenizes every clip's records and writes them."""

    def __init__(
        self,
        model: str,
        out: str,
        cfg_json: dict[str, Any],
        spec: DecodeSpec,
        settings: str,
        actor_options: dict[str, Any],
    ) -> None:
        self.cfg = PreprocessConfig.model_validate(cfg_json)
        self.model, self.out, self.spec, self.settings = model, out, spec, settings
        self.builder = tokenizing_builder(model)
        self.pool = ProcessorPool(
            model,
            out,
            self.cfg.decoders_per_worker,
            actor_options,
            self.cfg.decode_timeout_s,
            self.cfg.decode_retries,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        clips = batch.to_pylist()
        results: list[dict[str, Any]] = []
        metas: dict[int, tuple[dict[str, Any], bool]] = {}
        jobs: dict[int, ClipJob] = {}
        for i, clip in enumerate(clips):
            got = self._start(clip)
            if isinstance(got, str):
                results += self._fail_all(clip, "probe", got)
            elif isinstance(got, dict):
                metas[i] = (got, True)
            else:
                jobs[i] = got
                self.pool.start()  # the processors load while the rest of the batch is probed
        for i, done in self.pool.run(jobs).items():
            if isinstance(done, str):
                results += self._fail_all(clips[i], "decode", done)
            else:
                metas[i] = (done, False)
        records: list[dict[str, Any]] = []
        for i in sorted(metas):
            meta, reused = metas[i]
            results.append(self._tokenize(clips[i], meta, reused, records))
        store.write_records(self.out, int(clips[0]["index"]), records)
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _start(self, clip: dict[str, Any]) -> str | dict[str, Any] | ClipJob:
        """A reason (rejected), a stored clip's metadata (reused), or the processing job."""
        try:
            probe = probe_video(clip["path"], self.cfg.limits)
        except VideoRejected as exc:
            return str(exc)
        digest = file_sha256(clip["path"])
        key = clip_key(digest, self.settings)
        if store.clip_path(self.out, key).is_file():
            return store.read_clip_meta(self.out, key)
        return ClipJob(clip["path"], probe, self.spec, key, clip["video"], digest)

    def _tokenize(
        self,
        clip: dict[str, Any],
        meta: dict[str, Any],
        reused: bool,
        records: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Append the clip's record rows; a clip result with their counts and failures."""
        video = self.builder.video_from_meta(meta)
        counts: Counter[tuple[str, str]] = Counter()
        failed = []
        for r in json.loads(clip["records"]):
            try:
                ids, labels = self.builder.tokens(video, r["prompt"], r["answer"])
            except Exception as exc:
                failed.append(store.failure_row(clip["video"], "process", str(exc), r))
                continue
            records.append(
                r
                | {
                    "video": clip["video"],
                    "clip_key": meta["clip_key"],
                    "input_ids": ids,
                    "labels": labels,
                }
            )
            counts[(r["task"], r["split"])] += 1
        table: dict[str, dict[str, int]] = {}
        for (task, split), n in counts.items():
            table.setdefault(task, {})[split] = n
        return {
            "kind": "clip",
            "clip_key": meta["clip_key"],
            "reused": reused,
            "counts": json.dumps(table),
            "failure": json.dumps(failed),
        }

    def _fail_all(self, clip: dict[str, Any], stage: str, reason: str) -> list[dict[str, Any]]:
        rows = [
            store.failure_row(clip["video"], stage, reason, r) for r in json.loads(clip["records"])
        ]
        return [{"kind": "failure", "failure": json.dumps(rows)}]


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


def _plan(
    annotations: list[str | Path], video_root: Path, splits: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any], int]:
    """(clips to process, failures found before any decoding, annotation files, unique records)."""
    files, issues = collect_samples(annotations)
    failures = [
        store.failure_row(None, "annotation", i.message, file=i.file, index=i.index, field=i.field)
        for i in issues
    ]
    seen: dict[str, Sample] = {}
    for ann in files:
        for s in ann.samples:
            if splits is None or s.split in splits:
                seen.setdefault(s.record_id, s)
    by_video: dict[str, list[Sample]] = {}
    for s in seen.values():
        by_video.setdefault(s.video, []).append(s)
    clips: list[dict[str, Any]] = []
    for video in sorted(by_video):
        records = [_record_dict(s) for s in sorted(by_video[video], key=lambda s: s.record_id)]
        reason = check_video_path(video, video_root)
        if reason is not None:
            message = reason.replace(f" under {video_root}", "")
            failures += [store.failure_row(video, "probe", message, r) for r in records]
            continue
        clips.append(
            {
                "index": len(clips),
                "video": video,
                "path": str((video_root / video).resolve()),
                "records": json.dumps(records),
            }
        )
    return clips, failures, files, len(seen)


@dataclass
class _Tally:
    """What the driver keeps while workers write: counts and clip keys, never rows."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    keys: set[str] = field(default_factory=set)
    decoded: int = 0
    reused: int = 0
    done: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: pa.Table, out: Path) -> None:
        for row in batch.to_pylist():
            rows = json.loads(row["failure"] or "[]")
            store.append_failures(out, rows)
            self.failures += rows
            if row["kind"] == "failure":
                self.done += 1
                self.failed += 1
                continue
            self.done += 1
            self.keys.add(row["clip_key"])
            self.reused += bool(row["reused"])
            self.decoded += not row["reused"]
            for task, splits in json.loads(row["counts"]).items():
                for split, n in splits.items():
                    self.counts[(task, split)] += n


@dataclass(frozen=True)
class _Job:
    """One run's settings, worked out once by the driver: what the workers and the manifest
    read."""

    cfg: PreprocessConfig
    model: str
    root: Path
    out: Path
    spec: DecodeSpec
    settings: str
    pixel_norm: dict[str, Any]


def _run_workers(
    job: _Job, clips: list[dict[str, Any]], tally: _Tally, progress: ProgressFn | None
) -> str:
    """Run the Ray Data job; returns the placement note."""
    import ray
    import ray.data

    cfg = job.cfg
    opts, note = placement_options(cfg)
    actor_options = {"num_cpus": cfg.decode_num_cpus, **opts}
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    batches = max(1, -(-len(clips) // cfg.clips_per_batch))
    ds = ray.data.from_items(clips, override_num_blocks=batches).map_batches(
        ClipWorker,
        fn_constructor_kwargs={
            "model": job.model,
            "out": str(job.out),
            "cfg_json": cfg.model_dump(),
            "spec": job.spec,
            "settings": job.settings,
            "actor_options": actor_options,
        },
        batch_size=cfg.clips_per_batch,
        batch_format="pyarrow",
        # A worker more than there are batches would start (and import torch) for nothing.
        compute=ray.data.ActorPoolStrategy(size=min(cfg.workers, batches)),
        num_cpus=cfg.worker_num_cpus,
        **opts,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(batch, pa.Table)
        tally.add(batch.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA), job.out)
        if progress is not None:
            progress(tally.done, tally.failed, len(clips))
    return note


def _manifest(
    job: _Job, note: str, files: list[Any], tally: _Tally, counts: dict[str, int]
) -> dict[str, Any]:
    """The dataset's manifest: how it was made (settings, model, annotations) and what it holds."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": job.model,
        "video_root": str(job.root),
        "config": job.cfg.model_dump(),
        "decode": asdict(job.spec),
        "settings_key": job.settings,
        "placement": note,
        "pixel_norm": job.pixel_norm,
        "annotations": {str(f.path): f.sha256 for f in files if f.path.is_file()},
        "counts": {
            "clips": counts["clips"],
            "clips_written": len(tally.keys),
            "clips_decoded": tally.decoded,
            "clips_reused": tally.reused,
            "clips_removed": counts["removed"],
            "records": counts["records"],
            "samples": counts["samples"],
            "failures": len(tally.failures),
            **_count_tables(tally.counts),
        },
    }


@dataclass(frozen=True)
class PreprocessInputs:
    """What a preprocessing job reads and where it writes.

    Attributes:
        annotations: Annotation files or folders.
        video_root: Folder the annotations' video paths are relative to.
        model: Model directory whose processor prepares the inputs.
        out: Output folder.
    """

    annotations: Sequence[str | Path]
    video_root: str | Path
    model: str | Path
    out: str | Path


def run_preprocess(
    cfg: PreprocessConfig | None,
    inputs: PreprocessInputs,
    address: str | None = "local",
    progress: ProgressFn | None = None,
) -> PreprocessResult:
    """Run the preprocessing job and write ``inputs.out`` (clips, samples, manifest, failures,
    prompts).

    Clips already stored in ``out`` with the same content and settings are not decoded again;
    samples are rewritten; stored clips no record refers to any more are removed.

    Args:
        cfg: Job settings (None: the defaults).
        inputs: Annotations, video root, model and output folder.
        address: ``local`` starts Ray here; ``auto`` or an address joins a cluster. An already
            initialised Ray is used as is.
        progress: Called after each clip with (done, failed, total).
    """
    from crashchat.video.model_inputs import PixelNorm

    cfg = cfg or PreprocessConfig()
    start = time.perf_counter()
    out, root, model = Path(inputs.out), Path(inputs.video_root), str(inputs.model)
    annotations = inputs.annotations
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / store.SAMPLES_DIR, ignore_errors=True)
    (out / store.MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten
    (out / store.FAILURES_FILE).write_text("")
    clips, failures, files, unique = _plan(list(annotations), root, cfg.splits)
    store.append_failures(out, failures)
    spec = decode_spec(cfg, model_frame_size(model))
    video_processor = input_builder(model).processor.video_processor
    norm = PixelNorm.from_processor(video_processor).to_json()
    job = _Job(cfg, model, root, out, spec, settings_key(spec, video_processor), norm)
    tally = _Tally(failures=list(failures))
    note = ""
    started = ensure_ray(address) if clips else False
    try:
        if clips:
            note = _run_workers(job, clips, tally, progress)
    finally:
        if started:
            import ray

            ray.shutdown()
    removed = store.prune_clips(out, tally.keys)
    catalog_from_files(files).save(out / store.PROMPTS_FILE)
    records = sum(tally.counts.values())
    counts = {"clips": len(clips), "records": unique, "samples": records, "removed": removed}
    manifest = _manifest(job, note, files, tally, counts)
    store.write_manifest(out, manifest)
    return PreprocessResult(
        out, len(clips), records, tally.failures, time.perf_counter() - start, manifest
    )


def dataset_is_current(
    out: str | Path,
    annotations: list[str | Path],
    video_root: str | Path,
    model: str | Path,
    cfg: PreprocessConfig,
) -> bool:
    """True when ``out`` already holds these annotations preprocessed with these settings (same
    files, same content, same model and sampling): it can be used as it is."""
    try:
        manifest = store.load_manifest(out)
        files, _ = collect_samples(annotations)
    except (FileNotFoundError, ValueError):
        return False
    wanted = {str(f.path): f.sha256 for f in files if f.path.is_file()}
    return (
        manifest.get("annotations") == wanted
        and manifest.get("model") == str(model)
        and manifest.get("video_root") == str(Path(video_root))
        and manifest.get("config") == cfg.model_dump()
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
