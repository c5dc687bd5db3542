"""What produced a run: the data it read, the code and command that ran, the machine.

MLflow has a place for each: dataset inputs (the UI's Dataset column), the ``mlflow.source.*``
tags (its Source column), and system metrics. These helpers compute the values; the
:class:`~crashchat.tracking.tracker.Tracker` journal sends them, so they wait out an outage of
the tracking server like every other operation.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Manifest keys that change when the same data is rebuilt (time, where it ran).
_UNSTABLE_KEYS = ("created", "placement", "video_root")
REPO_ROOT = Path(__file__).resolve().parents[3]
COMMIT_ENV = "CRASHCHAT_GIT_COMMIT"  # set by `crashchat submit` for jobs shipped without .git


def platform_version() -> str:
    """The installed platform's version."""
    try:
        return metadata.version("crashchat-platform")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The checkout's commit (``+dirty`` when it has uncommitted changes), else the commit a
    submitted job was shipped with, else None."""
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()  # fmt: skip
            return commit + ("+dirty" if dirty else "") if commit else None
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get(COMMIT_ENV) or None


def ray_job_id() -> str | None:
    """The Ray Jobs submission id when running as a submitted job (Ray hands the job's
    metadata to its entrypoint in ``RAY_JOB_CONFIG_JSON_ENV_VAR``)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    return metadata.get("job_submission_id") or None


def command_name(argv: list[str] | None = None) -> str:
    """How this process was started, for ``mlflow.source.name`` (``crashchat train``,
    ``jobs/finetune.py``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python"
    exe = Path(argv[0]).name
    if exe in ("crashchat", "cli.py", "__main__.py") or argv[0].endswith("crashchat.cli"):
        words = [a for a in argv[1:3] if not a.startswith("-")]
        return " ".join(["crashchat", *words])
    if argv[0].endswith(".py"):
        path = Path(argv[0])
        if not path.is_absolute():
            return path.as_posix()  # as launched, e.g. jobs/finetune.py from the project root
        try:
            return path.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return path.name
    return exe


def source_tags(command: str | None = None) -> dict[str, str]:
    """The ``mlflow.source.*`` tags (MLflow's Source column) and the platform's own."""
    job = ray_job_id()
    tags = {
        "mlflow.source.name": command or command_name(),
        "mlflow.source.type": "JOB" if job else "LOCAL",
        "crashchat.version": platform_version(),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
        tags["crashchat.git.commit"] = commit
    if job:
        tags["ray.job_id"] = job
    return tags


def dataset_digest(manifest: dict[str, Any], split: str | None = None) -> str:
    """Digest of a preprocessed dataset (or of one of its splits) from its manifest: the same
    data (annotations, model, settings, counts) gives the same digest, rebuilt or not."""
    stable = {k: v for k, v in manifest.items() if k not in _UNSTABLE_KEYS}
    text = json.dumps(stable, sort_keys=True) + (f"\x00{split}" if split else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_input(
    data_dir: str | Path, manifest: dict[str, Any], context: str, **tags: str
) -> dict[str, Any]:
    """What :meth:`Tracker.log_input` records: name, digest, source, context and tags.

    With a ``split`` tag the input is that split of the dataset (``preprocessed:train``, its own
    digest): MLflow keeps one input per distinct dataset, so a run's training, validation and
    evaluation splits each show.
    """
    root = Path(data_dir).resolve()
    split = tags.get("split")
    counts = manifest.get("counts", {})
    profile = {
        "clips": counts.get("clips"),
        "samples": (counts.get("per_split") or {}).get(split) if split else counts.get("samples"),
        "per_split": counts.get("per_split"),
    }
    return {
        "name": f"{root.name}:{split}" if split else root.name,
        "digest": dataset_digest(manifest, split),
        "source_type": "local",
        "source": json.dumps({"uri": root.as_uri()}),
        "profile": json.dumps(profile),
        "context": context,
        "tags": {k: str(v) for k, v in tags.items()},
    }
