"""Helpers shared by test modules: LoRA-wrapped tiny models with known outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from crashchat.config import LoraSettings
from crashchat.models.checkpoint import write_trainables
from crashchat.models.loading import load_model
from crashchat.models.lora import apply_lora, trainable_state


def perturbed_lora_model(model_dir: Path, settings: LoraSettings, seed: int = 0):  # type: ignore[no-untyped-def]
    """A LoRA-wrapped tiny model whose adapters and projector differ from the base."""
    torch.manual_seed(seed)
    model = apply_lora(load_model(model_dir).model, settings)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    return model


def export_trainables(model, root: Path) -> Path:  # type: ignore[no-untyped-def]
    adapter, non_lora = trainable_state(model)
    return write_trainables(root / "export", model, adapter, non_lora)


def text_inputs(model_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(10, 200, (1, 12))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def make_checkpoints(
    model_dir: Path, root: Path, mixtures: list[str], prompts: dict[str, str]
) -> Path:
    """Platform checkpoints (random perturbed adapters, one seed each) under ``root``."""
    from crashchat.data.tasks import get_mixture
    from crashchat.models.tiny import build_random_checkpoint

    for seed, name in enumerate(mixtures, 1):
        mixture = get_mixture(name)
        meta = {"mixture": name, "strategy": mixture.strategy, "tasks": list(mixture.tasks)}
        build_random_checkpoint(
            model_dir, root / name, meta, {t: prompts[t] for t in mixture.tasks}, seed
        )
    return root


def load_file_module(path: Path, name: str) -> ModuleType:
    """Import a script (a job, a benchmark, an upstream file) by path, not as ``__main__``: its
    definitions load, its ``if __name__ == "__main__"`` block does not run."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
