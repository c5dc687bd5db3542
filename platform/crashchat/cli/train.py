"""``crashchat train`` (and ``jobs/finetune.py``): LoRA fine-tuning on Ray Train + DeepSpeed."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from crashchat.cli.common import AddressOpt, SetOpt, console, fail, load_config
from crashchat.ray_utils import in_ray_job, leave_job_working_dir, resolve_address


def train(
    data: Annotated[Path, typer.Option(help="Preprocessed dataset (crashchat preprocess --out).")],
    model: Annotated[str, typer.Option(help="Base model directory or hub id (native layout).")],
    output: Annotated[Path, typer.Option(help="Checkpoints land in OUTPUT/<mixture>/.")],
    config: Annotated[Path | None, typer.Option(help="YAML with a TrainConfig.")] = None,
    mixture: Annotated[
        list[str] | None,
        typer.Option(
            help="A mixture: a task key, linguistic_centric, perception_centric, heterogeneous, "
            "or task keys joined by commas (repeatable: one run each)."
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="monotask | homogeneous | heterogeneous | all [default: all]."),
    ] = None,
    address: AddressOpt = None,
    set_: SetOpt = None,
) -> None:
    """LoRA fine-tuning with Ray Train + DeepSpeed; one MLflow run and checkpoint per mixture."""
    from crashchat.config import TrainConfig
    from crashchat.training.runner import ResourceError, TrainInputs, plan_mixtures, run_training

    cfg = load_config(config, TrainConfig, set_)
    try:
        if mixture and strategy:
            raise ValueError("give --mixture or --strategy, not both")
        mixtures = (
            [m for name in mixture for m in plan_mixtures(name, None)]
            if mixture
            else plan_mixtures(None, strategy)
        )
    except (KeyError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    if not (data / "manifest.json").is_file():
        fail(f"{data} is not a preprocessed dataset (no manifest.json); run crashchat preprocess")
    if in_ray_job():
        # The job's working_dir copy may vanish under it: absolute paths, then leave it.
        data, output = data.resolve(), output.resolve()
        model = str(Path(model).resolve()) if Path(model).exists() else model
        leave_job_working_dir(output)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            results, note = run_training(
                cfg,
                TrainInputs(data, model, output, mixtures),
                resolve_address(address),
                on_event=lambda msg: console.print(msg, highlight=False),
            )
    except ResourceError as exc:
        fail(str(exc))
    report_training(results, note)


def report_training(results: list[Any], note: str | None) -> None:
    """Print one line per mixture (run id, checkpoint) and a JSON summary; exit 1 on failures."""
    table = Table("mixture", "steps", "best eval loss", "MLflow run", "checkpoint")
    for r in results:
        loss = f"{r.best_eval_loss:.4f}" if r.best_eval_loss is not None else "-"
        table.add_row(
            r.mixture,
            str(r.steps),
            loss,
            r.run_id or "-",
            r.checkpoint or f"[red]{escape(str(r.error))}",
        )
    console.print(table)
    if note:
        console.print(f"[yellow]tracking:[/yellow] {note}", highlight=False)
    print(json.dumps({"results": [r.to_json() for r in results], "tracking": note}, indent=2))
    failed = [r.mixture for r in results if r.error]
    if failed:
        fail(f"training failed for {', '.join(failed)}", code=1)
