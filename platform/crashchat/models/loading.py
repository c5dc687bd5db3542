"""Load any native-format VideoLLaMA3 directory or hub id, choosing dtype and attention.

flash_attention_2 is used only where CUDA and the flash-attn package are present; bf16 only on
CUDA devices that support it; everything else runs fp32 with SDPA on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from crashchat.models.lean_logits import enable_lean_logits
from crashchat.models.metadata import read_model_meta

log = logging.getLogger(__name__)


def flash_attention_problem() -> str | None:
    """Why flash-attention 2 cannot be used here, or ``None`` when it can.

    A real import, not a package lookup: a flash-attn built against another torch or CUDA is
    found by ``find_spec`` and only fails when imported (undefined symbols), which used to crash
    model loading instead of falling back.
    """
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:
        return f"flash_attn does not import ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def select_attention(prefer_flash: bool = True) -> str:
    """``flash_attention_2`` when CUDA and a working flash-attn are present, else ``sdpa``.

    A flash-attn package that is installed but broken falls back to SDPA with a warning.
    """
    if not prefer_flash:
        return "sdpa"
    problem = flash_attention_problem()
    if problem is None:
        return "flash_attention_2"
    if problem != "no CUDA device":
        log.warning("flash-attention unavailable, using sdpa: %s", problem)
    return "sdpa"


def select_dtype(requested: str = "auto") -> torch.dtype:
    """Resolve ``auto|bf16|fp16|fp32``; ``auto`` is bf16 on capable CUDA, else fp32."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if requested != "auto":
        if requested not in table:
            raise ValueError(f"unknown dtype {requested!r}; choose auto, bf16, fp16 or fp32")
        return table[requested]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass
class LoadedModel:
    """A model with its processor and what the platform knows about it."""

    model: Any
    processor: Any
    source: str
    dtype: torch.dtype
    attn_implementation: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_size(self) -> int | None:
        """Square frame size the model was built for (tiny models), else ``None``."""
        return self.meta.get("frame_size")


def load_model(
    source: str | Path,
    dtype: str = "auto",
    attention: str = "auto",
    device: str | None = None,
    supervised_logits_only: bool = True,
) -> LoadedModel:
    """Load a native ``VideoLlama3ForConditionalGeneration`` and its processor.

    The model computes ``lm_head`` only where needed (:mod:`crashchat.models.lean_logits`).

    Args:
        source: A local directory or a hub id (offline machines need a local directory).
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        attention: ``auto`` (flash-attention where possible, else SDPA), or an explicit
            ``attn_implementation`` such as ``sdpa`` or ``eager``.
        device: Target device; default CUDA when available, else CPU.
        supervised_logits_only: With labels, project only supervised positions (same loss).

    Raises:
        FileNotFoundError: when ``source`` looks like a path but does not exist.
    """
    src = str(source)
    path = Path(src)
    if (src.startswith((".", "/", "~")) or path.exists()) and not path.is_dir():
        raise FileNotFoundError(f"model directory {src} does not exist")
    torch_dtype = select_dtype(dtype)
    attn = select_attention() if attention == "auto" else attention
    # trust_remote_code stays off: only the native transformers implementation is ever run.
    model = AutoModelForImageTextToText.from_pretrained(
        src,
        dtype=torch_dtype,
        attn_implementation=attn,
        trust_remote_code=False,
    )
    enable_lean_logits(model, supervised_logits_only)
    processor = AutoProcessor.from_pretrained(src, trust_remote_code=False)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(target)  # type: ignore[arg-type]  # transformers' stub types .to() oddly
    model.eval()
    return LoadedModel(model, processor, src, torch_dtype, attn, read_model_meta(path))
