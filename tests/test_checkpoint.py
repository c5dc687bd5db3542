"""Platform checkpoints: atomic writes, tamper detection, and loading that reproduces the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crashchat.config import LoraSettings, TrainConfig
from crashchat.models.checkpoint import (
    MANIFEST_FILE,
    NON_LORA_FILE,
    CheckpointError,
    CheckpointWriter,
    load_checkpoint,
    verify_checkpoint,
    write_platform_checkpoint,
)
from crashchat.models.loading import load_model
from helpers import export_trainables, perturbed_lora_model, text_inputs


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ckpt")
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, train_lm_head=True)
    model = perturbed_lora_model(tiny_model_dir, settings)
    dest = root / "crash_recognition"
    write_platform_checkpoint(
        dest,
        export_trainables(model, root),
        str(tiny_model_dir),
        str(tiny_model_dir),
        {"crash_recognition": "Is there a crash?"},
        TrainConfig().model_dump(mode="json"),
        {"mixture": "crash_recognition", "tasks": ["crash_recognition"], "step": 3},
    )
    with torch.no_grad():
        expected = model(**text_inputs(tiny_model_dir)).logits
    return dest, expected


def test_checkpoint_loads_to_the_same_outputs(checkpoint, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    dest, expected = checkpoint
    loaded = load_checkpoint(dest)
    with torch.no_grad():
        got = loaded.model(**text_inputs(tiny_model_dir)).logits
    base = load_model(tiny_model_dir).model
    with torch.no_grad():
        untuned = base(**text_inputs(tiny_model_dir)).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(untuned, expected, atol=1e-3)  # the checkpoint changed the model
    assert loaded.meta["checkpoint"]["mixture"] == "crash_recognition"
    names = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        NON_LORA_FILE,
        "prompts.json",
        "train_config.yaml",
        "crashchat_checkpoint.json",
        MANIFEST_FILE,
    } <= names
    assert any(n.startswith("processor/") for n in names)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampering_is_detected_naming_the_file(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest, _ = checkpoint
    modified = _copy(dest, tmp_path / "modified")
    weights = modified / NON_LORA_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"non_lora_trainables.safetensors: sha256 differs"):
        verify_checkpoint(modified)
    with pytest.raises(CheckpointError):
        load_checkpoint(modified)

    missing = _copy(dest, tmp_path / "missing")
    (missing / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: listed in the manifest"):
        verify_checkpoint(missing)

    extra = _copy(dest, tmp_path / "extra")
    (extra / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"notes.txt: not in the manifest"):
        verify_checkpoint(extra)

    truncated = _copy(dest, tmp_path / "truncated")
    (truncated / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"manifest.json: missing"):
        verify_checkpoint(truncated)


def test_verify_cli_exit_codes(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from crashchat.cli import app

    dest, _ = checkpoint
    ok = CliRunner().invoke(app, ["checkpoint", "verify", str(dest)])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["mixture"] == "crash_recognition"
    bad = _copy(dest, tmp_path / "bad")
    (bad / "prompts.json").write_text("{}")
    out = CliRunner().invoke(app, ["checkpoint", "verify", str(bad)])
    assert out.exit_code == 1
    message = "".join(out.stderr.split())
    assert "bad/prompts.json:size2bytes,manifestsays" in message


def test_writer_is_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt"
    with CheckpointWriter(dest, {"base_model": "b", "step": 1}) as w:
        (w.staging / "a.txt").write_text("one")
    assert verify_checkpoint(dest)["step"] == 1

    # A failure half-way leaves the previous complete checkpoint and no debris.
    with pytest.raises(RuntimeError), CheckpointWriter(dest, {"base_model": "b", "step": 2}) as w:
        (w.staging / "a.txt").write_text("two")
        raise RuntimeError("disk full")
    assert verify_checkpoint(dest)["step"] == 1
    assert (dest / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    # A failure before the first commit leaves nothing at all.
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), CheckpointWriter(fresh, {"base_model": "b"}) as w:
        (w.staging / "a.txt").write_text("x")
        raise RuntimeError("killed")
    assert not fresh.exists()

    with CheckpointWriter(dest, {"base_model": "b", "step": 3}) as w:
        (w.staging / "b.txt").write_text("three")
    assert verify_checkpoint(dest)["step"] == 3 and not (dest / "a.txt").exists()
