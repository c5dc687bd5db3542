"""Import weights published in the upstream (custom-code) VideoLLaMA3 layout.

``DAMO-NLP-SG/VideoLLaMA3-7B`` and the CrashChat checkpoints use ``Videollama3Qwen2ForCausalLM``
names (``model.vision_encoder.*``, ``model.mm_projector.*``, ``model.layers.*``), which
transformers' native ``VideoLlama3ForConditionalGeneration`` does not load. This module renames
every tensor to its native name (values untouched), refuses anything it cannot map, and writes
native directories shard by shard so a 7B never has to fit in memory at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from crashchat.models.checkpoint import (
    ADAPTER_DIR,
    CONFIG_FILE,
    NON_LORA_FILE,
    PROCESSOR_DIR,
    PROMPTS_FILE,
    CheckpointWriter,
    atomic_directory,
)

# Ordered: the first matching prefix wins.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.", "model.vision_model."),
    ("model.mm_projector.", "model.projector."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)
PEFT_PREFIX = "base_model.model."
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class UpstreamFormatError(ValueError):
    """An upstream directory or file cannot be converted; the message names what and where."""


def native_key(key: str) -> str:
    """Native name of an upstream parameter name (PEFT prefix kept if present).

    Raises:
        UpstreamFormatError: when the name belongs to no known part of the model.
    """
    prefix = ""
    if key.startswith(PEFT_PREFIX):
        prefix, key = PEFT_PREFIX, key[len(PEFT_PREFIX) :]
    for old, new in KEY_MAP:
        if key.startswith(old):
            return prefix + new + key[len(old) :]
    raise UpstreamFormatError(f"no native name for upstream tensor {prefix + key!r}")


def upstream_key(key: str) -> str:
    """Inverse of :func:`native_key` (used to write upstream-layout test fixtures)."""
    prefix = ""
    if key.startswith(PEFT_PREFIX):
        prefix, key = PEFT_PREFIX, key[len(PEFT_PREFIX) :]
    for old, new in KEY_MAP:
        if key.startswith(new):
            return prefix + old + key[len(new) :]
    raise UpstreamFormatError(f"no upstream name for native tensor {prefix + key!r}")


def rename_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename every key; all unmappable keys are reported together.

    Raises:
        UpstreamFormatError: listing the keys of ``source`` that have no native name.
    """
    out, unmapped = {}, []
    for key, tensor in state.items():
        try:
            out[native_key(key)] = tensor
        except UpstreamFormatError:
            unmapped.append(key)
    if unmapped:
        raise UpstreamFormatError(
            f"{source}: {len(unmapped)} tensors have no native name, e.g. {unmapped[:5]}"
        )
    return out


def native_config(upstream: dict[str, Any], tokenizer: Any) -> Any:
    """A native ``VideoLlama3Config`` from an upstream ``config.json``."""
    from transformers import Qwen2Config, VideoLlama3Config
    from transformers.models.video_llama_3.configuration_video_llama_3 import (
        VideoLlama3VisionConfig,
    )

    vision_src = upstream.get("vision_encoder_config")
    if not isinstance(vision_src, dict):
        raise UpstreamFormatError(
            "config.json: no vision_encoder_config (not an upstream VideoLLaMA3?)"
        )
    text_keys = set(Qwen2Config().to_dict())
    text = Qwen2Config(
        **{k: v for k, v in upstream.items() if k in text_keys and k != "model_type"}
    )
    vision_keys = set(VideoLlama3VisionConfig().to_dict())
    vision = VideoLlama3VisionConfig(
        **{k: v for k, v in vision_src.items() if k in vision_keys and k != "model_type"}
    )
    video_token = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    image_token = upstream.get(
        "image_token_index", tokenizer.convert_tokens_to_ids("<|image_pad|>")
    )
    return VideoLlama3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=int(image_token),
        video_token_id=int(video_token if isinstance(video_token, int) else image_token),
        tie_word_embeddings=bool(upstream.get("tie_word_embeddings", False)),
    )


def _shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [src / n for n in names]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise UpstreamFormatError(f"{src}: no *.safetensors weights")
    return shards


def _processor(src: Path, tokenizer: Any) -> Any:
    from transformers import (
        VideoLlama3ImageProcessor,
        VideoLlama3Processor,
        VideoLlama3VideoProcessor,
    )

    from crashchat.models.tokenizer import CHAT_TEMPLATE

    settings: dict[str, Any] = {}
    pre = src / "preprocessor_config.json"
    if pre.is_file():
        raw = json.loads(pre.read_text())
        keep = ("image_mean", "image_std", "rescale_factor", "patch_size", "merge_size")
        settings = {k: raw[k] for k in keep if k in raw}
    image = VideoLlama3ImageProcessor(**settings)
    video = VideoLlama3VideoProcessor(**settings)
    template = tokenizer.chat_template if "video" in str(tokenizer.chat_template or "") else None
    return VideoLlama3Processor(
        image_processor=image,
        video_processor=video,
        tokenizer=tokenizer,
        chat_template=template or CHAT_TEMPLATE,
    )


def import_base(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Convert an upstream VideoLLaMA3 directory into a native one, one shard at a time.

    Returns:
        ``{"tensors": n, "shards": k, "out": path}``.

    Raises:
        UpstreamFormatError: on a missing file or an unmappable tensor (nothing is written then).
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    src, out = Path(src), Path(out)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UpstreamFormatError(f"{cfg_path}: missing")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    config = native_config(json.loads(cfg_path.read_text()), tokenizer)
    shards = _shards(src)
    weight_map: dict[str, str] = {}
    total = 0
    with atomic_directory(out) as staging:
        for i, shard in enumerate(shards, 1):
            state = rename_state(load_file(str(shard)), str(shard))
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(state, str(staging / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(state, name))
            total += len(state)
            del state
        size = sum((staging / n).stat().st_size for n in set(weight_map.values()))
        (staging / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2)
        )
        config.architectures = ["VideoLlama3ForConditionalGeneration"]
        config.save_pretrained(str(staging))
        _processor(src, tokenizer).save_pretrained(str(staging))
    return {"tensors": total, "shards": len(shards), "out": str(out)}


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a published pickle must never be able to run code here.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UpstreamFormatError(f"{path}: expected a dict of tensors")
    return state


def import_checkpoint(
    lora: str | Path,
    non_lora: str | Path | None,
    out: str | Path,
    base_model: str,
    tasks: list[str] | None = None,
    mixture: str | None = None,
) -> dict[str, Any]:
    """Convert a published CrashChat checkpoint (PEFT adapter + projector pickle) to ours.

    Args:
        lora: Folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).
        non_lora: ``non_lora_trainables.bin`` (projector weights), if any.
        out: Platform checkpoint folder to write.
        base_model: Native base model it applies to (path or id), recorded in the checkpoint.
        tasks: Tasks the checkpoint was trained on (recorded; for routing).
        mixture: Its mixture name.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor

    from crashchat.config import LORA_TARGET_REGEX

    lora = Path(lora)
    cfg_path = lora / "adapter_config.json"
    if not cfg_path.is_file():
        raise UpstreamFormatError(f"{cfg_path}: missing (not a PEFT adapter folder)")
    adapter_cfg = json.loads(cfg_path.read_text())
    weights = lora / "adapter_model.safetensors"
    if weights.is_file():
        adapter = load_file(str(weights))
    elif (lora / "adapter_model.bin").is_file():
        adapter = _load_pickle(lora / "adapter_model.bin")
    else:
        raise UpstreamFormatError(f"{lora}: no adapter_model.safetensors or adapter_model.bin")
    adapter = rename_state(adapter, str(weights))
    # Upstream targets LLM linears by short names; keep adapters off the vision encoder.
    adapter_cfg["target_modules"] = LORA_TARGET_REGEX
    adapter_cfg["base_model_name_or_path"] = base_model
    extra: dict[str, torch.Tensor] = {}
    if non_lora is not None:
        raw = _load_pickle(Path(non_lora))
        extra = {
            k[len(PEFT_PREFIX) :] if k.startswith(PEFT_PREFIX) else k: v for k, v in raw.items()
        }
        extra = rename_state(extra, str(non_lora))
    meta = {
        "base_model": base_model,
        "mixture": mixture or "imported",
        "strategy": "imported",
        "tasks": tasks or [],
        "source": {"lora": str(lora), "non_lora": str(non_lora) if non_lora else None},
    }
    with CheckpointWriter(out, meta) as writer:
        stage = writer.staging
        (stage / ADAPTER_DIR).mkdir()
        (stage / ADAPTER_DIR / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
        save_file(adapter, str(stage / ADAPTER_DIR / "adapter_model.safetensors"))
        if extra:
            save_file(extra, str(stage / NON_LORA_FILE))
        AutoProcessor.from_pretrained(base_model).save_pretrained(str(stage / PROCESSOR_DIR))
        (stage / PROMPTS_FILE).write_text("{}")
        (stage / CONFIG_FILE).write_text("imported: true\n")
    return {"adapter_tensors": len(adapter), "non_lora_tensors": len(extra), "out": str(out)}
