"""Upstream VideoLLaMA3 checkpoints written from upstream's own names and config format.

Independent of the platform's key mapping: the tensor names and shapes below are read off
DAMO-NLP-SG/VideoLLaMA3's model code (``inference/transformers_api/modeling_videollama3.py``,
``modeling_videollama3_encoder.py``: Qwen2 LLM under ``model.``, the SigLIP-NaViT encoder under
``model.vision_encoder.``, the ``mlp2x_gelu`` projector under ``model.mm_projector.readout``)
and the training layout ``scripts/convert_hf_checkpoint.py`` writes
(``model.vision_encoder.vision_encoder.*``, one ``pytorch_model.bin``). The config is the hub's
``config.json`` format (``Videollama3Qwen2Config``: Qwen2 keys at the top level, the encoder in
``vision_encoder_config``), with a non-default value in every field that matters, and every
tensor holds values no other tensor holds, so a swapped or dropped tensor cannot go unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# Upstream name prefix -> the native name prefix the model must end up with, written from the
# two codebases' module trees (not from the platform's mapping).
HUB_TO_NATIVE = {
    "model.embed_tokens.": "model.language_model.embed_tokens.",
    "model.layers.": "model.language_model.layers.",
    "model.norm.": "model.language_model.norm.",
    "lm_head.": "lm_head.",
    "model.vision_encoder.": "model.vision_model.",
    "model.mm_projector.": "model.projector.",
}
TRAINING_VISION_PREFIX = "model.vision_encoder.vision_encoder."

# Upstream's training chat template (videollama3/model/processor.py) expects num_frames in a video
# part; a tokenizer shipped with it must not leak into the imported processor.
UPSTREAM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "{% for i in range(content['num_frames']) %}Time {{ content['timestamps'][i] }}s:<image>"
    "{% if not loop.last %},{% endif %}{% endfor %}\n{% else %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
)


@dataclass(frozen=True)
class UpstreamSpec:
    """Widths and depths of the checkpoint (defaults tiny; ``seven_b_widths`` for the 7B's)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 96
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 48
    patch: int = 14
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    vision_layer_norm_eps: float = 1e-5
    vision_act: str = "gelu"
    use_token_compression: bool = False
    dtype: torch.dtype = torch.float32


def seven_b_widths(layers: int = 1, vision_layers: int = 1) -> UpstreamSpec:
    """VideoLLaMA3-7B's widths (Qwen2.5-7B and SigLIP-NaViT) at a small depth."""
    return UpstreamSpec(
        hidden=3584,
        layers=layers,
        heads=28,
        kv_heads=4,
        intermediate=18944,
        vision_hidden=1152,
        vision_layers=vision_layers,
        vision_heads=16,
        vision_intermediate=4304,
        vision_layer_norm_eps=1e-6,
        vision_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        dtype=torch.bfloat16,
    )


def upstream_shapes(spec: UpstreamSpec, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the hub checkpoint: upstream name -> shape."""
    h, kv = spec.hidden, spec.kv_heads * (spec.hidden // spec.heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for n in range(spec.layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (spec.intermediate, h),
            p + "mlp.up_proj.weight": (spec.intermediate, h),
            p + "mlp.down_proj.weight": (h, spec.intermediate),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    v, vi = spec.vision_hidden, spec.vision_intermediate
    e = "model.vision_encoder."
    shapes |= {
        e + "embeddings.patch_embedding.weight": (v, 3, spec.patch, spec.patch),
        e + "embeddings.patch_embedding.bias": (v,),
        e + "post_layernorm.weight": (v,),
        e + "post_layernorm.bias": (v,),
    }
    for n in range(spec.vision_layers):
        p = f"{e}encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {p + f"self_attn.{proj}.weight": (v, v), p + f"self_attn.{proj}.bias": (v,)}
        shapes |= {
            p + "layer_norm1.weight": (v,),
            p + "layer_norm1.bias": (v,),
            p + "layer_norm2.weight": (v,),
            p + "layer_norm2.bias": (v,),
            p + "mlp.fc1.weight": (vi, v),
            p + "mlp.fc1.bias": (vi,),
            p + "mlp.fc2.weight": (v, vi),
            p + "mlp.fc2.bias": (v,),
        }
    shapes |= {
        "model.mm_projector.readout.0.weight": (h, v),
        "model.mm_projector.readout.0.bias": (h,),
        "model.mm_projector.readout.2.weight": (h, h),
        "model.mm_projector.readout.2.bias": (h,),
    }
    return shapes


def distinct_tensors(
    shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Small random values, each tensor offset by its own index: no two tensors alike."""
    gen = torch.Generator().manual_seed(1234)
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        base = (
            1.0
            if name.endswith(("layernorm.weight", "norm.weight", "norm1.weight", "norm2.weight"))
            else 0.0
        )
        values = torch.randn(shape, generator=gen) * 0.02 + base + (i + 1) * 1e-3
        out[name] = values.to(dtype)
    return out


def upstream_config(spec: UpstreamSpec, vocab: int, tokenizer) -> dict:  # type: ignore[no-untyped-def]
    """The hub ``config.json`` (``Videollama3Qwen2Config``) with non-default values."""
    return {
        "architectures": ["Videollama3Qwen2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_videollama3.Videollama3Qwen2Config",
            "AutoModelForCausalLM": "modeling_videollama3.Videollama3Qwen2ForCausalLM",
        },
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.layers,
        "mm_projector_type": "mlp2x_gelu",
        "model_type": "videollama3_qwen2",
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.kv_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": spec.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16" if spec.dtype == torch.bfloat16 else "float32",
        "transformers_version": "4.46.3",
        "use_cache": True,
        "use_sliding_window": False,
        "use_token_compression": spec.use_token_compression,
        "vision_encoder": None,
        "vision_encoder_config": {
            "hidden_act": spec.vision_act,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "layer_norm_eps": spec.vision_layer_norm_eps,
            "model_type": "videollama3_vision_encoder",
            "num_attention_heads": spec.vision_heads,
            "num_hidden_layers": spec.vision_layers,
            "patch_size": spec.patch,
        },
        "vocab_size": vocab,
    }


PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Videollama3ImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "max_tokens": 16384,
    "min_tokens": 16,
    "patch_size": 14,
    "processor_class": "Videollama3Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
}


def upstream_tokenizer(texts: list[str]):  # type: ignore[no-untyped-def]
    """A reduced-vocabulary stand-in for Qwen2.5's tokenizer with upstream's added tokens."""
    from crashchat.models.tokenizer import train_tokenizer

    tok = train_tokenizer(texts, 512)
    tok.add_tokens(["<image>", "<|stream_start|>", "<|stream_end|>"], special_tokens=True)
    tok.chat_template = UPSTREAM_TEMPLATE
    return tok


def write_upstream_checkpoint(
    dest: Path, spec: UpstreamSpec, texts: list[str], layout: str = "hub", shards: int = 2
) -> dict[str, torch.Tensor]:
    """Write an upstream checkpoint; returns its tensors by upstream (hub-layout) name.

    ``layout="hub"``: ``model-*.safetensors`` shards with an index, ``model.vision_encoder.*``.
    ``layout="training"``: one ``pytorch_model.bin``, ``model.vision_encoder.vision_encoder.*``.
    """
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    tok = upstream_tokenizer(texts)
    tok.save_pretrained(str(dest))
    vocab = len(tok)
    tensors = distinct_tensors(upstream_shapes(spec, vocab), spec.dtype)
    (dest / "config.json").write_text(json.dumps(upstream_config(spec, vocab, tok), indent=2))
    (dest / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    if layout == "training":
        nested = {
            (TRAINING_VISION_PREFIX + k[len("model.vision_encoder.") :])
            if k.startswith("model.vision_encoder.")
            else k: v
            for k, v in tensors.items()
        }
        torch.save(nested, dest / "pytorch_model.bin")
        return tensors
    keys = sorted(tensors)
    size = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        part = keys[i * size : (i + 1) * size]
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(dest / name))
        weight_map.update(dict.fromkeys(part, name))
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tensors


def expected_native_name(upstream: str) -> str:
    """The native name an upstream hub name must become (from :data:`HUB_TO_NATIVE`)."""
    for old, new in HUB_TO_NATIVE.items():
        if upstream.startswith(old):
            return new + upstream[len(old) :]
    raise KeyError(upstream)
