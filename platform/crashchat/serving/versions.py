"""Deployment versions for ``serve.run``: redeploying what already runs keeps its replicas.

Ray Serve restarts a deployment's replicas when its code version changes. A Serve config file
(``serve deploy``) gets one from the file's import path and arguments; ``serve.run`` draws a
random one unless the deployment carries its own, so every ``crashchat serve up`` or serve job
against a running application restarted every replica, and each model replica loaded its
weights again. The version here digests what a replica's behaviour follows from: the crashchat
source and the versions of the libraries it runs on, the deployment's arguments, and the name,
size and modification time of every file in the model folders it loads. An unchanged
checkpoint keeps its warm replicas; a rewritten one (or a changed setting) restarts the replicas
that use it, and only those. Serve itself still restarts replicas whose Ray options or
runtime environment changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

_LIBRARIES = ("ray", "torch", "transformers", "peft", "decord", "pydantic")


@functools.cache
def code_digest() -> str:
    """Digest of the installed crashchat package's files and its libraries' versions."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    for lib in _LIBRARIES:
        try:
            digest.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{lib}=-".encode())
    return digest.hexdigest()


def folder_fingerprint(folder: str) -> list[Any]:
    """Relative name, size and mtime of every file under ``folder``.

    A name that is not a local folder (a Hugging Face id, or a path only worker nodes see)
    stands for itself: its content cannot be checked from here.
    """
    root = Path(folder)
    if not root.is_dir():
        return [folder]
    out: list[Any] = [str(root.resolve())]
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            out.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return out


def replica_version(name: str, args: Any, folders: Iterable[str] = ()) -> str:
    """The code version of deployment ``name`` built from ``args`` over model ``folders``."""
    parts = [name, args, [folder_fingerprint(f) for f in dict.fromkeys(folders)]]
    digest = hashlib.sha256(code_digest().encode())
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]
