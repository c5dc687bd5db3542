"""``crashchat plan``: the resources of a fine-tuning run before it starts."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crashchat.cli.common import SetOpt, console, fail, load_config


def plan_cmd(
    config: Annotated[
        Path | None, typer.Option(help="YAML with a TrainConfig (plan: section).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model folder or config.json, native or upstream [default: plan.model]."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="A preprocessed dataset: use its real tokens and bytes.")
    ] = None,
    clips: Annotated[int | None, typer.Option(help="Clips in the dataset to plan for.")] = None,
    gpu_memory_gb: Annotated[
        float | None, typer.Option(help="Memory of one GPU, GB [default: plan.gpu_memory_gb, 80].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole plan as JSON.")] = False,
    set_: SetOpt = None,
) -> None:
    """The resources of a fine-tuning run before it starts; exit 1 when it does not fit.

    Parameters, tokens, GPU memory, disk and serving memory, with the numbers that do not fit.
    """
    from crashchat.config import TrainConfig
    from crashchat.planning.resource_plan import build_plan, resolve_model

    overrides = list(set_ or [])
    if gpu_memory_gb is not None:
        overrides.append(f"plan.gpu_memory_gb={gpu_memory_gb}")
    cfg = load_config(config, TrainConfig, overrides)
    if data is not None and clips is not None:
        fail("give --data or --clips, not both")
    if data is not None and not (data / "manifest.json").is_file():
        fail(f"{data} is not a preprocessed dataset (no manifest.json)")
    try:
        source = resolve_model(model, cfg, config)
        with contextlib.redirect_stdout(sys.stderr):
            plan = build_plan(cfg, source, data, clips)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print_plan(plan)
    for problem in plan.problems:
        console.print(f"[red]does not fit:[/red] {problem}", highlight=False)
    if not plan.fits:
        raise typer.Exit(1)


def print_plan(plan: Any) -> None:
    """The plan's key figures as a table (about 60 lines: one row per figure, kept in one list)."""
    p, t, m, s, v = (
        plan.parameters,
        plan.tokens["training"],
        plan.training_memory,
        plan.storage,
        plan.serving_memory,
    )
    table = Table("", "value", title=f"Resource plan: {plan.model['source']}")
    rows = [
        (
            "parameters",
            f"{p['total'] / 1e9:.2f} B (language {p['language'] / 1e9:.2f} B, vision {p['vision'] / 1e6:.0f} M)",
        ),
        (
            "trainable",
            f"{p['trainable'] / 1e6:.1f} M (LoRA {p['lora'] / 1e6:.1f} M, projector and other {p['trainable_non_lora'] / 1e6:.1f} M)",
        ),
        (
            "visual tokens",
            f"{t['visual_tokens_per_frame']} per frame x {t['frames']} frames = {t['visual_tokens_per_clip']} per clip",
        ),
        ("sequence", f"{t['sequence_tokens']} tokens (budget {t['max_visual_tokens']} visual)"),
        (
            "GPU memory, training",
            f"{m['total_gb']:.1f} of {m['gpu_memory_gb']:g} GB at micro batch {m['micro_batch_size']} (fits up to {m['max_micro_batch_size']})",
        ),
        (
            "  weights / states",
            f"{m['frozen_weights_gb']:.1f} / {m['model_states_gb']:.2f} GB ({m['model_states_source']})",
        ),
        (
            "  activations",
            f"{m['activations_gb']:.1f} GB (checkpointing {'on' if m['gradient_checkpointing'] else 'off'}; on {m['activations_with_checkpointing_gb']:.1f}, off {m['activations_without_checkpointing_gb']:.1f})",
        ),
        ("  logits / vision", f"{m['logits_gb']:.2f} / {m['vision_forward_gb']:.2f} GB"),
        (
            "preprocessed data",
            f"{s['bytes_per_record'] / 1e6:.1f} MB per record, {s['dataset_gb']:.0f} GB for {s['records']} records",
        ),
        (
            "checkpoints",
            f"{s['checkpoint_gb']:.2f} GB each, {s['checkpoints_kept']} kept: {s['retention_gb']:.1f} GB",
        ),
        (
            "GPU memory, serving",
            f"{v['total_gb']:.1f} of {v['gpu_memory_gb']:g} GB per replica, batch {v['batch_size']} x {v['tokens_per_request']} tokens",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
