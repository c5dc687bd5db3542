"""Connecting to Ray: an existing cluster, or a local one this process starts."""

from __future__ import annotations

import os


def ensure_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (``auto`` or ``ray://``/``host:port``) or start a local Ray.

    Returns:
        True when this call started Ray (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True
