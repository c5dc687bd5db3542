"""Connecting to Ray: an existing cluster, or a local one this process starts.

Every command that runs on Ray takes ``--address`` with one default, resolved here by
:func:`resolve_address`: join the cluster when running as a Ray job (or when ``RAY_ADDRESS``
names one), else start a local Ray. So ``crashchat train ...`` on a laptop and
``python jobs/finetune.py ...`` submitted to a cluster both do the right thing unasked.
"""

from __future__ import annotations

import os
from pathlib import Path

# Ray's job supervisor hands the job's config to the driver in this variable (and sets
# RAY_ADDRESS to the cluster); it is absent in any other process.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
ADDRESS_ENV = "RAY_ADDRESS"


def in_ray_job() -> bool:
    """True in the driver of a job submitted through Ray's Jobs API."""
    return bool(os.environ.get(JOB_CONFIG_ENV))


def resolve_address(address: str | None, fallback: str = "local") -> str:
    """The Ray address to use for ``--address`` (``None`` when the user gave none).

    An explicit address wins. Without one: ``auto`` (join the cluster) inside a Ray job or when
    ``RAY_ADDRESS`` names a cluster (not a dashboard ``http://`` URL, which only ``ray job
    submit`` reads), which is what Ray's own ``ray.init()`` would join; else ``fallback``
    (``local``: a new Ray in this process, even when ``ray start`` left a cluster running here).
    """
    if address:
        return address
    env = os.environ.get(ADDRESS_ENV, "")
    # A dashboard URL in RAY_ADDRESS is for `ray job submit`, not for joining the cluster.
    if in_ray_job() or (env and not env.startswith(("http://", "https://"))):
        return "auto"
    return fallback


def ensure_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (``auto`` or ``ray://``/``host:port``) or start a local Ray.

    ``None``, ``""`` and ``local`` start a local Ray; entry points resolve ``--address`` with
    :func:`resolve_address` before they get here.

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


def leave_job_working_dir(directory: str | Path) -> bool:
    """Inside a Ray job, move the current directory to ``directory`` (created if missing).

    Why: a job runs inside its ``working_dir`` copy, and Ray deleted that copy under a running
    job once Ray Train's actors exited; every later ``os.getcwd()`` (MLflow's store, pathlib)
    then failed. Resolve relative paths before calling this. Outside a Ray job there is no copy
    to leave, and the current directory stays where the user put it.

    Returns:
        True when the directory was changed.
    """
    if not in_ray_job():
        return False
    target = Path(directory).resolve()
    target.mkdir(parents=True, exist_ok=True)
    os.chdir(target)
    return True
