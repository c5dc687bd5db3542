"""``crashchat data``: validate annotation files, synthesise crash clips."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crashchat.cli.common import SetOpt, console, load_config

app = typer.Typer(no_args_is_help=True, help="Annotation files and synthetic data.")


@app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="Annotation files or folders of them.")],
    video_root: Annotated[
        Path | None,
        typer.Option(help="Check that every referenced video exists under this folder."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Validate annotation files; exit 0 only when every file is valid."""
    from crashchat.data.validation import validate_paths

    report, _ = validate_paths(list(paths), video_root=video_root)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        table = Table(title="Records per task")
        table.add_column("task")
        table.add_column("records", justify="right")
        for task, n in report.to_json()["per_task"].items():
            table.add_row(task, str(n))
        Console().print(table)
        for issue in report.errors[:200]:
            console.print(f"[red]✗[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)
        if len(report.errors) > 200:
            console.print(f"... {len(report.errors) - 200} more problems (use --json for all)")
        status = (
            "[green]valid[/green]"
            if report.valid
            else f"[red]{len(report.errors)} problem(s)[/red]"
        )
        console.print(f"{report.files} file(s), {report.records} record(s): {status}")
    raise typer.Exit(0 if report.valid else 1)


@app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (videos/ and annotation files).")],
    videos: Annotated[int | None, typer.Option(help="Number of clips.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with a SynthConfig.")] = None,
    set_: SetOpt = None,
) -> None:
    """Generate synthetic crash clips (mp4) and CrashChat-format annotations."""
    from crashchat.config import SynthConfig
    from crashchat.data.synth import generate_dataset

    overrides = list(set_ or [])
    if videos is not None:
        overrides.append(f"videos={videos}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    cfg = load_config(config, SynthConfig, overrides)
    start = time.perf_counter()
    with Progress(
        TextColumn("synthesising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("clips", total=cfg.videos)
        result = generate_dataset(out, cfg, on_clip=lambda _s: bar.advance(task))
    summary = result.summary() | {"seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(summary, indent=2))
