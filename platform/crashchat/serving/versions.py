"""Deployment versions for ``serve.run``: redeploying what already runs keeps its replicas.

Ray Serve restarts a deployment's replicas when its code version changes. A Serve config file
(``serve deploy``) gets one from the file's import path and arguments; ``serve.run`` draws a
random one unless the deployment carries its own, so every ``crashchat serve up`` or serve job
against a running application restarted every replica, and each model replica loaded its
weights again. The version here digests what a replica's behaviour follows from: the crashchat
source, every installed distribution's version and Python's, the deployment's arguments, and
the files of the model folders it loads (name, size and mtime of each; the content of the small
ones, such as configs and a checkpoint's manifest with its files' sha256). An unchanged
checkpoint keeps its warm replicas; a rewritten one (or a changed setting) restarts the replicas
that use it. Serve itself still restarts replicas whose Ray options or runtime environment
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from crashchat.models.checkpoint import sha256_file

# Files up to this size are digested by content (configs, manifests, processor settings); a copy
# that keeps sizes and mtimes (cp -a, shutil.copy2) still shows its new content there.
_SMALL_FILE = 256 * 1024


def code_digest() -> str:
    """Digest of the crashchat package's files, Python's version and every installed
    distribution's version (read afresh: a long-lived driver may see the source change)."""
    digest = hashlib.sha256(sys.version.encode())
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    versions = sorted(
        f"{dist.metadata['Name']}={dist.version}" for dist in metadata.distributions()
    )
    digest.update("\n".join(versions).encode())
    return digest.hexdigest()


def folder_fingerprint(folder: str) -> list[Any]:
    """What a replica loading ``folder`` depends on: every file under it (symlinks followed),
    by relative name, size and mtime, the small ones by content too.

    A relative name that is no folder here is taken for a Hugging Face id and stands for itself;
    an absolute path the driver cannot see (a node-local folder) gets a fresh random entry, so
    its replicas restart on every deploy as they did before versions.
    """
    root = Path(folder)
    if not root.is_dir():
        return [folder] if not root.is_absolute() else [folder, uuid.uuid4().hex]
    out: list[Any] = [str(root.resolve())]
    for base, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = Path(base) / name
            stat = path.stat()
            entry = [str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]
            if stat.st_size <= _SMALL_FILE:
                entry.append(sha256_file(path))
            out.append(entry)
    return out


def replica_version(name: str, args: Any, folders: Iterable[str] = (), code: str = "") -> str:
    """The code version of deployment ``name`` built from ``args`` over model ``folders``.

    Args:
        name: The deployment.
        args: Everything else its replicas are built from (JSON-able).
        folders: Model folders its replicas load.
        code: :func:`code_digest`, computed once per application by the caller.
    """
    parts = [name, args, [folder_fingerprint(f) for f in dict.fromkeys(folders)]]
    digest = hashlib.sha256((code or code_digest()).encode())
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]
