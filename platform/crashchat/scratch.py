"""Scratch folders that name the process owning them.

A process removes its scratch when it ends; one killed outright (SIGKILL: Ray Train stopping a
worker group, a killed replica) cannot. Its folder names its PID, so the next process that makes
scratch of the same kind on that machine removes the folders of owners that are gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _namespace() -> str:
    """The machine's boot and PID namespace: a folder is judged only by processes that can see
    its owner (a temporary directory on shared storage holds other machines' folders too)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        boot = "0"
    try:
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"{boot}.0"


def sweep_scratch(kind: str, root: str | Path | None = None) -> list[Path]:
    """Remove ``kind`` scratch folders whose owning process is gone; returns what was removed.

    Args:
        kind: The scratch kind (``best``, ``ckpt``, ``uploads``).
        root: Where the folders are (the temporary directory by default).
    """
    import psutil

    removed = []
    prefix = f"crashchat-{kind}-{_namespace()}-"
    for path in Path(root or tempfile.gettempdir()).glob(prefix + "*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_scratch(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch folder of this process (removed by ``cleanup()`` or when collected), after
    sweeping the folders of ``kind`` that dead processes left (:func:`sweep_scratch`)."""
    sweep_scratch(kind)
    return tempfile.TemporaryDirectory(
        prefix=f"crashchat-{kind}-{_namespace()}-{os.getpid()}-", ignore_cleanup_errors=True
    )
