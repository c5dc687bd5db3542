"""``crashchat submit``: run a job (one of the CLI's commands) on a cluster via Ray's Jobs API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from crashchat.cli.common import console, fail

# Every option submit does not know goes to the job: pass them through unparsed.
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def submit_cmd(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="preprocess | train | evaluate | serve | pipeline")],
    address: Annotated[
        str, typer.Option(help="Jobs API of the cluster, e.g. http://HEAD:8265.")
    ] = "http://127.0.0.1:8265",
    ship: Annotated[
        bool, typer.Option(help="Ship the project (working_dir + crashchat); off for images.")
    ] = True,
    env: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the job's environment (repeatable).")
    ] = None,
    follow_logs: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Stream logs and exit with the status.")
    ] = True,
    timeout: Annotated[float | None, typer.Option(help="Stop the job after this many s.")] = None,
    project: Annotated[
        Path | None,
        typer.Option(
            help="The checkout to submit from. Default: $CRASHCHAT_PROJECT, else the current "
            "folder or a parent holding jobs/ and pyproject.toml, else the package's own; "
            "without one the job runs python -m crashchat.cli."
        ),
    ] = None,
) -> None:
    """Submit jobs/<job>.py to a Ray cluster; every other option goes to the job (--config ...).

    The job runs the CLI command of the same name (``serve``: ``serve deploy``, ``train``:
    ``jobs/finetune.py``), so it takes that command's options.
    """
    from crashchat.local_cluster import enable_token_auth
    from crashchat.submission import SubmissionError, exit_code, follow, submit_job

    enable_token_auth()
    extra = dict(e.split("=", 1) for e in env or [] if "=" in e)
    try:
        client, job_id = submit_job(address, job, list(ctx.args), ship, extra, project=project)
    except (SubmissionError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    console.print(f"submitted {job_id} to {address}")
    if not follow_logs:
        print(json.dumps({"job_id": job_id, "address": address}))
        return
    status = follow(client, job_id, sys.stderr.write, timeout)
    print(json.dumps({"job_id": job_id, "address": address, "status": status}))
    raise typer.Exit(exit_code(status))
