"""``crashchat tracking``: MLflow operations kept while the tracking server was unreachable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crashchat.cli.common import fail

app = typer.Typer(no_args_is_help=True, help="MLflow tracking.")


@app.command("sync")
def tracking_sync(
    path: Annotated[Path, typer.Argument(help="tracking_pending.json, or the training output.")],
    uri: Annotated[str | None, typer.Option(help="Send to this tracking URI instead.")] = None,
) -> None:
    """Send tracking operations kept while MLflow was unreachable."""
    from crashchat.tracking import sync_pending

    try:
        tracker = sync_pending(path, uri)
    except FileNotFoundError as exc:
        fail(str(exc))
    if tracker.ops:
        fail(f"{len(tracker.ops)} operations still unsent: {tracker.last_error}", code=1)
    print(json.dumps({"synced": True, "runs": tracker.run_ids}, indent=2))
