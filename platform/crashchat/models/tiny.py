"""Build a randomly initialised tiny VideoLLaMA3 with a real processor, saved as a HF directory.

The directory is a normal native-transformers VideoLLaMA3 checkpoint: the same loading code path
(:func:`crashchat.models.loading.load_model`) opens it and ``DAMO-NLP-SG/VideoLLaMA3-7B`` (after
conversion to the native layout).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlama3ImageProcessor,
    VideoLlama3Processor,
    VideoLlama3VideoProcessor,
)
from transformers.models.video_llama_3.configuration_video_llama_3 import VideoLlama3VisionConfig

from crashchat.config import TinyModelConfig
from crashchat.models.metadata import write_model_meta
from crashchat.models.tokenizer import train_tokenizer


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise ValueError(f"tokenizer has no single id for {token!r}")
    return token_id


def build_processor(
    tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig
) -> VideoLlama3Processor:
    """A real VideoLLaMA3 processor sized for ``cfg.frame_size`` frames."""
    px = cfg.frame_size * cfg.frame_size
    # longest_edge is a whole-video pixel budget (VideoLLaMA3 divides it by the frame count):
    # allow frame_size frames for up to 180 frames, never upscale below 28x28.
    size = {"shortest_edge": 28 * 28, "longest_edge": px * 180}
    video_processor = VideoLlama3VideoProcessor(
        size=size, use_token_compression=cfg.use_token_compression
    )
    image_processor = VideoLlama3ImageProcessor(min_pixels=28 * 28, max_pixels=px)
    return VideoLlama3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def build_tiny_config(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast
) -> VideoLlama3Config:
    """The VideoLLaMA3 config of the tiny model."""
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = VideoLlama3VisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        patch_size=14,
    )
    return VideoLlama3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=_token_id(tokenizer, "<|image_pad|>"),
        video_token_id=_token_id(tokenizer, "<|video_pad|>"),
    )


def build_tiny_model(
    out: str | Path,
    cfg: TinyModelConfig,
    texts: Iterable[str],
) -> Path:
    """Train the tokenizer on ``texts``, build the random model and processor, save to ``out``.

    Returns:
        The output directory, loadable with ``AutoModelForImageTextToText`` and ``AutoProcessor``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg)
    config = build_tiny_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model = VideoLlama3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = _token_id(tokenizer, "<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = {
        "kind": "tiny",
        "frame_size": cfg.frame_size,
        "tiny_config": cfg.model_dump(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_model_meta(out, meta)
    return out


def build_random_checkpoint(
    base: str | Path,
    dest: str | Path,
    meta: dict[str, Any],
    prompts: dict[str, str],
    seed: int = 0,
) -> Path:
    """A platform checkpoint of ``base`` with random LoRA adapters and a perturbed projector.

    For tests, benchmarks and serving demos that need checkpoints which answer differently from
    their base without training one. ``meta`` holds at least ``mixture``, ``strategy`` and
    ``tasks``.
    """
    import tempfile

    from crashchat.config import LoraSettings, TrainConfig
    from crashchat.models.checkpoint import write_platform_checkpoint, write_trainables
    from crashchat.models.loading import load_model
    from crashchat.models.lora import apply_lora, trainable_state

    torch.manual_seed(seed)
    model = apply_lora(load_model(base).model, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    adapter, non_lora = trainable_state(model)
    with tempfile.TemporaryDirectory(prefix="crashchat-export-") as tmp:
        export = write_trainables(Path(tmp) / "export", model, adapter, non_lora)
        return write_platform_checkpoint(
            dest,
            export,
            str(base),
            str(base),
            prompts,
            TrainConfig().model_dump(mode="json"),
            {"step": 1, **meta},
        )
