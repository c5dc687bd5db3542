"""The platform's metadata beside a model folder's weights: ``crashchat_model.json``.

What made the model (``kind``: tiny, imported, merged), and what preprocessing must know about it
(a tiny model's square ``frame_size``). Written by whoever writes a model folder, read by loading,
preprocessing and serving; this module is the only one that knows the file's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_META = "crashchat_model.json"


def write_model_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as the folder's platform metadata (keys sorted, so files diff cleanly)."""
    path = Path(folder) / MODEL_META
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_model_meta(folder: str | Path) -> dict[str, Any]:
    """The folder's platform metadata; ``{}`` for a model the platform did not write (a hub
    model used as it is)."""
    path = Path(folder) / MODEL_META
    return json.loads(path.read_text()) if path.is_file() else {}


def model_frame_size(folder: str | Path) -> int | None:
    """The square frame size a tiny model was built for; None for real models (the processor's
    own size rules then apply)."""
    size = read_model_meta(folder).get("frame_size")
    return int(size) if size is not None else None
