"""The tiny pretrained base kept in the repository: small, as its manifest says, and pretrained.

``make tiny-base`` rebuilds it; rebuilds are not bit-identical (DeepSpeed's gloo reductions
finish in thread order), so instead of comparing bytes with a fresh build this checks the kept
files against the manifest's sha256 and the model against the manifest's check loss, which the
same weights reproduce exactly, and against a random model of the same architecture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crashchat.config import PreprocessConfig, TinyModelConfig, load_config
from crashchat.models.tiny_base import (
    ASSET_DIR,
    MANIFEST,
    MAX_WEIGHT_BYTES,
    AssetError,
    install_tiny_base,
    verify_tiny_base,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def test_the_kept_base_matches_its_manifest_and_the_size_limit() -> None:
    manifest = verify_tiny_base()
    weights = [n for n in manifest["files"] if n.endswith(".safetensors")]
    assert weights, "the asset holds no safetensors weights"
    assert sum(manifest["files"][n]["bytes"] for n in weights) <= MAX_WEIGHT_BYTES
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in manifest["files"])
    # How to rebuild it, from what, and what it scored.
    assert manifest["rebuild"] == "make tiny-base"
    assert manifest["seed"] and manifest["configs"]
    for config in manifest["configs"]:
        assert (REPO / config).is_file(), config
    assert manifest["eval_loss"] > 0 and manifest["check"]["loss"] > 0


def test_a_changed_or_extra_file_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "tiny-base"
    shutil.copytree(ASSET_DIR, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(AssetError, match=r"config\.json: sha256 differs"):
        verify_tiny_base(copy)
    shutil.copy2(ASSET_DIR / "config.json", copy / "config.json")
    (copy / "notes.txt").write_text("x")
    with pytest.raises(AssetError, match=r"notes\.txt: not in the manifest"):
        verify_tiny_base(copy)
    (copy / "notes.txt").unlink()
    (copy / MANIFEST).unlink()
    with pytest.raises(AssetError, match="rebuild with `make tiny-base`"):
        verify_tiny_base(copy)


@pytest.mark.slow
def test_the_kept_base_scores_its_manifest_check_loss_far_below_a_random_model(
    tmp_path: Path,
) -> None:
    from crashchat.data.synth.labels import all_label_text
    from crashchat.evaluation.base_check import check_loss
    from crashchat.models.tiny import build_tiny_model

    manifest = json.loads((ASSET_DIR / MANIFEST).read_text())
    model = install_tiny_base(tmp_path / "base")
    preprocess = load_config(REPO / "jobs/configs/preprocess-learn.yaml", PreprocessConfig)
    kept = check_loss(model, tmp_path / "clips", preprocess)
    assert kept["records"] == manifest["check"]["records"]
    assert kept["loss"] == pytest.approx(manifest["check"]["loss"], rel=1e-4)

    random_model = build_tiny_model(
        tmp_path / "random",
        load_config(REPO / "jobs/configs/tiny-model.yaml", TinyModelConfig),
        all_label_text(),
    )
    fresh = check_loss(random_model, tmp_path / "clips-random", preprocess)
    assert kept["loss"] < 0.5 * fresh["loss"], (kept, fresh)
