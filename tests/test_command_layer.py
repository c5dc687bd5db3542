"""One command layer: every job script is its CLI command, with the same options and defaults."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from crashchat.cli import command, run_command
from crashchat.submission import COMMANDS, JOBS, SubmissionError, entrypoint, project_root
from helpers import load_file_module

REPO = Path(__file__).resolve().parents[1]


def _load_job(script: str) -> ModuleType:
    return load_file_module(REPO / script, f"job_{Path(script).stem}")  # defines COMMAND only


def _options(cmd: object) -> dict[str, object]:
    return {
        opt: (p.default, p.required)
        for p in getattr(cmd, "params", [])
        for opt in p.opts
        if opt != "--help"
    }


@pytest.mark.parametrize("job", sorted(JOBS))
def test_job_script_is_its_cli_command(job: str) -> None:
    module = _load_job(JOBS[job])
    assert COMMANDS[job] == module.COMMAND
    source = (REPO / JOBS[job]).read_text()
    # Thin: no option of its own, nothing but the launch.
    assert "argparse" not in source and "typer.Option" not in source
    assert _options(command(COMMANDS[job])), f"{job}: command without options"


@pytest.mark.parametrize("job", ["finetune", "serve"])
def test_job_help_lists_exactly_the_commands_options(job: str) -> None:
    script = f"jobs/{job}.py"
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    expected = {o for o in _options(command(_load_job(script).COMMAND)) if o.startswith("--")}
    shown = {w.strip("│ ,") for w in out.stdout.split() if w.strip("│ ,").startswith("--")}
    shown.discard("--help")
    assert expected <= shown, expected - shown
    assert f"Usage: {script}" in out.stdout  # the job's name, not the CLI's


def test_run_command_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("train", ["--help"], prog_name="jobs/finetune.py") == 0
    assert "--strategy" in capsys.readouterr().out
    assert run_command("train", ["--no-such-option"]) == 2
    with pytest.raises(KeyError, match="no command 'serve nothing'"):
        command("serve nothing")


def test_submission_runs_the_script_or_the_module_without_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert entrypoint("train", ["--data", "a b"]) == "python jobs/finetune.py --data 'a b'"
    assert (
        entrypoint("serve", ["--registry", "x"], script=False)
        == "python -m crashchat.cli serve deploy --registry x"
    )
    monkeypatch.delenv("CRASHCHAT_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == REPO  # found from the package (an editable install)
    assert project_root(REPO) == REPO
    with pytest.raises(SubmissionError, match="not a platform checkout"):
        project_root(tmp_path)
    monkeypatch.setenv("CRASHCHAT_PROJECT", str(tmp_path))
    with pytest.raises(SubmissionError, match=str(tmp_path)):
        project_root()


def test_several_evaluations_are_named_for_their_output_folders() -> None:
    from crashchat.cli.evaluate import evaluation_names

    assert evaluation_names(
        ["models:/crashchat@heterogeneous", "runs/ckpt/perception_centric/", "baseline=runs/m"]
    ) == [
        ("heterogeneous", "models:/crashchat@heterogeneous"),
        ("perception_centric", "runs/ckpt/perception_centric/"),
        ("baseline", "runs/m"),
    ]
    with pytest.raises(ValueError, match="NAME=REF"):
        evaluation_names(["a/model", "b/model"])


class _SlowRayJobs:
    """A Jobs API client whose log stream, like Ray's, goes quiet and never notices the end."""

    def __init__(self, polls_until_done: int, final: str = "FAILED", errors: int = 0) -> None:
        self.log = "line 1\r\nline 2\nerror: the last words\n"
        self.polls, self.final, self.stopped, self.errors = polls_until_done, final, False, errors

    async def tail_job_logs(self, job_id: str):  # type: ignore[no-untyped-def]
        yield "line 1\n"  # Ray's tail split the \r\n: a newline, then another one
        yield "\n"
        await asyncio.Event().wait()  # the rest is never streamed
        yield ""  # pragma: no cover

    def get_job_status(self, job_id: str) -> str:
        if self.errors:
            self.errors -= 1
            raise RuntimeError("dashboard restarting")  # a poll that fails is retried
        self.polls -= 1
        return f"JobStatus.{self.final if self.polls <= 0 or self.stopped else 'RUNNING'}"

    def get_job_logs(self, job_id: str) -> str:
        return self.log.replace("\r\n", "\n")

    def stop_job(self, job_id: str) -> None:
        self.final, self.stopped = "STOPPED", True


@pytest.mark.timeout(60)
def test_following_a_job_ends_with_its_status_and_every_log_line_once() -> None:
    from crashchat.submission import follow

    written: list[str] = []
    client = _SlowRayJobs(polls_until_done=3, errors=2)
    assert follow(client, "job", written.append, timeout_s=0) == "FAILED"  # 0: no limit
    assert "".join(written) == "line 1\n\nline 2\nerror: the last words\n"
    # Past the timeout the job is stopped, and the rest of its log is still written once.
    written.clear()
    client = _SlowRayJobs(polls_until_done=10**6)
    assert follow(client, "job", written.append, timeout_s=0.5) == "STOPPED"
    assert client.stopped and "".join(written).endswith("\nline 2\nerror: the last words\n")
