"""Import weights published in the upstream (custom-code) VideoLLaMA3 layout.

``DAMO-NLP-SG/VideoLLaMA3-7B`` and the CrashChat checkpoints use ``Videollama3Qwen2ForCausalLM``
names (``model.vision_encoder.*``, ``model.mm_projector.*``, ``model.layers.*``; the training
code nests the encoder once more, ``model.vision_encoder.vision_encoder.*``, and saves a
``pytorch_model.bin``), which transformers' native ``VideoLlama3ForConditionalGeneration`` does
not load. This module renames every tensor to its native name (values untouched), converts the
config key by key and the processor settings, and refuses anything it cannot place: an unknown
tensor or config key, a missing or misshapen weight. Nothing is dropped silently; what is left
out on purpose (derived rotary buffers, upstream's frozen zero LoRA on the vision encoder,
training-only config keys) is listed in the result. Native folders are written shard by shard so
a 7B never has to fit in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from crashchat.models.metadata import write_model_meta

# Ordered: the first matching prefix wins (the training layout nests the encoder once more).
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.vision_encoder.", "model.vision_model."),
    ("model.vision_encoder.", "model.vision_model."),
    ("model.mm_projector.", "model.projector."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)
PEFT_PREFIX = "base_model.model."
# Rotary frequencies are recomputed from the config; a checkpoint that stores them loses nothing.
DERIVED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")
SHARD_BYTES = 4 << 30

# -- config keys ----------------------------------------------------------------------------
TEXT_KEYS = frozenset(
    {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
        "initializer_range", "rms_norm_eps", "use_cache", "tie_word_embeddings", "rope_theta",
        "rope_scaling", "use_sliding_window", "sliding_window", "max_window_layers",
        "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
    }
)  # fmt: skip
VISION_KEYS = frozenset(
    {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_channels", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
        "initializer_range",
    }
)  # fmt: skip
# Keys every transformers 4.x config carries (generation defaults, bookkeeping): not structure.
GENERIC_KEYS = frozenset(
    {
        "architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype",
        "model_type", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
        "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
        "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
        "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping",
        "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
        "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
        "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens", "finetuning_task", "id2label", "label2id",
        "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
        "task_specific_params", "problem_type", "_attn_implementation_autoset", "dtype",
    }
)  # fmt: skip
# Settings upstream's training code writes into the configs it saves: how it was trained, not
# what the model is. Recorded, not used.
TRAINING_KEYS = frozenset(
    {
        "mm_vision_encoder", "use_mm_proj", "mm_vision_select_feature", "use_flash_loss",
        "tokenizer_padding_side", "tokenizer_model_max_length", "llm_lr", "vision_encoder_lr",
        "mm_projector_lr", "max_frames", "image_aspect_ratio", "image_size",
        "image_token_length", "is_alignment", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter",
        "mm_use_im_start_end", "mm_use_im_patch_token", "mm_patch_merge_type",
    }
)  # fmt: skip
VISION_MODEL_TYPE = "videollama3_vision_encoder"
PROJECTOR_TYPE = "mlp2x_gelu"  # the only projector the native model has (Linear, GELU, Linear)


class UpstreamFormatError(ValueError):
    """An upstream directory or file cannot be converted; the message names what and where."""


@dataclass
class ConvertedConfig:
    """A native config and what became of every upstream key that is not model structure."""

    config: Any
    use_token_compression: bool
    dtype: str | None
    notes: dict[str, str] = field(default_factory=dict)


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


# -- config ---------------------------------------------------------------------------------
def _token_id(tokenizer: Any, token: str, where: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise UpstreamFormatError(f"{where}: the tokenizer has no {token} token")
    return token_id


def _check_value(native: Any, key: str, value: Any, where: str) -> None:
    if key == "rope_theta":
        got = (getattr(native, "rope_parameters", None) or {}).get("rope_theta")
    else:
        got = getattr(native, key, None)
    if got != value:
        raise UpstreamFormatError(f"{where}: {key}={value!r} came out as {got!r} after conversion")


def _vision_config(src: Any, where: str, notes: dict[str, str]) -> Any:
    from transformers.models.video_llama_3.configuration_video_llama_3 import (
        VideoLlama3VisionConfig,
    )

    if not isinstance(src, dict):
        raise UpstreamFormatError(
            f"{where}: no vision_encoder_config (not an upstream VideoLLaMA3?)"
        )
    if src.get("model_type", VISION_MODEL_TYPE) != VISION_MODEL_TYPE:
        raise UpstreamFormatError(
            f"{where}: vision_encoder_config.model_type {src['model_type']!r}, expected {VISION_MODEL_TYPE!r}"
        )
    homeless = sorted(set(src) - VISION_KEYS - GENERIC_KEYS)
    if homeless:
        raise UpstreamFormatError(
            f"{where}: vision_encoder_config keys with no native home: {homeless}"
        )
    values = {k: v for k, v in src.items() if k in VISION_KEYS}
    vision = VideoLlama3VisionConfig(**values)
    for key, value in values.items():
        _check_value(vision, f"{key}", value, f"{where}: vision_encoder_config")
    notes["vision_encoder_config.rope"] = (
        "the vision rotary base is fixed at 10000 upstream and natively"
    )
    return vision


def _special_keys(
    raw: dict[str, Any], where: str, notes: dict[str, str]
) -> tuple[bool, str | None]:
    """Check upstream-only top-level keys; returns (use_token_compression, dtype)."""
    if raw.get("model_type") != "videollama3_qwen2":
        raise UpstreamFormatError(
            f"{where}: model_type {raw.get('model_type')!r}, expected 'videollama3_qwen2'"
        )
    projector = raw.get("mm_projector_type", PROJECTOR_TYPE)
    if projector != PROJECTOR_TYPE:
        raise UpstreamFormatError(
            f"{where}: mm_projector_type {projector!r}; the native model has only {PROJECTOR_TYPE!r}"
        )
    hidden = raw.get("mm_hidden_size")
    vision_hidden = (raw.get("vision_encoder_config") or {}).get("hidden_size")
    if hidden is not None and hidden != vision_hidden:
        raise UpstreamFormatError(
            f"{where}: mm_hidden_size {hidden} differs from the vision hidden size {vision_hidden}"
        )
    if raw.get("mm_vision_select_layer", -1) != -1:
        raise UpstreamFormatError(
            f"{where}: mm_vision_select_layer {raw['mm_vision_select_layer']}; the native model uses the last layer"
        )
    if raw.get("rope_scaling") is not None:
        raise UpstreamFormatError(f"{where}: rope_scaling {raw['rope_scaling']!r} is not supported")
    notes["image_token_index"] = (
        "upstream's <image> placeholder; the native model uses <|image_pad|> and <|video_pad|>"
    )
    notes["vision_encoder"] = "weights come from this checkpoint, not from the named encoder repo"
    for key in sorted(TRAINING_KEYS & set(raw)):
        notes[key] = f"training setting ({raw[key]!r}), not part of the model"
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    return bool(raw.get("use_token_compression", True)), dtype


def convert_config(
    raw: dict[str, Any], tokenizer: Any, where: str = "config.json"
) -> ConvertedConfig:
    """A native ``VideoLlama3Config`` from an upstream ``config.json``, every value carried over.

    Args:
        raw: The upstream config dict.
        tokenizer: The checkpoint's tokenizer (for the native placeholder ids); ``None`` uses
            Qwen2.5's ids (plans without a tokenizer).
        where: Named in errors.

    Raises:
        UpstreamFormatError: on a key with no native home, an unsupported value, or a value that
            did not survive the conversion.
    """
    from transformers import Qwen2Config, VideoLlama3Config

    from crashchat.models.architecture import DEFAULT_IMAGE_TOKEN_ID, DEFAULT_VIDEO_TOKEN_ID

    notes: dict[str, str] = {}
    special = {
        "vision_encoder_config", "vision_encoder", "mm_projector_type", "use_token_compression",
        "image_token_index", "mm_hidden_size", "mm_vision_select_layer",
    }  # fmt: skip
    homeless = sorted(set(raw) - TEXT_KEYS - GENERIC_KEYS - TRAINING_KEYS - special)
    if homeless:
        raise UpstreamFormatError(f"{where}: keys with no native home: {homeless}")
    compression, dtype = _special_keys(raw, where, notes)
    vision = _vision_config(raw.get("vision_encoder_config"), where, notes)
    values = {k: v for k, v in raw.items() if k in TEXT_KEYS and k != "rope_scaling"}
    text = Qwen2Config(**values)
    for key, value in values.items():
        _check_value(text, key, value, where)
    if tokenizer is None:
        image_id, video_id = DEFAULT_IMAGE_TOKEN_ID, DEFAULT_VIDEO_TOKEN_ID
    else:
        image_id = _token_id(tokenizer, "<|image_pad|>", where)
        video_id = _token_id(tokenizer, "<|video_pad|>", where)
    config = VideoLlama3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=image_id,
        video_token_id=video_id,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )
    for key, value in values.items():
        _check_value(config.text_config, key, value, f"{where} (native text_config)")
    if dtype:
        config.dtype = dtype
    return ConvertedConfig(config, compression, dtype, notes)


# -- processor --------------------------------------------------------------------------------
def load_native_config(source: str | Path, tokenizer: Any = None) -> Any:
    """A native ``VideoLlama3Config`` from a model folder or a ``config.json``.

    The file may be native (``model_type: video_llama_3``) or upstream's custom-code format
    (``videollama3_qwen2``), which is converted as ``checkpoint import-base`` converts it.

    Raises:
        FileNotFoundError: when there is no config.json.
        UpstreamFormatError: when an upstream config cannot convert.
    """
    from transformers import VideoLlama3Config

    path = Path(source)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json")
    raw = json.loads(file.read_text())
    if raw.get("model_type") == "video_llama_3":
        return VideoLlama3Config.from_dict(raw)
    return convert_config(raw, tokenizer, str(file)).config


PROCESSOR_KEYS = frozenset(
    {
        "image_mean", "image_std", "rescale_factor", "patch_size", "min_tokens", "max_tokens",
        "do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "resample",
    }
)  # fmt: skip
PROCESSOR_META = frozenset(
    {
        "image_processor_type",
        "processor_class",
        "auto_map",
        "_processor_class",
        "feature_extractor_type",
    }
)


def build_processor(
    src: Path, tokenizer: Any, use_token_compression: bool, max_visual_tokens: int | None = None
) -> tuple[Any, int]:
    """The native processor for an upstream checkpoint; returns it and its visual budget.

    The video processor's size limits follow ``max_visual_tokens`` (default: upstream's
    ``max_tokens``, 16384), the chat template is upstream's training format with native tokens
    (:data:`crashchat.models.tokenizer.CHAT_TEMPLATE`), never the source's own template.

    Raises:
        UpstreamFormatError: on a preprocessor setting with no native home.
    """
    from transformers import (
        VideoLlama3ImageProcessor,
        VideoLlama3Processor,
        VideoLlama3VideoProcessor,
    )

    from crashchat.models.processors import image_pixel_limits, video_size
    from crashchat.models.tokenizer import CHAT_TEMPLATE

    raw: dict[str, Any] = {}
    pre = src / "preprocessor_config.json"
    if pre.is_file():
        raw = json.loads(pre.read_text())
    homeless = sorted(set(raw) - PROCESSOR_KEYS - PROCESSOR_META)
    if homeless:
        raise UpstreamFormatError(f"{pre}: settings with no native home: {homeless}")
    common = {
        k: raw[k]
        for k in (
            "image_mean",
            "image_std",
            "rescale_factor",
            "do_resize",
            "do_rescale",
            "do_normalize",
            "do_convert_rgb",
        )
        if k in raw
    }
    patch = int(raw.get("patch_size", 14))
    budget = int(max_visual_tokens or raw.get("max_tokens", 16384))
    limits = image_pixel_limits(
        int(raw.get("min_tokens", 16)), int(raw.get("max_tokens", 16384)), patch
    )
    image = VideoLlama3ImageProcessor(
        patch_size=patch,
        min_pixels=limits["min_pixels"],
        max_pixels=limits["max_pixels"],
        **common,
    )
    video = VideoLlama3VideoProcessor(
        size=video_size(budget, patch),
        patch_size=patch,
        use_token_compression=use_token_compression,
        **common,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    processor = VideoLlama3Processor(
        image_processor=image,
        video_processor=video,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return processor, budget


# -- weights ---------------------------------------------------------------------------------
def _weight_files(src: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [src / n for n in names]
    shards = sorted(src.glob("*.safetensors"))
    if shards:
        return shards
    if (src / "pytorch_model.bin").is_file():
        return [src / "pytorch_model.bin"]
    raise UpstreamFormatError(f"{src}: no *.safetensors or pytorch_model.bin weights")


def load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle of tensors, read so that it can never run code (``weights_only``)."""
    try:
        # mmap: a 15 GB pytorch_model.bin is paged in tensor by tensor, not read at once.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy format
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UpstreamFormatError(f"{path}: expected a dict of tensors")
    return state


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return load_pickle(path)


def _native_tensors(files: list[Path]) -> Iterator[tuple[Path, dict[str, torch.Tensor], list[str]]]:
    """(file, native-named tensors, derived buffers dropped) for each upstream weight file."""
    for path in files:
        state = _read_weights(path)
        derived = sorted(k for k in state if k.endswith(DERIVED_SUFFIXES))
        for k in derived:
            del state[k]
        yield path, rename_state(state, str(path)), derived


def check_complete(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str
) -> None:
    """Every expected weight present with its shape, nothing else.

    Raises:
        UpstreamFormatError: naming missing, unexpected and misshapen weights.
    """
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    bad = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing:
        problems.append(
            f"{len(missing)} weights missing (they would stay at random init), e.g. {missing[:5]}"
        )
    if extra:
        problems.append(f"{len(extra)} weights the native model has no place for, e.g. {extra[:5]}")
    if bad:
        problems.append(
            "shapes differ from the config for "
            + ", ".join(f"{k} {found[k]} != {expected[k]}" for k in bad[:5])
        )
    if problems:
        raise UpstreamFormatError(f"{where}: " + "; ".join(problems))


class _ShardWriter:
    """Writes native tensors into ``model-NNNNN.safetensors`` shards of about ``SHARD_BYTES``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pending: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.files: list[tuple[str, list[str]]] = []

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            self.pending[key] = tensor.contiguous()
            self.bytes += tensor.numel() * tensor.element_size()
            if self.bytes >= SHARD_BYTES:
                self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"part-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.bytes = {}, 0

    def finish(self) -> int:
        """Name shards ``model-i-of-n``, write the index; returns the shard count."""
        self.flush()
        n = len(self.files)
        weight_map: dict[str, str] = {}
        for i, (tmp, keys) in enumerate(self.files, 1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            (self.folder / tmp).rename(self.folder / final)
            weight_map.update(dict.fromkeys(keys, final))
        size = sum((self.folder / n).stat().st_size for n in set(weight_map.values()))
        (self.folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2)
        )
        return n


def _copy_weights(
    files: list[Path], expected: dict[str, tuple[int, ...]], staging: Path
) -> tuple[dict[str, tuple[int, ...]], list[str], int]:
    """Write the native tensors of ``files`` as shards in ``staging``, one source file in memory
    at a time; (shapes found, derived buffers left out, shards written).

    Raises:
        UpstreamFormatError: when a file holds a tensor the native model has no place for.
    """
    found: dict[str, tuple[int, ...]] = {}
    dropped: list[str] = []
    writer = _ShardWriter(staging)
    for path, state, derived in _native_tensors(files):
        dropped += derived
        unknown = sorted(k for k in state if k not in expected)
        if unknown:
            raise UpstreamFormatError(
                f"{path}: {len(unknown)} tensors the native model has no place for, e.g. {unknown[:5]}"
            )
        found.update({k: tuple(v.shape) for k, v in state.items()})
        writer.add(state)
        del state
    return found, dropped, writer.finish()


def import_base(
    src: str | Path, out: str | Path, max_visual_tokens: int | None = None
) -> dict[str, Any]:
    """Convert an upstream VideoLLaMA3 directory into a native one, one file at a time.

    Accepts the hub layout (safetensors shards, ``model.vision_encoder.*``) and the training
    layout (``pytorch_model.bin``, ``model.vision_encoder.vision_encoder.*``, as CrashChat's
    baseline is published). Every weight of the native model must come from the source.

    Args:
        src: Upstream model folder (config.json, weights, tokenizer, preprocessor_config.json).
        out: Native folder to write (replaced atomically).
        max_visual_tokens: Whole-clip visual budget of the saved video processor (default:
            upstream's ``max_tokens``, 16384).

    Returns:
        Counts, the visual budget and what was left out on purpose, with the reason.

    Raises:
        UpstreamFormatError: on a missing file, a config key or tensor with no native home, or a
            missing or misshapen weight (nothing is written then).
    """
    from transformers import AutoTokenizer, GenerationConfig

    from crashchat.models.architecture import expected_weights

    src, out = Path(src), Path(out)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UpstreamFormatError(f"{cfg_path}: missing")
    # trust_remote_code off: the config names upstream custom code, which never runs here.
    tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    converted = convert_config(json.loads(cfg_path.read_text()), tokenizer, str(cfg_path))
    config = converted.config
    expected = expected_weights(config)
    with atomic_directory(out) as staging:
        found, dropped, shards = _copy_weights(_weight_files(src), expected, staging)
        check_complete(found, expected, str(src))
        config.architectures = ["VideoLlama3ForConditionalGeneration"]
        config.save_pretrained(str(staging))
        processor, budget = build_processor(
            src, tokenizer, converted.use_token_compression, max_visual_tokens
        )
        processor.save_pretrained(str(staging))
        eos = _token_id(tokenizer, "<|im_end|>", str(src))
        GenerationConfig(
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos, do_sample=False
        ).save_pretrained(str(staging))
        meta = {
            "kind": "imported",
            "source": str(src),
            "max_visual_tokens": budget,
            "use_token_compression": converted.use_token_compression,
            "left_out": {"derived_buffers": dropped, "config_keys": converted.notes},
        }
        write_model_meta(staging, meta)
    return {
        "tensors": len(found),
        "shards": shards,
        "out": str(out),
        "max_visual_tokens": budget,
        "rope_theta": config.text_config.rope_parameters["rope_theta"],
        "dropped": {"derived_buffers": len(dropped)},
    }


# -- published fine-tuned checkpoints -----------------------------------------------------------
VISION_LORA_PREFIX = PEFT_PREFIX + "model.vision_model."


def _split_vision_lora(
    adapter: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], int]:
    """Drop upstream's LoRA on the vision encoder's q/k/v (frozen, B = 0, so no effect).

    Upstream passes short target names to peft, which matches them by suffix on the SigLIP
    encoder too; those adapters never train (the encoder is frozen) and keep lora_B = 0.

    Raises:
        UpstreamFormatError: when a vision-encoder lora_B is not zero (it would change outputs).
    """
    vision = {k: v for k, v in adapter.items() if k.startswith(VISION_LORA_PREFIX)}
    nonzero = sorted(k for k, v in vision.items() if "lora_B" in k and bool(v.abs().sum() > 0))
    if nonzero:
        raise UpstreamFormatError(
            f"{where}: {len(nonzero)} vision-encoder LoRA matrices are not zero (e.g. {nonzero[:3]}); "
            "the platform keeps adapters on the language model only and cannot drop them"
        )
    return {k: v for k, v in adapter.items() if k not in vision}, len(vision)


def _expected_adapter(config: Any, target_regex: str, r: int) -> dict[str, tuple[int, ...]]:
    """PEFT-saved names and shapes of a LoRA of rank ``r`` on the modules ``target_regex`` picks."""
    import re

    from crashchat.models.architecture import build_meta_model

    pattern = re.compile(target_regex)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in build_meta_model(config).named_modules():
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name):
            shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (r, module.in_features)
            shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (module.out_features, r)
    return shapes


def _read_adapter(lora: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(adapter_config.json, its tensors as saved, the weights file) of a PEFT adapter folder."""
    from safetensors.torch import load_file

    cfg_path = lora / "adapter_config.json"
    if not cfg_path.is_file():
        raise UpstreamFormatError(f"{cfg_path}: missing (not a PEFT adapter folder)")
    weights = lora / "adapter_model.safetensors"
    if weights.is_file():
        return json.loads(cfg_path.read_text()), load_file(str(weights)), weights
    weights = lora / "adapter_model.bin"
    if weights.is_file():
        return json.loads(cfg_path.read_text()), load_pickle(weights), weights
    raise UpstreamFormatError(f"{lora}: no adapter_model.safetensors or adapter_model.bin")


def _read_projector(path: Path, config: Any) -> dict[str, torch.Tensor]:
    """Native tensors of upstream's ``non_lora_trainables.bin``: the whole projector, and any
    other base weight it holds, each with the native model's shape."""
    from crashchat.models.architecture import expected_weights

    raw = load_pickle(path)
    extra = {k[len(PEFT_PREFIX) :] if k.startswith(PEFT_PREFIX) else k: v for k, v in raw.items()}
    extra = rename_state(extra, str(path))
    base = expected_weights(config)
    projector = {k: s for k, s in base.items() if k.startswith("model.projector.")}
    found = {k: tuple(v.shape) for k, v in extra.items()}
    check_complete(found, {**projector, **{k: base[k] for k in found if k in base}}, str(path))
    return extra


def _write_imported(
    out: str | Path,
    meta: dict[str, Any],
    adapter_cfg: dict[str, Any],
    adapter: dict[str, torch.Tensor],
    extra: dict[str, torch.Tensor],
) -> None:
    """Write an imported checkpoint in the platform layout, with its base model's processor."""
    from safetensors.torch import save_file
    from transformers import AutoProcessor

    with CheckpointWriter(out, meta) as writer:
        stage = writer.staging
        (stage / ADAPTER_DIR).mkdir()
        (stage / ADAPTER_DIR / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
        save_file(adapter, str(stage / ADAPTER_DIR / "adapter_model.safetensors"))
        if extra:
            save_file(extra, str(stage / NON_LORA_FILE))
        processor = AutoProcessor.from_pretrained(meta["base_model"])
        processor.save_pretrained(str(stage / PROCESSOR_DIR))
        (stage / PROMPTS_FILE).write_text("{}")
        (stage / CONFIG_FILE).write_text("imported: true\n")


def import_checkpoint(
    lora: str | Path,
    non_lora: str | Path | None,
    out: str | Path,
    base_model: str,
    tasks: list[str] | None = None,
    mixture: str | None = None,
) -> dict[str, Any]:
    """Convert a published CrashChat checkpoint (PEFT adapter + projector pickle) to ours.

    Every LoRA matrix the native model's language model takes must be in the adapter, with its
    shape; the projector file must hold the whole projector. Upstream's zero LoRA on the vision
    encoder is dropped on purpose (and said so in the result).

    Args:
        lora: Folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).
        non_lora: ``non_lora_trainables.bin`` (projector weights), if any.
        out: Platform checkpoint folder to write.
        base_model: Native base model it applies to (path or id), recorded in the checkpoint.
        tasks: Tasks the checkpoint was trained on (recorded; for routing).
        mixture: Its mixture name.

    Raises:
        UpstreamFormatError: on a missing file, unknown or missing tensor, or a wrong shape.
    """
    from crashchat.config import LORA_TARGET_REGEX

    lora = Path(lora)
    adapter_cfg, adapter, weights = _read_adapter(lora)
    adapter, vision_dropped = _split_vision_lora(rename_state(adapter, str(weights)), str(weights))
    try:
        config = load_native_config(base_model)
    except FileNotFoundError:
        raise UpstreamFormatError(
            f"base model {base_model}: no local config.json (give the native folder import-base wrote)"
        ) from None
    r = int(adapter_cfg.get("r", 0))
    wanted = _expected_adapter(config, LORA_TARGET_REGEX, r)
    check_complete(
        {k: tuple(v.shape) for k, v in adapter.items()}, wanted, f"{weights} (LoRA r={r})"
    )
    # Upstream targets LLM linears by short names; keep adapters off the vision encoder.
    adapter_cfg["target_modules"] = LORA_TARGET_REGEX
    adapter_cfg["base_model_name_or_path"] = base_model
    extra = _read_projector(Path(non_lora), config) if non_lora is not None else {}
    meta = {
        "base_model": base_model,
        "mixture": mixture or "imported",
        "strategy": "imported",
        "tasks": tasks or [],
        "source": {"lora": str(lora), "non_lora": str(non_lora) if non_lora else None},
        "dropped_vision_lora_tensors": vision_dropped,
    }
    _write_imported(out, meta, adapter_cfg, adapter, extra)
    note = None
    if vision_dropped:
        note = (
            f"dropped {vision_dropped} vision-encoder LoRA tensors: upstream's peft matched q/k/v "
            "of the frozen SigLIP encoder by suffix; their lora_B is zero, so they had no effect"
        )
    return {
        "adapter_tensors": len(adapter),
        "non_lora_tensors": len(extra),
        "dropped_vision_lora_tensors": vision_dropped,
        "note": note,
        "out": str(out),
        "lora_parameters": sum(v.numel() for v in adapter.values()),
    }
