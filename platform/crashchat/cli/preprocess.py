"""``crashchat preprocess`` (and ``jobs/preprocess.py``): videos to model-ready Parquet on Ray Data."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from crashchat.cli.common import AddressOpt, SetOpt, console, fail, load_config
from crashchat.ray_utils import resolve_address


def preprocess(
    annotations: Annotated[
        list[Path], typer.Option(help="Annotation file or folder (repeatable).")
    ],
    video_root: Annotated[
        Path, typer.Option(help="Folder the annotations' video paths are relative to.")
    ],
    model: Annotated[
        str, typer.Option(help="Model directory (or hub id) whose processor prepares inputs.")
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder: samples/, manifest.json, failures.jsonl.")
    ],
    fps: Annotated[
        float | None, typer.Option(help="Frames sampled per second [default: 10].")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="Frame cap per clip [default: 96].")
    ] = None,
    address: AddressOpt = None,
    strict: Annotated[
        bool, typer.Option(help="Exit non-zero when any clip or record failed.")
    ] = False,
    config: Annotated[Path | None, typer.Option(help="YAML with a PreprocessConfig.")] = None,
    set_: SetOpt = None,
) -> None:
    """Decode and preprocess videos with Ray Data into training-ready Parquet samples."""
    from crashchat.config import PreprocessConfig
    from crashchat.video.pipeline import PreprocessInputs, run_preprocess

    overrides = list(set_ or [])
    overrides += [f"fps={fps}"] if fps is not None else []
    overrides += [f"max_frames={max_frames}"] if max_frames is not None else []
    overrides += ["strict=true"] if strict else []
    cfg = load_config(config, PreprocessConfig, overrides)
    ray_address = resolve_address(address)
    result = run_with_progress(
        lambda cb: run_preprocess(
            cfg, PreprocessInputs(list(annotations), video_root, model, out), ray_address, cb
        )
    )
    report_preprocess(result, cfg.strict)


def run_with_progress(job: Callable[[Callable[[int, int, int], None]], Any]) -> Any:
    """Run ``job(progress_callback)`` under a rich progress bar: clips done, failed, clips/s."""
    start = time.perf_counter()
    columns = (
        TextColumn("clips"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]:.2f} clips/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("clips", total=None, failed=0, rate=0.0)

        def update(done: int, failed: int, total: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-6)
            bar.update(task, completed=done, total=total, failed=failed, rate=rate)

        # Ray prints worker notices to stdout; keep stdout for the result JSON alone.
        with contextlib.redirect_stdout(sys.stderr):
            return job(update)


def report_preprocess(result: Any, strict: bool) -> None:
    """Print the summary and failures; exit non-zero in strict mode when anything failed."""
    print(json.dumps(result.summary(), indent=2))
    for f in result.failures[:50]:
        console.print(
            "[yellow]failed[/yellow] "
            + escape(f"{f.get('video') or f.get('file')} [{f['stage']}]: {f['reason']}"),
            highlight=False,
        )
    if len(result.failures) > 50:
        console.print(f"... {len(result.failures) - 50} more in {result.out / 'failures.jsonl'}")
    if strict and result.failures:
        fail(
            f"{len(result.failures)} failure(s) in strict mode (see {result.out / 'failures.jsonl'})",
            code=1,
        )
