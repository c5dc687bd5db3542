"""A small client for the endpoint: send videos in bulk to ``/v1/batch`` and collect the lines.

Used by ``crashchat serve batch`` (and ``make demo``); any HTTP client can do the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


def videos_from(paths: list[Path]) -> list[Path]:
    """Video files given directly or found (recursively) in the given folders, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(p)
    return out


def videos_of_split(annotations: Path, video_root: Path, split: str) -> list[Path]:
    """The clips the annotation files of ``split`` refer to, each once."""
    from crashchat.data.validation import collect_samples

    files, _issues = collect_samples([annotations])
    seen: dict[str, Path] = {}
    for f in files:
        for s in f.samples:
            if s.split == split:
                seen.setdefault(s.video, video_root / s.video)
    return [seen[k] for k in sorted(seen)]


def batch_items(videos: list[Path], tasks: str, checkpoint: str) -> list[dict[str, Any]]:
    """``/v1/batch`` items for ``videos`` (absolute paths, ids are the file names)."""
    return [
        {
            "id": v.name,
            "video_path": os.path.abspath(v),
            "tasks": tasks,
            "checkpoint": checkpoint,
        }
        for v in videos
    ]


def send_batch(
    url: str, items: list[dict[str, Any]], token: str | None = None, timeout_s: float = 3600
) -> Iterator[dict[str, Any]]:
    """POST ``items`` to ``url``/v1/batch and yield each NDJSON line as it arrives.

    Raises:
        RuntimeError: when the endpoint refuses the whole batch (status and detail).
    """
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with requests.post(
        url.rstrip("/") + "/v1/batch", json=items, headers=headers, stream=True, timeout=timeout_s
    ) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.text[:500]}")
        for line in resp.iter_lines():
            if line:
                yield json.loads(line)
