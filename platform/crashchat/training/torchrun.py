"""The same training loop without Ray, launched by ``torchrun`` (baseline for benchmarks).

::

    torchrun --standalone --nproc_per_node 2 -m crashchat.training.torchrun \\
        --spec spec.json --data PREPROCESSED --storage OUT [--resume OUT/checkpoint_NNNNN]

Each rank reads its rows of the preprocessed Parquet directly (rows ``rank::world``, equal counts)
and checkpoints go to ``OUT/checkpoint_NNNNN``. ``--resume`` continues from one of them, as Ray
Train does after a restart (same number of processes). No tracking server beyond the spec's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from crashchat.training.loop import RunSpec, Worker
from crashchat.video.samples import SAMPLE_SCHEMA, read_samples_table


class LocalShard:
    """Rows of one split for one rank, iterated like a Ray Data shard."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def iter_batches(
        self,
        batch_size: int,
        batch_format: str = "pyarrow",
        drop_last: bool = False,
        prefetch_batches: int = 1,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Iterator[pa.Table]:
        order = np.arange(len(self.rows))
        if local_shuffle_buffer_size:
            order = np.random.default_rng(local_shuffle_seed).permutation(len(self.rows))
        end = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, end, batch_size):
            batch = [self.rows[j] for j in order[i : i + batch_size]]
            yield pa.Table.from_pylist(batch, schema=SAMPLE_SCHEMA)


class TorchrunEnv:
    """Rank, shards and checkpoint reporting for a torchrun process group."""

    def __init__(
        self,
        data: Path,
        tasks: list[str],
        splits: dict[str, str],
        storage: Path,
        resume: Path | None = None,
    ) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.storage = storage
        self.resume = resume
        self.reports = 0
        table = read_samples_table(data)
        rows = [r for r in table.to_pylist() if r["task"] in tasks]
        self.shards = {}
        for name, split in splits.items():
            part = [r for r in rows if r["split"] == split]
            per_rank = len(part) // self.world
            self.shards[name] = LocalShard(part[self.rank :: self.world][:per_rank])

    def shard(self, name: str) -> LocalShard:
        return self.shards[name]

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        yield self.resume

    def report(self, metrics: dict[str, Any], ckpt_dir: Path) -> None:
        import torch.distributed as dist

        self.reports += 1
        dest = self.storage / f"checkpoint_{self.reports:05d}"
        shutil.copytree(ckpt_dir, dest, dirs_exist_ok=True)  # ranks' files merge, as in Ray
        if self.rank == 0:
            (dest / "metrics.json").write_text(json.dumps(metrics))
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="training loop under torchrun")
    parser.add_argument("--spec", required=True, help="RunSpec JSON")
    parser.add_argument("--data", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--resume", default=None, help="checkpoint folder to continue from")
    args = parser.parse_args(argv)
    spec = RunSpec(**json.loads(Path(args.spec).read_text()))
    cfg = spec.config
    env = TorchrunEnv(
        Path(args.data),
        spec.tasks,
        {"train": cfg.get("train_split", "train"), "val": cfg.get("val_split", "val")},
        Path(args.storage),
        Path(args.resume) if args.resume else None,
    )
    worker = Worker(spec, env)
    worker.run()
    if env.rank == 0:
        (Path(args.storage) / "result.json").write_text(json.dumps(asdict(worker.state)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
