"""The native VideoLLaMA3 architecture without weights: configs and models on the meta device.

A 7B has 8 billion parameters; on the meta device it has shapes and no storage, so the import
checks and ``crashchat plan`` can reason about it on any machine.
"""

from __future__ import annotations

from typing import Any

import torch

# Qwen2.5's ids of the native placeholder tokens, used when no tokenizer is at hand (plans).
DEFAULT_IMAGE_TOKEN_ID = 151655
DEFAULT_VIDEO_TOKEN_ID = 151656


def build_meta_model(config: Any) -> Any:
    """A ``VideoLlama3ForConditionalGeneration`` with every tensor on the meta device."""
    from transformers import VideoLlama3ForConditionalGeneration

    with torch.device("meta"):
        return VideoLlama3ForConditionalGeneration(config)


def expected_weights(config: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a complete checkpoint of ``config`` must hold.

    Persistent parameters and buffers only; with tied embeddings ``lm_head.weight`` is the
    embedding matrix and need not be stored.
    """
    model = build_meta_model(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes
