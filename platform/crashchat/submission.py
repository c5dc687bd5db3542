"""Submit the platform's jobs through Ray's Jobs API.

Each job is one CLI command (``crashchat.cli``): from a source checkout the entrypoint is the
job script (``python jobs/finetune.py ARGS``, which runs ``crashchat train``), otherwise, with the
platform installed from a wheel, the same command as a module (``python -m crashchat.cli train
ARGS``); both take the same options. The checkout is found by :func:`project_root`.

The runtime environment ships the project: the checkout as ``working_dir`` (without virtual
environments, runs, caches and VCS data) and the ``crashchat`` package as a ``py_module`` so
every worker imports the same code (without a checkout, only the installed package). On an image
that already has the platform installed, ``ship=False`` sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Job name -> its script in a checkout, and the CLI command that script runs.
JOBS = {
    "preprocess": "jobs/preprocess.py",
    "train": "jobs/finetune.py",
    "evaluate": "jobs/evaluate.py",
    "serve": "jobs/serve.py",
    "pipeline": "jobs/pipeline.py",
}
COMMANDS = {
    "preprocess": "preprocess",
    "train": "train",
    "evaluate": "evaluate",
    "serve": "serve deploy",
    "pipeline": "pipeline",
}
PROJECT_ENV = "CRASHCHAT_PROJECT"  # the checkout to submit from, when not found by itself
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
    """The Jobs API refused or could not be reached, or no checkout is where one was named;
    the message says which address or folder."""


def is_project_root(path: Path) -> bool:
    """True for a platform checkout: ``pyproject.toml``, the package and every job script."""
    needed = ["pyproject.toml", *JOBS.values(), "platform/crashchat/__init__.py"]
    return all((path / name).is_file() for name in needed)


def project_root(project: str | Path | None = None) -> Path | None:
    """The platform checkout to submit from, or None when there is none (a wheel install).

    Looked for in order: ``project`` (``crashchat submit --project``), ``$CRASHCHAT_PROJECT``,
    the current directory and its parents, then the checkout the package was imported from (an
    editable install).

    Raises:
        SubmissionError: when ``project`` or ``$CRASHCHAT_PROJECT`` names a folder that is not
            a checkout.
    """
    named = project or os.environ.get(PROJECT_ENV)
    if named:
        root = Path(named).expanduser().resolve()
        if not is_project_root(root):
            raise SubmissionError(
                f"{root}: not a platform checkout (it needs pyproject.toml, "
                f"platform/crashchat/ and {', '.join(JOBS.values())})"
            )
        return root
    here = Path.cwd().resolve()
    package_checkout = Path(__file__).resolve().parents[2]
    for candidate in (here, *here.parents, package_checkout):
        if is_project_root(candidate):
            return candidate
    return None


def build_runtime_env(
    root: Path | None, ship: bool = True, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The job's runtime environment: the project shipped, or only environment variables.

    ``root`` is the checkout (:func:`project_root`); None ships the installed package alone.
    """
    from crashchat.tracking.lineage import COMMIT_ENV, git_commit

    env_vars = {**JOB_ENV, **(env or {})}
    if os.environ.get("MLFLOW_TRACKING_URI") and "MLFLOW_TRACKING_URI" not in env_vars:
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    commit = git_commit(root) if root is not None else None
    if commit and ship:
        # The shipped copy has no .git: the job's MLflow runs learn the commit from here.
        env_vars.setdefault(COMMIT_ENV, commit)
    out: dict[str, Any] = {"env_vars": env_vars}
    if ship and root is not None:
        out["working_dir"] = str(root)
        out["excludes"] = list(EXCLUDES)
        out["py_modules"] = [str(root / "platform" / "crashchat")]
    elif ship:
        out["py_modules"] = [str(Path(__file__).resolve().parent)]
        out["excludes"] = list(EXCLUDES)
    return out


def entrypoint(job: str, args: list[str], script: bool = True) -> str:
    """The job's command line, each argument shell-quoted.

    ``python jobs/<job>.py ARGS`` with ``script`` (a checkout is shipped or on the image), else
    ``python -m crashchat.cli <command> ARGS``: the same command with the same options.

    Raises:
        KeyError: for an unknown job, naming the known ones.
    """
    if job not in JOBS:
        raise KeyError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    program = (
        ["python", JOBS[job]]
        if script
        else ["python", "-m", "crashchat.cli", *COMMANDS[job].split()]
    )
    return " ".join([*program, *(shlex.quote(a) for a in args)])


def submit_job(
    address: str,
    job: str,
    args: list[str],
    ship: bool = True,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
    agent_wait_s: float = 60.0,
    project: str | Path | None = None,
) -> tuple[Any, str]:
    """Submit ``job`` to the Jobs API at ``address``; returns the client and the job id.

    Args:
        address: The Jobs API, e.g. ``http://HEAD:8265``.
        job: A key of :data:`JOBS`.
        args: The command's options, passed through.
        ship: Ship the project (or the installed package); off for images that hold it.
        env: Extra environment variables for the job.
        submission_id: The job id to use [default: Ray's].
        agent_wait_s: How long to wait for a just-started head's job agent.
        project: The checkout to submit from [default: :func:`project_root`'s search].

    Raises:
        KeyError: for an unknown job.
        SubmissionError: when the Jobs API cannot be reached or refuses the job, or ``project``
            is not a checkout.
    """
    from ray.job_submission import JobSubmissionClient

    entrypoint(job, [])  # an unknown job fails before anything is looked up
    root = project_root(project)
    # Without shipping, the image's own install runs the command (it may hold no jobs/ folder).
    command = entrypoint(job, args, script=root is not None and ship)
    runtime_env = build_runtime_env(root, ship, env)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            client = JobSubmissionClient(address)
            job_id = client.submit_job(
                entrypoint=command,
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={"crashchat_job": job},
            )
            return client, str(job_id)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            # A head that just started answers before its job agent registers: wait for it.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise SubmissionError(f"{address}: {exc}") from None


def follow(
    client: Any,
    job_id: str,
    write: Callable[[str], Any] = sys.stdout.write,
    timeout_s: float | None = None,
) -> str:
    """Stream the job's logs to ``write`` until it ends; returns its final status.

    Ray's log stream notices a job's end seconds late (it sleeps a second at each end of the
    file, then checks the status, then reads once more), so the status is polled beside it
    (a failed or slow poll is retried, never fatal): once final, the stream stops and the rest
    of the log is read in one piece. Past ``timeout_s`` (None or 0: no limit) the job is
    stopped.
    """
    streamed = _Streamed()

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)
            streamed.add(lines)

    async def ended() -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A daemon thread per poll: a request that never returns cannot hold up the exit.
            answer = loop.create_future()
            threading.Thread(
                target=_poll_status, args=(client, job_id, loop, answer), daemon=True
            ).start()
            with contextlib.suppress(Exception):
                if await asyncio.wait_for(answer, 30) in TERMINAL:
                    return
            await asyncio.sleep(0.5)

    async def watch() -> tuple[bool, bool]:
        """(whether the job ended, whether the stream was cut short)."""
        streaming, polling = asyncio.ensure_future(tail()), asyncio.ensure_future(ended())
        deadline = time.monotonic() + timeout_s if timeout_s else None
        remaining = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())  # noqa: E731
        await asyncio.wait(
            {streaming, polling}, timeout=remaining(), return_when=asyncio.FIRST_COMPLETED
        )
        if streaming.done() and not polling.done():
            # The stream closed first (normally just after the end): the status decides.
            await asyncio.wait({polling}, timeout=remaining())
        cut = not streaming.done()
        for task in (streaming, polling):
            task.cancel()
        await asyncio.gather(streaming, polling, return_exceptions=True)
        return polling.done() and not polling.cancelled(), cut

    finished, cut = asyncio.run(watch())
    if not finished:
        client.stop_job(job_id)
    deadline = time.monotonic() + 60
    status = _status(client.get_job_status(job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _status(client.get_job_status(job_id))
    if cut:
        try:
            write(streamed.rest(str(client.get_job_logs(job_id))))
        except Exception as exc:  # the job's outcome matters more than its last lines
            write(f"(the end of the job's log could not be read: {exc})\n")
    return status


def _poll_status(client: Any, job_id: str, loop: Any, answer: Any) -> None:
    """The job's status (or the error getting it) into ``answer``, from another thread."""
    try:
        result: Any = _status(client.get_job_status(job_id))
    except Exception as exc:
        result = exc
    setter = answer.set_exception if isinstance(result, Exception) else answer.set_result
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(lambda: answer.done() or setter(result))


class _Streamed:
    """How much of a job's log was streamed, and its last piece, to find where the rest starts."""

    def __init__(self) -> None:
        self.count, self.last = 0, ""

    def add(self, text: str) -> None:
        self.count += len(text)
        self.last = (self.last + text)[-4096:]

    def rest(self, full: str) -> str:
        """What ``full`` (the whole log) holds after the streamed part.

        Normally the stream is a prefix of the log. Where it is not (Ray's tail can split a
        ``\\r\\n`` into two newlines), the rest starts after the streamed part's last line,
        looked for where the stream ended.
        """
        if full[: self.count].endswith(self.last):
            return full[self.count :]
        lines = [line for line in self.last.splitlines() if line.strip()]
        if not lines:
            return full[self.count :]
        at = full.find(lines[-1], max(0, self.count - len(self.last) - 64))
        if at < 0:
            return ""
        end = at + len(lines[-1])
        return full[end + 1 :] if full[end : end + 1] == "\n" else full[end:]


def _status(status: Any) -> str:
    """``JobStatus.SUCCEEDED`` (or its string) as ``SUCCEEDED``."""
    return str(status).rsplit(".", 1)[-1]


def exit_code(status: str) -> int:
    """0 for SUCCEEDED, 1 for FAILED, 3 for STOPPED or anything else."""
    return {"SUCCEEDED": 0, "FAILED": 1}.get(status, 3)
