"""The preprocessed dataset on disk: each clip's pixels stored once, one row per record, and its
readers, which join the two.

Layout of a preprocessing output folder ``OUT`` (schema version 3)::

    OUT/clips/<clip_key>.parquet        one row per clip and sampling setting (CLIP_SCHEMA): pixels,
                                        grid, merge size, compression mask, timestamps, frame
                                        indices, probe facts, decode node
    OUT/samples/part-NNNNNN.parquet     one row per annotation record (RECORD_SCHEMA): ids, task,
                                        split, prompt, answer, input ids, labels, the clip key
    OUT/manifest.json                   schema version, counts, config, settings, hashes
    OUT/failures.jsonl                  one line per rejected or failed clip or record
    OUT/prompts.json                    task prompts found in the annotations

A clip key is the sha256 of the video file with a digest of the decode and processor settings, so
a clip is decoded once per setting however many records and runs name it. Readers stream the
record rows (:func:`read_samples`) and whoever uses them joins them with their clips
(:class:`ClipStore`): a joined row (SAMPLE_SCHEMA) has exactly the columns of schema version 1,
which stored the pixels with every record.

A clip's pixels are its processor's uint8 patches (``pixel_shape`` = patches x patch values,
channel-major within a patch) stored pixel-major: each pixel's three channel values side by side
(:func:`pack_pixels`). Decoded video's channels move together (its grain and edges are in the
luma), so they compress together: about 10% smaller with zstd than channel-major (schema 2).

This module is the only one that writes or reads these files.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crashchat.video.model_inputs import IGNORE_INDEX, PixelNorm, to_model_inputs

if TYPE_CHECKING:  # torch is imported where tensors are made: the store alone does not need it
    import torch

SCHEMA_VERSION = 3
CHANNELS = 3  # RGB: a patch's values are CHANNELS planes of equal size
CLIPS_DIR = "clips"
SAMPLES_DIR = "samples"
MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.jsonl"
PROMPTS_FILE = "prompts.json"

CLIP_SCHEMA = pa.schema(
    [
        ("clip_key", pa.string()),
        ("video", pa.string()),
        ("file_sha256", pa.string()),
        ("settings_key", pa.string()),
        ("num_frames", pa.int32()),
        ("timestamps", pa.list_(pa.float32())),
        ("frame_indices", pa.list_(pa.int32())),
        ("frame_tokens", pa.list_(pa.int32())),
        ("pixel_values", pa.binary()),
        ("pixel_shape", pa.list_(pa.int32())),
        ("video_grid_thw", pa.list_(pa.int32())),
        ("video_merge_size", pa.int32()),
        ("video_compression_mask", pa.list_(pa.bool_())),
        ("source_fps", pa.float64()),
        ("source_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duration", pa.float64()),
        ("codec", pa.string()),
        ("decode_node", pa.string()),
    ]
)
CLIP_META_COLUMNS = [f.name for f in CLIP_SCHEMA if f.name != "pixel_values"]

RECORD_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("video", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("clip_key", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
    ]
)

# What readers return: a record joined with its clip (the columns of schema version 1).
CLIP_COLUMNS_IN_SAMPLES = (
    "num_frames",
    "timestamps",
    "frame_indices",
    "pixel_values",
    "pixel_shape",
    "video_grid_thw",
    "video_merge_size",
    "video_compression_mask",
    "decode_node",
)
SAMPLE_SCHEMA = pa.schema(
    [
        RECORD_SCHEMA.field(n)
        for n in ("record_id", "task", "split", "video", "source", "prompt", "answer")
    ]
    + [
        CLIP_SCHEMA.field("num_frames"),
        CLIP_SCHEMA.field("timestamps"),
        CLIP_SCHEMA.field("frame_indices"),
    ]
    + [RECORD_SCHEMA.field("input_ids"), RECORD_SCHEMA.field("labels")]
    + [CLIP_SCHEMA.field(n) for n in CLIP_COLUMNS_IN_SAMPLES[3:]]
    + [RECORD_SCHEMA.field("clip_key")]
)

FAILURE_FIELDS = ("video", "record_id", "task", "split", "stage", "reason")


class DatasetVersionError(ValueError):
    """A preprocessed dataset written in a layout this code does not read."""


# -- failures -----------------------------------------------------------------------------------
def failure_row(
    video: str | None, stage: str, reason: str, record: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """One row of the failures table (``record``: the record's ``record_id``, ``task``, ``split``)."""
    record = record or {}
    row = {
        "video": video,
        "record_id": record.get("record_id"),
        "task": record.get("task"),
        "split": record.get("split"),
        "stage": stage,
        "reason": reason,
    }
    return row | extra


def append_failures(out: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows to ``failures.jsonl``; returns how many."""
    n = 0
    with (Path(out) / FAILURES_FILE).open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_failures(out: str | Path) -> list[dict[str, Any]]:
    """The failures table."""
    path = Path(out) / FAILURES_FILE
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


# -- writing ------------------------------------------------------------------------------------
def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, str(tmp), compression="zstd")
    os.replace(tmp, path)


def clip_path(out: str | Path, key: str) -> Path:
    """Where the clip with ``key`` is stored."""
    return Path(out) / CLIPS_DIR / f"{key}.parquet"


def write_clip(out: str | Path, row: dict[str, Any]) -> Path:
    """Store one clip row (CLIP_SCHEMA), atomically: a reader sees the whole clip or none."""
    path = clip_path(out, row["clip_key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(pa.Table.from_pylist([row], schema=CLIP_SCHEMA), path)
    return path


def stored_clip_keys(out: str | Path) -> set[str]:
    """Keys of the clips stored under ``out``."""
    folder = Path(out) / CLIPS_DIR
    return {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()


def read_clip_meta(out: str | Path, key: str) -> dict[str, Any]:
    """A stored clip's row without its pixels."""
    return pq.read_table(str(clip_path(out, key)), columns=CLIP_META_COLUMNS).to_pylist()[0]


def write_records(out: str | Path, part: int, rows: list[dict[str, Any]]) -> Path | None:
    """Store a worker's record rows (RECORD_SCHEMA) as ``samples/part-<part>.parquet``."""
    if not rows:
        return None
    path = Path(out) / SAMPLES_DIR / f"part-{part:06d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)
    return path


def prune_clips(out: str | Path, keep: set[str]) -> int:
    """Delete stored clips no record refers to any more; returns how many."""
    gone = 0
    for key in stored_clip_keys(out) - keep:
        clip_path(out, key).unlink(missing_ok=True)
        gone += 1
    return gone


# -- manifest -----------------------------------------------------------------------------------
def write_manifest(out: str | Path, manifest: dict[str, Any]) -> None:
    """``manifest.json`` with this layout's schema version."""
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    (Path(out) / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_manifest(out: str | Path) -> dict[str, Any]:
    """Read ``OUT/manifest.json``.

    Raises:
        FileNotFoundError: when ``out`` is not a preprocessing output folder.
        DatasetVersionError: when it was written in another layout (saying how to rebuild it).
    """
    path = Path(out) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a preprocessed dataset (no manifest.json)")
    manifest = json.loads(path.read_text())
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetVersionError(
            f"{path}: schema version {version}, this code reads {SCHEMA_VERSION} (each clip's "
            "pixels stored once, in clips/, pixel-major). Rebuild the dataset: crashchat preprocess "
            f"--annotations ... --video-root ... --model ... --out {out}"
        )
    return manifest


def pixel_norm(manifest: dict[str, Any]) -> PixelNorm:
    """The pixel normalisation recorded in a manifest."""
    return PixelNorm(**manifest["pixel_norm"])


# -- reading and joining ------------------------------------------------------------------------
class ClipStore:
    """Joins record rows with their clips' columns, reading each clip once while it is cached.

    Readers stream the small record rows; each worker (a training worker, an inference actor)
    joins them here, so pixels go from disk to the worker that uses them and nowhere else.
    Records of one clip are stored next to each other, so a small cache serves all of them.

    Args:
        out: Preprocessing output folder.
        cache_clips: Clips kept in memory (least recently used ones are dropped).
    """

    def __init__(self, out: str | Path, cache_clips: int = 16) -> None:
        self.out = Path(out)
        self.cache_clips = cache_clips
        self._cache: dict[str, dict[str, Any]] = {}
        self.reads = 0

    def clip(self, key: str) -> dict[str, Any]:
        """The clip's columns (those a joined sample carries)."""
        if key in self._cache:
            self._cache[key] = self._cache.pop(key)  # most recently used goes last
            return self._cache[key]
        row = pq.read_table(str(clip_path(self.out, key)), columns=list(CLIP_COLUMNS_IN_SAMPLES))
        self._cache[key] = row.to_pylist()[0]
        self.reads += 1
        while len(self._cache) > self.cache_clips:
            self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def attach(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows with their clip's columns (rows that already have pixels are left as they are)."""
        return [r if "pixel_values" in r else r | self.clip(r["clip_key"]) for r in rows]

    def attach_table(self, records: pa.Table) -> pa.Table:
        """A table of record rows joined with their clips (SAMPLE_SCHEMA)."""
        return pa.Table.from_pylist(self.attach(records.to_pylist()), schema=SAMPLE_SCHEMA)


def read_samples(
    out: str | Path, tasks: list[str] | None = None, splits: list[str] | None = None
) -> Any:
    """The records (no pixels) as a Ray Data dataset, for ``get_dataset_shard`` and batch
    inference; join them with a :class:`ClipStore` where they are used.

    Args:
        out: Preprocessing output folder.
        tasks: Keep only these task keys (a training mixture), default all.
        splits: Keep only these splits, default all.
    """
    import ray.data
    from ray.data.expressions import col

    load_manifest(out)
    # Ray 2.60's default (V2) Parquet reader starts a pool of 32 FooterReader actors, spread
    # over the nodes, on every execution: each training epoch, validation and evaluation. A
    # records table is a few small files; the V1 reader lists them in the driver. Measured on
    # a 3-node local cluster (benchmarks/samples_read.py): 6.5 s cold and 2-4 s warm per read
    # with V2, 1.8 s and 0.2 s with V1. The reader is chosen here, when the plan is built.
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(str(Path(out) / SAMPLES_DIR), schema=RECORD_SCHEMA)
    finally:
        ctx.use_datasource_v2 = v2
    # Arrow-native predicates: a Python row filter would turn every row into a dict on the CPU
    # the training workers need (train_overhead ratio 0.70 -> 1.03 here).
    keep = None
    if tasks is not None:
        keep = col("task").is_in(sorted(set(tasks)))
    if splits is not None:
        by_split = col("split").is_in(sorted(set(splits)))
        keep = by_split if keep is None else keep & by_split
    return ds if keep is None else ds.filter(expr=keep)


def read_records_table(out: str | Path) -> pa.Table:
    """All record rows, without pixels (counts, answers, token lengths)."""
    load_manifest(out)
    return pq.read_table(str(Path(out) / SAMPLES_DIR), schema=RECORD_SCHEMA)


def read_samples_table(out: str | Path) -> pa.Table:
    """All samples joined with their clips, as one Arrow table (small datasets, tests)."""
    return ClipStore(out, cache_clips=4).attach_table(read_records_table(out))


def pack_pixels(pixels: np.ndarray) -> bytes:
    """A clip's uint8 patches (patches x values, channel-major) as stored: pixel-major."""
    n, dim = pixels.shape
    if dim % CHANNELS:
        raise ValueError(f"patch of {dim} values is not {CHANNELS} equal channel planes")
    return pixels.reshape(n, CHANNELS, dim // CHANNELS).transpose(0, 2, 1).tobytes()


def unpack_pixels(data: bytes, shape: list[int]) -> np.ndarray:
    """The stored bytes of :func:`pack_pixels` back as the processor's patches."""
    n, dim = shape
    stored = np.frombuffer(data, dtype=np.uint8).reshape(n, dim // CHANNELS, CHANNELS)
    return np.ascontiguousarray(stored.transpose(0, 2, 1)).reshape(n, dim)


def row_to_model_inputs(
    row: dict[str, Any], norm: PixelNorm, with_labels: bool = True
) -> dict[str, torch.Tensor]:
    """Tensors (batch of one) for a sample row, ready for ``model(**inputs)``."""
    pixels = unpack_pixels(row["pixel_values"], [int(x) for x in row["pixel_shape"]])
    labels = [int(x) for x in row["labels"]] if with_labels else None
    return to_model_inputs(
        [int(x) for x in row["input_ids"]],
        pixels,
        [int(x) for x in row["video_grid_thw"]],
        int(row["video_merge_size"]),
        [bool(x) for x in row["video_compression_mask"]],
        norm,
        labels,
    )


def collate_rows(
    rows: list[dict[str, Any]], norm: PixelNorm, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Batch rows: right-pad ids and labels, concatenate the videos' patches in row order."""
    import torch

    singles = [row_to_model_inputs(r, norm) for r in rows]
    length = max(s["input_ids"].shape[1] for s in singles)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, s in enumerate(singles):
        n = s["input_ids"].shape[1]
        ids[i, :n] = s["input_ids"][0]
        labels[i, :n] = s["labels"][0]
        mask[i, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values_videos": torch.cat([s["pixel_values_videos"] for s in singles]),
        "video_grid_thw": torch.cat([s["video_grid_thw"] for s in singles]),
        "video_merge_sizes": torch.cat([s["video_merge_sizes"] for s in singles]),
        "video_compression_mask": torch.cat([s["video_compression_mask"] for s in singles]),
    }


# -- sizes --------------------------------------------------------------------------------------
PATCH_BYTES = 3 * 14 * 14  # a uint8 RGB patch of the 14-pixel grid


def estimate_dataset_bytes(
    tokens: dict[str, Any], clips: int, records: float, data: str | Path | None = None
) -> dict[str, Any]:
    """Disk a preprocessed dataset takes: each clip's pixels once, token ids per record.

    Args:
        tokens: ``visual_tokens_per_clip`` and ``sequence_tokens`` of a typical clip.
        clips: Clips in the dataset.
        records: Question-answer records in the dataset.
        data: A preprocessed dataset; its real bytes replace the estimate.
    """
    per_clip = int(tokens["visual_tokens_per_clip"]) * 4 * PATCH_BYTES  # merge 2: 4 patches a token
    per_record = 8 * int(tokens["sequence_tokens"])  # int32 input ids and labels
    source = "estimate (uncompressed uint8 pixels once per clip, token ids per record)"
    if data is not None:
        clip_files = list((Path(data) / CLIPS_DIR).glob("*.parquet"))
        record_files = list((Path(data) / SAMPLES_DIR).glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in record_files)
        if clip_files and rows:
            per_clip = int(sum(f.stat().st_size for f in clip_files) / len(clip_files))
            per_record = int(sum(f.stat().st_size for f in record_files) / rows)
            source = f"measured on {data} ({len(clip_files)} clips, {rows} records, zstd Parquet)"
    total = per_clip * clips + per_record * records
    return {
        "layout": "each clip's pixels once (clips/), token ids per record (samples/)",
        "bytes_per_clip": per_clip,
        "bytes_per_record": int(total / max(records, 1)),
        "records": int(records),
        "clips": int(clips),
        "dataset_gb": total / 1e9,
        "source": source,
    }
