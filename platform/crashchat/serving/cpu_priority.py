"""CPU priority of a replica's process: which replica the kernel runs first on busy cores.

On a host whose cores the replicas saturate, the router's refusals and answers wait for a time
slice behind models, decodes, Ray's own processes and the ingress: with the router at their
priority, 503s under three times the capacity took 28 ms at the median and 257 ms at p99 here;
with its threads at niceness -10, 6 ms and 47 ms (``benchmarks/chaos.py --phases overload``,
HAProxy ingress). The models and the decoder at niceness 10 instead did not help (245 ms): they
are not all the router waits behind. Linux keeps niceness per thread, so every thread of the
process is set; threads started later inherit their creator's.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crashchat.config import ReplicaSettings


def set_niceness(niceness: int) -> str | None:
    """Give every thread of this process ``niceness`` (-20 .. 19, higher yields more).

    Returns:
        None when set, else why not (the replica runs on at its old priority): a negative
        niceness needs CAP_SYS_NICE (root, or the capability granted to the container).
    """
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc (not Linux): the calling process
    try:
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
    except OSError as exc:
        return f"could not set niceness {niceness}: {exc.strerror or exc}"
    return None


def apply_niceness(settings: ReplicaSettings, who: str) -> None:
    """Set this replica's CPU priority from its settings (a warning when it cannot)."""
    if settings.niceness is None:
        return
    problem = set_niceness(settings.niceness)
    if problem:
        logging.getLogger("ray.serve").warning("%s: %s; running at the default", who, problem)
