"""Helpers shared by test modules: LoRA-wrapped tiny models with known outputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from crashchat.config import LoraSettings
from crashchat.models.checkpoint import NON_LORA_FILE
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
    export = root / "export"
    export.mkdir()
    model.save_pretrained(str(export / "adapter"), state_dict=adapter)
    save_file(non_lora, str(export / NON_LORA_FILE))
    return export


def text_inputs(model_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(10, 200, (1, 12))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def make_checkpoints(
    model_dir: Path, root: Path, mixtures: list[str], prompts: dict[str, str]
) -> Path:
    """Platform checkpoints (random perturbed adapters, one seed each) under ``root``."""
    from crashchat.config import TrainConfig
    from crashchat.data.tasks import get_mixture
    from crashchat.training.runner import write_platform_checkpoint

    settings = LoraSettings(r=4, alpha=8, dropout=0.0)
    for seed, name in enumerate(mixtures, 1):
        mixture = get_mixture(name)
        work = root / f"work-{name}"
        work.mkdir(parents=True)
        model = perturbed_lora_model(model_dir, settings, seed)
        write_platform_checkpoint(
            root / name,
            export_trainables(model, work),
            str(model_dir),
            str(model_dir),
            {t: prompts[t] for t in mixture.tasks},
            TrainConfig(),
            {
                "mixture": name,
                "strategy": mixture.strategy,
                "tasks": list(mixture.tasks),
                "step": 1,
            },
        )
    return root
