"""``crashchat checkpoint``: verify and export platform checkpoints, import upstream weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crashchat.cli.common import fail

app = typer.Typer(
    no_args_is_help=True, help="Fine-tuned checkpoints: verify, import upstream weights."
)


@app.command("verify")
def checkpoint_verify(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
) -> None:
    """Check every file of a checkpoint against its manifest (exit 1 naming the bad file)."""
    from crashchat.models.checkpoint import CheckpointError, verify_checkpoint

    try:
        meta = verify_checkpoint(path)
    except CheckpointError as exc:
        fail(str(exc), code=1)
    print(json.dumps({"ok": True, "path": str(path), **meta}, indent=2))


@app.command("export")
def checkpoint_export(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the merged standalone model.")],
) -> None:
    """Merge a checkpoint into its base and write a standalone native model folder."""
    from crashchat.models.checkpoint import CheckpointError, export_merged

    try:
        info = export_merged(path, out)
    except CheckpointError as exc:
        fail(str(exc), code=1)
    print(json.dumps(info, indent=2))


@app.command("import-base")
def checkpoint_import_base(
    src: Annotated[Path, typer.Option(help="Upstream VideoLLaMA3 folder (custom-code layout).")],
    out: Annotated[Path, typer.Option(help="Native VideoLlama3ForConditionalGeneration folder.")],
) -> None:
    """Convert upstream VideoLLaMA3 weights to transformers' native layout, shard by shard."""
    from crashchat.models.upstream import UpstreamFormatError, import_base

    try:
        print(json.dumps(import_base(src, out), indent=2))
    except (UpstreamFormatError, OSError) as exc:
        fail(str(exc))


@app.command("import")
def checkpoint_import(
    lora: Annotated[Path, typer.Option(help="Published PEFT adapter folder.")],
    out: Annotated[Path, typer.Option(help="Platform checkpoint folder to write.")],
    base_model: Annotated[str, typer.Option(help="Native base model it applies to.")],
    non_lora_trainables: Annotated[
        Path | None, typer.Option(help="non_lora_trainables.bin (projector weights).")
    ] = None,
    mixture: Annotated[str | None, typer.Option(help="Mixture it was trained on.")] = None,
) -> None:
    """Convert a published CrashChat checkpoint (LoRA + projector pickle) to the platform format."""
    from crashchat.data.tasks import get_mixture
    from crashchat.models.upstream import UpstreamFormatError, import_checkpoint

    tasks = list(get_mixture(mixture).tasks) if mixture else None
    try:
        info = import_checkpoint(lora, non_lora_trainables, out, base_model, tasks, mixture)
    except (UpstreamFormatError, OSError) as exc:
        fail(str(exc))
    print(json.dumps(info, indent=2))
