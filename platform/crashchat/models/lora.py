"""LoRA adapters on the language model, plus the non-LoRA weights that train with them.

Upstream CrashChat trains LoRA on every Linear of the LLM (not ``lm_head``), trains the projector
fully and freezes the vision encoder. :func:`apply_lora` reproduces that on the native
transformers model; :func:`trainable_state` splits what trained into the two files a checkpoint
holds (the PEFT adapter and ``non_lora_trainables``), keyed by native parameter names.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

from crashchat.config import LoraSettings

PEFT_PREFIX = "base_model.model."
PROJECTOR_PREFIX = "model.projector."
HEAD_PREFIXES = ("lm_head.", "model.language_model.embed_tokens.")
LANGUAGE_PREFIX = "model.language_model."
VISION_PREFIX = "model.vision_model."


def _native_name(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def _full_train_prefixes(cfg: LoraSettings) -> tuple[str, ...]:
    prefixes: tuple[str, ...] = ()
    if cfg.train_projector:
        prefixes += (PROJECTOR_PREFIX,)
    if cfg.train_lm_head or not cfg.enabled:
        prefixes += HEAD_PREFIXES
    if not cfg.enabled:
        prefixes += (LANGUAGE_PREFIX,)
    if cfg.train_vision:
        prefixes += (VISION_PREFIX,)
    return prefixes


def apply_lora(model: Any, cfg: LoraSettings) -> Any:
    """Freeze the base, add adapters, and unfreeze the fully trained modules.

    Returns a ``PeftModel`` when ``cfg.enabled``, else the model itself with the language model
    and projector trainable (full fine-tuning of a small stand-in base).
    """
    for param in model.parameters():
        param.requires_grad = False
    if cfg.enabled:
        peft_cfg = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            bias="none",
            target_modules=cfg.target_modules,
        )
        model = get_peft_model(model, peft_cfg)
    prefixes = _full_train_prefixes(cfg)
    for name, param in model.named_parameters():
        if _native_name(name).startswith(prefixes):
            param.requires_grad = True
    return model


def non_lora_names(model: Any) -> list[str]:
    """Native names of trainable parameters that are not LoRA matrices."""
    return [
        _native_name(name)
        for name, param in model.named_parameters()
        if param.requires_grad and "lora_" not in name
    ]


def trainable_state(model: Any) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    """(adapter state as PEFT saves it, or None without LoRA; non-LoRA trainables by native name).

    Tensors are detached CPU copies. Under ZeRO-3 call it inside ``GatheredParameters``.
    """
    adapter = None
    if isinstance(model, PeftModel):
        adapter = {
            k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in get_peft_model_state_dict(model).items()
        }
    wanted = set(non_lora_names(model))
    non_lora = {
        _native_name(name): param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if _native_name(name) in wanted and "lora_" not in name
    }
    return adapter, non_lora


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
