"""The tiny pretrained base kept in the repository: a small test asset, as torchtune and litgpt keep.

A random tiny VideoLLaMA3 learns nothing in a few minutes of LoRA on two CPU cores; the 7B starts
from a pretrained model. ``assets/tiny-base/`` holds the tiny model after the perception
pre-training ``make learn`` does (synthetic clips, 2 fps, 12 frames of 56x56), so the demo
fine-tunes something that already sees: safetensors weights (under 2 MB), the offline tokenizer,
the processors, and ``asset.json``, the manifest: every file's sha256, the command and seed that
made it, and its eval loss.

``make tiny-base`` rebuilds it. Rebuilds are not bit-identical (two DeepSpeed workers reduce
gradients over gloo in whatever order the threads finish), so the test checks the kept files
against the manifest and the model against the manifest's eval loss instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tiny-base"
MANIFEST = "asset.json"
MAX_WEIGHT_BYTES = 2 * 1024 * 1024
BUILD_COMMAND = "make tiny-base"


class AssetError(ValueError):
    """The kept asset is missing, too large or does not match its manifest."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack_tiny_base(
    model_dir: str | Path,
    dest: str | Path = ASSET_DIR,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy a merged tiny model (``checkpoint export`` output) into the asset folder with its
    manifest.

    Args:
        model_dir: The merged model folder.
        dest: The asset folder (replaced).
        provenance: What made it: ``command``, ``seed``, ``eval_loss``, configs, data.

    Raises:
        AssetError: when the weights are larger than 2 MB.
    """
    src, dest = Path(model_dir), Path(dest)
    weights = sorted(src.glob("*.safetensors"))
    size = sum(w.stat().st_size for w in weights)
    if size > MAX_WEIGHT_BYTES:
        raise AssetError(
            f"{src}: {size} bytes of weights, above the {MAX_WEIGHT_BYTES} asset limit"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, dest / f.name)
    manifest = {
        "what": "tiny VideoLLaMA3 after perception pre-training (crashchat model base)",
        "rebuild": BUILD_COMMAND,
        **(provenance or {}),
        "files": {
            f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
            for f in sorted(dest.iterdir())
            if f.name != MANIFEST
        },
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_tiny_base(folder: str | Path = ASSET_DIR) -> dict[str, Any]:
    """The asset's manifest, after checking every file against it.

    Raises:
        AssetError: naming the missing, unlisted or changed file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise AssetError(f"{path}: missing (rebuild with `{BUILD_COMMAND}`)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    files = manifest["files"]
    present = {f.name for f in folder.iterdir() if f.is_file() and f.name != MANIFEST}
    for name in sorted(set(files) ^ present):
        where = "missing" if name in files else "not in the manifest"
        raise AssetError(f"{folder / name}: {where}")
    for name, entry in sorted(files.items()):
        if _sha256(folder / name) != entry["sha256"]:
            raise AssetError(f"{folder / name}: sha256 differs from {path}")
    return manifest


def install_tiny_base(out: str | Path, folder: str | Path = ASSET_DIR) -> Path:
    """Copy the verified asset to ``out``: a normal model folder, as ``model tiny`` writes one."""
    verify_tiny_base(folder)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder, out)
    return out
