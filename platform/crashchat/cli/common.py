"""What every command module shares: the console, failing with a message, configs, options.

The command modules import this one, never the package ``crashchat.cli`` (which imports them):
so the command layer has no import cycle, and nothing imports ``crashchat.cli`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

# Messages, tables and progress go to stderr; stdout carries each command's JSON result alone.
console = Console(stderr=True)

M = TypeVar("M", bound=BaseModel)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: usage, 1: the work failed).

    The message is printed as text (no markup) on one logical line, so a job's logs keep it
    whole for anyone searching them.
    """
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def load_config(path: Path | None, model: type[M], overrides: list[str] | None) -> M:
    """The config from ``path`` (or defaults) with ``key=value`` overrides; exit 2 naming the problem."""
    from crashchat.config import ConfigError, build_config

    try:
        return build_config(path, model, overrides)
    except ConfigError as exc:
        fail(str(exc))


SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: key=value.")
]
# One --address for every command that runs on Ray, in the CLI and in jobs/*.py alike; None is
# resolved by crashchat.ray_utils.resolve_address.
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="'local' starts Ray here; 'auto' or HOST:PORT joins a cluster. Default: join the "
        "cluster inside a Ray job or when RAY_ADDRESS is set, else local."
    ),
]
