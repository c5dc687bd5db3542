"""Activation memory measured on the meta device: what autograd keeps for backward, per token.

One decoder layer of the real model (its widths, its LoRA, its dtype) runs forward on the meta
device under ``saved_tensors_hooks``; every tensor autograd saves is counted (parameters
excluded), so the figures follow the code that trains, not a formula. Attention is a stand-in
that saves what flash-attention 2 saves (q, k, v, the output and the fp32 log-sum-exp): the
activation memory of the GPU path, with no sequence-squared score matrix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

ATTENTION_NAME = "crashchat_plan_attention"


class _FlashLikeAttention(torch.autograd.Function):
    """Shapes of flash-attention's forward; saves what it saves. Meta tensors only."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_like(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    out = _FlashLikeAttention.apply(query, key, value)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register the stand-in attention with transformers; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _flash_like)
    return ATTENTION_NAME


@dataclass(frozen=True)
class SavedBytes:
    """Bytes autograd kept: all of them, and the largest single tensor."""

    total: int
    largest: int


@contextlib.contextmanager
def count_saved(params: set[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the non-parameter tensors autograd saves inside the block."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def measure(fn: Callable[[], Any], params: set[int]) -> SavedBytes:
    """Saved-tensor bytes of ``fn()`` (each distinct tensor once)."""
    with count_saved(params) as saved:
        fn()
    seen: dict[int, int] = {}
    for t in saved:
        seen[id(t)] = t.numel() * t.element_size()
    return SavedBytes(sum(seen.values()), max(seen.values(), default=0))


def decoder_layer_bytes(model: Any, tokens: int, dtype: torch.dtype) -> SavedBytes:
    """Saved activations of one decoder layer of ``model`` (meta, LoRA applied) for ``tokens``.

    The layer input requires grad, as every layer's does once LoRA sits below it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = base.model.language_model
    layer = language.layers[0]
    hidden = language.config.hidden_size
    params = {id(p) for p in model.parameters()}
    x = torch.empty(1, tokens, hidden, device="meta", dtype=dtype, requires_grad=True)
    positions = torch.arange(tokens, device="meta")[None]

    def run() -> Any:
        cos_sin = language.rotary_emb(x, positions)
        return layer(x, position_embeddings=cos_sin, attention_mask=None, position_ids=positions)

    return measure(run, params)


def logits_bytes(model: Any, positions: int, dtype: torch.dtype) -> SavedBytes:
    """Saved tensors of the vocabulary projection and the fp32 cross-entropy at ``positions``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.lm_head
    params = {id(p) for p in model.parameters()}
    h = torch.empty(positions, head.in_features, device="meta", dtype=dtype, requires_grad=True)
    targets = torch.zeros(positions, dtype=torch.long, device="meta")

    def run() -> Any:
        return torch.nn.functional.cross_entropy(head(h).float(), targets)

    return measure(run, params)
