"""Submit the platform's Ray job entrypoints (``jobs/*.py``) through Ray's Jobs API.

The runtime environment ships the project: the repository as ``working_dir`` (without virtual
environments, runs, caches and VCS data) and the ``crashchat`` package as a ``py_module`` so
every worker imports the same code. On an image that already has the platform installed,
``ship=False`` sends nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOBS = {
    "preprocess": "jobs/preprocess.py",
    "train": "jobs/finetune.py",
    "evaluate": "jobs/evaluate.py",
    "serve": "jobs/serve.py",
    "pipeline": "jobs/pipeline.py",
}
EXCLUDES = [
    ".venv/",
    "runs/",
    ".cache/",
    ".git/",
    "**/__pycache__/",
    "*.mp4",
    "*.db",
    "*.safetensors",
    ".mypy_cache/",
    ".ruff_cache/",
    ".pytest_cache/",
]
# Passed to the job so it behaves as it does here: offline hub, no telemetry.
JOB_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmissionError(RuntimeError):
    """The Jobs API refused or could not be reached; the message says which address."""


def project_root() -> Path:
    """The repository holding ``jobs/`` (the package lives in ``platform/crashchat``)."""
    here = Path(__file__).resolve()
    return here.parents[2]


def build_runtime_env(
    root: Path, ship: bool = True, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The job's runtime environment: the project shipped, or only environment variables."""
    env_vars = {**JOB_ENV, **(env or {})}
    if os.environ.get("MLFLOW_TRACKING_URI") and "MLFLOW_TRACKING_URI" not in env_vars:
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    out: dict[str, Any] = {"env_vars": env_vars}
    if ship:
        out["working_dir"] = str(root)
        out["excludes"] = list(EXCLUDES)
        out["py_modules"] = [str(root / "platform" / "crashchat")]
    return out


def entrypoint(job: str, args: list[str]) -> str:
    """``python jobs/<job>.py ARGS`` with each argument shell-quoted.

    Raises:
        KeyError: for an unknown job, naming the known ones.
    """
    import shlex

    if job not in JOBS:
        raise KeyError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    return " ".join(["python", JOBS[job], *(shlex.quote(a) for a in args)])


def submit_job(
    address: str,
    job: str,
    args: list[str],
    ship: bool = True,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
    agent_wait_s: float = 60.0,
) -> tuple[Any, str]:
    """Submit ``job`` to the Jobs API at ``address``; returns the client and the job id.

    Raises:
        SubmissionError: when the Jobs API cannot be reached or refuses the job.
    """
    from ray.job_submission import JobSubmissionClient

    command = entrypoint(job, args)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            client = JobSubmissionClient(address)
            job_id = client.submit_job(
                entrypoint=command,
                runtime_env=build_runtime_env(project_root(), ship, env),
                submission_id=submission_id,
                metadata={"crashchat_job": job},
            )
            return client, str(job_id)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            # A head that just started answers before its job agent registers: wait for it.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise SubmissionError(f"{address}: {exc}") from None


def follow(
    client: Any,
    job_id: str,
    write: Callable[[str], Any] = sys.stdout.write,
    timeout_s: float | None = None,
) -> str:
    """Stream the job's logs to ``write`` until it ends; returns its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s) if timeout_s else tail())
    except TimeoutError:
        client.stop_job(job_id)
    deadline = time.monotonic() + 60
    status = str(client.get_job_status(job_id))
    while status.rsplit(".", 1)[-1] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        status = str(client.get_job_status(job_id))
    return status.rsplit(".", 1)[-1]


def exit_code(status: str) -> int:
    """0 for SUCCEEDED, 1 for FAILED, 3 for STOPPED or anything else."""
    return {"SUCCEEDED": 0, "FAILED": 1}.get(status, 3)
