"""The platform's fine-tuned checkpoint format: written atomically, verified before use.

A checkpoint folder holds only what training changed, plus what is needed to use it::

    adapter/                          PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)
    non_lora_trainables.safetensors   projector (and any other fully trained weights), native names
    processor/                        the processor the model was trained with
    prompts.json                      the task prompts it was trained with
    train_config.yaml                 the resolved training config
    crashchat_checkpoint.json         what it is: mixture, tasks, base model, step, eval loss
    manifest.json                     sha256 and size of every other file

:class:`CheckpointWriter` builds the folder next to its destination and renames it into place
only once complete, so a reader sees a complete checkpoint or none. :func:`verify_checkpoint`
recomputes every hash; :func:`load_checkpoint` refuses a checkpoint that fails it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from crashchat.models.metadata import write_model_meta

if TYPE_CHECKING:
    from crashchat.models.loading import LoadedModel

FORMAT_VERSION = 1
META_FILE = "crashchat_checkpoint.json"
MANIFEST_FILE = "manifest.json"
ADAPTER_DIR = "adapter"
NON_LORA_FILE = "non_lora_trainables.safetensors"
PROCESSOR_DIR = "processor"
PROMPTS_FILE = "prompts.json"
CONFIG_FILE = "train_config.yaml"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or damaged; the message names the file."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def build_manifest(root: Path) -> dict[str, Any]:
    """``{"files": {relative path: {"sha256", "bytes"}}}`` for every file under ``root``."""
    return {
        "format_version": FORMAT_VERSION,
        "files": {
            p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in _files(root)
        },
    }


def _fsync_tree(root: Path) -> None:
    for path in [*_files(root), root / MANIFEST_FILE]:
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out`` that replaces ``out`` only when the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class CheckpointWriter:
    """Context manager: fill ``writer.staging``, and on a clean exit it becomes ``dest``.

    On an exception the staging folder is removed and ``dest`` is left as it was.
    """

    def __init__(self, dest: str | Path, meta: dict[str, Any]) -> None:
        self.dest = Path(dest)
        self.meta = meta
        self.staging = self.dest.parent / f".{self.dest.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> CheckpointWriter:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        self.commit()

    def commit(self) -> None:
        """Write metadata and manifest, flush to disk, and move the folder into place."""
        meta = {"format_version": FORMAT_VERSION, "kind": "crashchat-checkpoint", **self.meta}
        (self.staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        manifest = build_manifest(self.staging)
        (self.staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _fsync_tree(self.staging)
        old = None
        if self.dest.exists():
            old = self.dest.parent / f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}"
            self.dest.rename(old)
        self.staging.rename(self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_trainables(
    folder: str | Path,
    model: Any,
    adapter: dict[str, Any] | None,
    non_lora: dict[str, Any],
) -> Path:
    """Write what training changed (an export): ``adapter/`` (PEFT, from ``model``'s config) and
    ``non_lora_trainables.safetensors``. ``adapter``/``non_lora`` are state dicts by native name
    (:func:`crashchat.models.lora.trainable_state`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        model.save_pretrained(str(folder / ADAPTER_DIR), state_dict=adapter)
    if non_lora:
        save_file(non_lora, str(folder / NON_LORA_FILE))
    return folder


def write_platform_checkpoint(
    dest: str | Path,
    export: str | Path,
    base_model: str,
    processor_source: str,
    prompts: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Assemble a platform checkpoint at ``dest`` atomically from an export
    (:func:`write_trainables`), the processor, the prompts and the training config."""
    import yaml
    from transformers import AutoProcessor

    export = Path(export)
    with CheckpointWriter(dest, {"base_model": base_model, **meta}) as writer:
        stage = writer.staging
        if (export / ADAPTER_DIR).is_dir():
            shutil.copytree(export / ADAPTER_DIR, stage / ADAPTER_DIR)
        if (export / NON_LORA_FILE).is_file():
            shutil.copy2(export / NON_LORA_FILE, stage / NON_LORA_FILE)
        AutoProcessor.from_pretrained(processor_source).save_pretrained(str(stage / PROCESSOR_DIR))
        (stage / PROMPTS_FILE).write_text(json.dumps(prompts, indent=2, sort_keys=True))
        (stage / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(dest)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; return the checkpoint's metadata.

    Raises:
        CheckpointError: naming the missing, unexpected, truncated or modified file.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder does not exist")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (incomplete or not a checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed: dict[str, dict[str, Any]] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    present = {p.relative_to(root).as_posix() for p in _files(root)}
    for rel in sorted(set(listed) - present):
        raise CheckpointError(f"{root / rel}: listed in the manifest but missing")
    for rel in sorted(present - set(listed)):
        raise CheckpointError(f"{root / rel}: not in the manifest (unexpected file)")
    for rel, entry in sorted(listed.items()):
        file = root / rel
        if file.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{file}: size {file.stat().st_size} bytes, manifest says {entry['bytes']}"
            )
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: sha256 differs from the manifest (modified or damaged)")
    meta_path = root / META_FILE
    if META_FILE not in listed:
        raise CheckpointError(f"{meta_path}: missing")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    return meta


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` looks like a platform checkpoint (not verified)."""
    return (Path(path) / META_FILE).is_file()


def load_checkpoint(
    path: str | Path,
    base_model: str | Path | None = None,
    dtype: str = "auto",
    attention: str = "auto",
    device: str | None = None,
    merge: bool = True,
) -> LoadedModel:
    """Verify a checkpoint and load its base model with the adapter and trained weights applied.

    Args:
        path: Checkpoint folder.
        base_model: Override the base recorded in the checkpoint (e.g. a local copy of a hub id).
        dtype: See :func:`crashchat.models.loading.load_model`.
        attention: See :func:`crashchat.models.loading.load_model`.
        device: Target device.
        merge: Merge LoRA into the weights (faster inference); False keeps a ``PeftModel``.

    Raises:
        CheckpointError: when verification fails or weights do not fit the base model.
    """
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoProcessor

    from crashchat.models.loading import LoadedModel, load_model

    root = Path(path)
    meta = verify_checkpoint(root)
    base = str(base_model or meta["base_model"])
    loaded = load_model(base, dtype=dtype, attention=attention, device=device)
    model = loaded.model
    non_lora_path = root / NON_LORA_FILE
    if non_lora_path.is_file():
        state = load_file(str(non_lora_path))
        own = model.state_dict()
        unknown = sorted(k for k in state if k not in own)
        if unknown:
            raise CheckpointError(
                f"{non_lora_path}: {len(unknown)} weights do not exist in base {base}, e.g. {unknown[:3]}"
            )
        bad = sorted(k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape))
        if bad:
            raise CheckpointError(
                f"{non_lora_path}: shapes differ from base {base} for {bad[:3]} (wrong base model?)"
            )
        model.load_state_dict(state, strict=False)
    if (root / ADAPTER_DIR).is_dir():
        model = PeftModel.from_pretrained(model, str(root / ADAPTER_DIR), is_trainable=False)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    processor = AutoProcessor.from_pretrained(str(root / PROCESSOR_DIR), trust_remote_code=False)
    info = {**loaded.meta, "checkpoint": meta, "checkpoint_path": str(root)}
    return LoadedModel(model, processor, str(root), loaded.dtype, loaded.attn_implementation, info)


def export_merged(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write a checkpoint merged into its base as a standalone native model folder.

    The result loads with ``load_model`` like any base (and can be the base of further LoRA
    fine-tuning, or be served without the platform).
    """
    loaded = load_checkpoint(path, merge=True)
    with atomic_directory(out) as staging:
        loaded.model.save_pretrained(str(staging))
        loaded.processor.save_pretrained(str(staging))
        meta = {k: v for k, v in loaded.meta.items() if k not in ("checkpoint", "checkpoint_path")}
        meta["merged_from"] = {"checkpoint": str(path), **loaded.meta["checkpoint"]}
        write_model_meta(staging, meta)
    return {"out": str(out), "base_model": loaded.meta["checkpoint"]["base_model"]}


def load_model_or_checkpoint(
    model: str | Path, dtype: str = "auto", attention: str = "auto"
) -> LoadedModel:
    """A platform checkpoint (verified, adapter merged) or a native base model folder."""
    from crashchat.models.loading import load_model

    if is_checkpoint(model):
        return load_checkpoint(model, dtype=dtype, attention=attention)
    return load_model(model, dtype=dtype, attention=attention)
