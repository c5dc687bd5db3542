"""Connecting to Ray: an existing cluster, or a local one this process starts."""

from __future__ import annotations

import os
from pathlib import Path


def ensure_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (``auto`` or ``ray://``/``host:port``) or start a local Ray.

    Returns:
        True when this call started Ray (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        # address="local": a new Ray here even when `ray start` left a cluster on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def leave_job_working_dir(directory: str | Path) -> None:
    """Move a Ray job's current directory to ``directory`` (created if missing).

    Why: a job runs inside its ``working_dir`` copy, and Ray deleted that copy under a running
    job once Ray Train's actors exited; every later ``os.getcwd()`` (MLflow's store, pathlib)
    then failed. Resolve relative paths before calling this.
    """
    target = Path(directory).resolve()
    target.mkdir(parents=True, exist_ok=True)
    os.chdir(target)
