"""The ``crashchat`` command line. Thin: parse arguments, call the library, report.

One module per command group (``data``, ``model``, ``checkpoint``, ``tracking``, ``serve``,
``cluster``) or per top-level command (``preprocess``, ``train``, ``plan``, ``evaluate`` with
``compare``/``learning-bar``/``metrics``, ``pipeline``, ``submit``); shared helpers live in
``crashchat.cli.common``. This module only assembles them into :data:`app`.

The command layer is also the jobs': ``jobs/<job>.py`` calls :func:`run_command` with its
command's name, so a job takes exactly the options and defaults of ``crashchat <command>``.
Entry points: ``crashchat`` (console script, :func:`main`), ``python -m crashchat.cli``.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from crashchat.cli import (
    checkpoint,
    cluster,
    data,
    evaluate,
    model,
    pipeline,
    plan,
    preprocess,
    serve,
    submit,
    tracking,
    train,
)

__all__ = ["app", "command", "main", "run_command"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="CrashChat Platform: train, evaluate and serve CrashChat on Ray.",
)
app.command("preprocess")(preprocess.preprocess)
app.command("train")(train.train)
app.command("plan")(plan.plan_cmd)
app.command("evaluate")(evaluate.evaluate)
app.command("compare")(evaluate.compare)
app.command("learning-bar")(evaluate.learning_bar_cmd)
app.command("metrics")(evaluate.metrics)
app.command("pipeline")(pipeline.pipeline)
app.command("submit", context_settings=submit.CONTEXT)(submit.submit_cmd)
app.add_typer(data.app, name="data")
app.add_typer(model.app, name="model")
app.add_typer(checkpoint.app, name="checkpoint")
app.add_typer(tracking.app, name="tracking")
app.add_typer(serve.app, name="serve")
app.add_typer(cluster.app, name="cluster")


@app.command("version")
def version() -> None:
    """Print the platform version."""
    from crashchat import __version__

    print(__version__)


def command(name: str) -> Any:
    """The Click command of ``crashchat <name>`` (``"train"``, ``"serve deploy"``).

    Raises:
        KeyError: for a name the CLI does not have.
    """
    found: Any = typer.main.get_command(app)
    for part in name.split():
        commands = getattr(found, "commands", {})
        if part not in commands:
            raise KeyError(f"no command {name!r} in crashchat")
        found = commands[part]
    return found


def run_command(name: str, argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run ``crashchat <name>`` with ``argv`` (default: this process's arguments); returns its
    exit status.

    This is how a job script is the CLI command: ``sys.exit(run_command("train"))`` in
    ``jobs/finetune.py`` parses ``python jobs/finetune.py --config ...`` exactly as
    ``crashchat train --config ...`` would (``--help`` shows the same options).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        command(name).main(args=args, prog_name=prog_name or sys.argv[0], standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
