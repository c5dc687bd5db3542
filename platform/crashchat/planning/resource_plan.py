"""``crashchat plan``: the resources of a fine-tuning run, computed before anyone rents GPUs.

The model is built on the meta device from its config (a 7B needs no weights and no memory),
the configured LoRA is applied to it, and every figure comes from it or from the code that
trains and serves:

- parameters: counted on the meta model (total, language, vision, projector, LoRA, trainable);
- tokens: the processor's own frame-size arithmetic for the sampled frames, plus the per-frame
  timestamp text and the prompt (counted with the model's tokenizer when it has one);
- GPU memory per training worker: frozen weights; trainable model states (weights, gradients,
  AdamW) from DeepSpeed's own ZeRO estimators; activations measured on the meta device (one
  decoder layer's saved tensors, with and without gradient checkpointing); logits; the frozen
  vision encoder's forward; a reserve;
- disk: preprocessed bytes per record and for the dataset, checkpoint size and what the
  retention policy keeps;
- serving: memory per model replica at its batch limits (weights, KV cache, prefill).

All byte figures are decimal GB (1e9). They are estimates of a model that has not run on a GPU
here; what only a GPU run can confirm is listed in the README ("Going to GPUs").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from crashchat.config import TrainConfig

GB = 1e9
MEASURE_TOKENS = 1024  # activations are linear in tokens (no score matrix): measure at 1k


@dataclass
class ResourcePlan:
    """A run's resources; ``problems`` is empty when it fits."""

    model: dict[str, Any]
    parameters: dict[str, int]
    tokens: dict[str, Any]
    training_memory: dict[str, Any]
    storage: dict[str, Any]
    serving_memory: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """True when training and serving fit their GPUs."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``--json``."""
        return asdict(self) | {"fits": self.fits}


# -- model --------------------------------------------------------------------------------------
def resolve_model(model: str | None, cfg: TrainConfig, config_file: str | Path | None) -> Path:
    """The model folder or config.json to plan for: ``--model``, else ``plan.model``.

    Raises:
        ValueError: when neither names an existing path.
    """
    source = model or cfg.plan.model
    if source is None:
        raise ValueError("no model to plan for: pass --model or set plan.model in the config")
    path = Path(source)
    if not path.exists() and not path.is_absolute() and config_file is not None:
        path = Path(config_file).parent / source
    if not path.exists():
        raise ValueError(f"model {source}: no such folder or config.json")
    return path


def _tokenizer(path: Path) -> Any:
    folder = path if path.is_dir() else path.parent
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def count_parameters(config: Any, cfg: TrainConfig) -> tuple[dict[str, int], int]:
    """Parameter counts of the meta model before and after the configured LoRA, and the
    parameters of its largest module (ZeRO-3 gathers one module at a time)."""
    from crashchat.models.architecture import build_meta_model
    from crashchat.models.lora import apply_lora

    model = build_meta_model(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    parts = {
        "language": "model.language_model.",
        "vision": "model.vision_model.",
        "projector": "model.projector.",
    }
    counts = dict.fromkeys(parts, 0)
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        for part, prefix in parts.items():
            if name.startswith(prefix):
                counts[part] += p.numel()
    counts["lm_head"] = total - sum(counts.values())
    counts["total"] = total
    wrapped = apply_lora(model, cfg.lora)
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    counts["lora"] = lora
    counts["trainable"] = trainable
    counts["trainable_non_lora"] = trainable - lora
    counts["frozen"] = total - (trainable - lora)
    return counts, largest


# -- tokens -------------------------------------------------------------------------------------
def _timestamp_tokens(tokenizer: Any, frames: int, fps: float, default: int) -> float:
    """Mean tokens of a frame's "Time t.ts:" prefix and its separator, with the real tokenizer."""
    if tokenizer is None or frames <= 0:
        return float(default)
    text = ",".join(f"Time {i / fps:.1f}s:" for i in range(frames))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / frames


def assumed_tokens(cfg: TrainConfig, tokenizer: Any, budget: int) -> dict[str, Any]:
    """Tokens of the assumed clip (``plan.clip_*``) sampled and sized as preprocessing does."""
    from crashchat.models.processors import tokens_per_frame

    p = cfg.plan
    frames = max(1, min(p.max_frames, math.floor(p.clip_seconds * p.fps)))
    per_frame, h, w = tokens_per_frame(p.clip_height, p.clip_width, frames, budget)
    stamp = _timestamp_tokens(tokenizer, frames, p.fps, p.timestamp_tokens_per_frame)
    visual = per_frame * frames
    return {
        "source": "assumed clip (plan.clip_*)",
        "frames": frames,
        "frame_size": [h, w],
        "visual_tokens_per_frame": per_frame,
        "visual_tokens_per_clip": visual,
        "timestamp_tokens_per_frame": round(stamp, 2),
        "text_tokens": p.text_tokens,
        "sequence_tokens": math.ceil(visual + frames * stamp + p.text_tokens),
        "max_visual_tokens": budget,
        "note": "before token compression, which only lowers the visual count",
    }


def measured_tokens(data: Path) -> dict[str, Any]:
    """Tokens of a preprocessed dataset, from its records and clips (pixels not read)."""
    import pyarrow.compute as pc

    from crashchat.video.samples import load_manifest, read_clip_meta, read_records_table

    manifest = load_manifest(data)
    table = read_records_table(data).select(["input_ids", "labels", "clip_key"])
    lengths = pc.list_value_length(table["input_ids"]).to_numpy()
    clips = [read_clip_meta(data, k) for k in dict.fromkeys(table["clip_key"].to_pylist())]
    per_frame = [
        c["video_grid_thw"][1] * c["video_grid_thw"][2] // c["video_merge_size"] ** 2 for c in clips
    ]
    answers = [sum(1 for x in row[1:] if x != -100) for row in table["labels"].to_pylist()]
    return {
        "source": f"preprocessed dataset {data}",
        "records": int(table.num_rows),
        "frames": max(int(c["num_frames"]) for c in clips),
        "visual_tokens_per_frame": max(per_frame),
        "visual_tokens_per_clip": max(
            int(c["video_grid_thw"][0]) * pf for c, pf in zip(clips, per_frame, strict=True)
        ),
        "sequence_tokens": int(lengths.max()),
        "sequence_tokens_mean": round(float(lengths.mean()), 1),
        "answer_tokens": max(answers),
        "max_visual_tokens": manifest["config"].get("max_visual_tokens"),
    }


# -- memory -------------------------------------------------------------------------------------
def _bytes_per_value(cfg: TrainConfig) -> int:
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cfg.scaling.use_gpu else "fp32"
    return 4 if precision == "fp32" else 2


def model_state_bytes(trainable: int, largest_layer: int, cfg: TrainConfig) -> tuple[int, str]:
    """Per-GPU bytes of the trainable weights, their gradients and AdamW, and how they were got.

    ZeRO-2 and ZeRO-3 use DeepSpeed's own estimators on the trainable parameters (frozen
    weights are counted apart); ZeRO-1 is the ZeRO-2 figure plus the gradients it does not
    partition; stage 0 keeps everything on every GPU.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    gpus = cfg.scaling.num_workers
    ds = cfg.deepspeed
    stage = ds.zero_stage
    if stage == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            trainable,
            largest_layer,
            num_gpus_per_node=gpus,
            cpu_offload=ds.offload_optimizer,
            cpu_offload_params=ds.offload_params,
        )
        return int(gpu), "deepspeed estimate_zero3_model_states_mem_needs"
    _, gpu = estimate_zero2_model_states_mem_needs(
        trainable, num_gpus_per_node=gpus, cpu_offload=ds.offload_optimizer
    )
    if stage == 2:
        return int(gpu), "deepspeed estimate_zero2_model_states_mem_needs"
    unpartitioned_grads = 2 * trainable - 2 * trainable // gpus
    if stage == 1:
        return (
            int(gpu) + unpartitioned_grads,
            "deepspeed zero2 estimate + unpartitioned 16-bit gradients (ZeRO-1)",
        )
    return 20 * trainable, "every state on every GPU (ZeRO-0): 2+2+16 bytes per trainable parameter"


def _meta_lora_model(config: Any, cfg: TrainConfig, dtype: torch.dtype) -> Any:
    from crashchat.models.architecture import build_meta_model
    from crashchat.models.lora import apply_lora
    from crashchat.planning.activations import register_attention

    one_layer = type(config).from_dict(config.to_dict())
    one_layer.text_config.num_hidden_layers = 1
    one_layer.text_config.layer_types = one_layer.text_config.layer_types[:1]
    one_layer.vision_config.num_hidden_layers = 1
    model = build_meta_model(one_layer).to(dtype)
    model.config.text_config._attn_implementation = register_attention()
    # DeepSpeed casts the whole module, adapters included, to the training dtype.
    return apply_lora(model, cfg.lora).to(dtype)


@dataclass(frozen=True)
class ActivationProfile:
    """Measured once per model and config; memory for any micro batch follows by arithmetic."""

    per_token_layer: float  # saved bytes per token of one decoder layer
    logits_per_position: float  # saved + backward copies per projected position
    largest_layer: int  # parameters of the largest module (ZeRO-3 gathers one at a time)


def activation_profile(config: Any, cfg: TrainConfig, largest_layer: int) -> ActivationProfile:
    """Measure one decoder layer and the logits on the meta device."""
    from crashchat.planning.activations import decoder_layer_bytes, logits_bytes

    dtype = torch.float32 if _bytes_per_value(cfg) == 4 else torch.bfloat16
    model = _meta_lora_model(config, cfg, dtype)
    layer = decoder_layer_bytes(model, MEASURE_TOKENS, dtype)
    logit = logits_bytes(model, MEASURE_TOKENS, dtype)
    return ActivationProfile(
        layer.total / MEASURE_TOKENS,
        (logit.total + 2 * logit.largest) / MEASURE_TOKENS,  # saved + backward's gradient copies
        largest_layer,
    )


def training_memory(
    config: Any,
    cfg: TrainConfig,
    params: dict[str, int],
    tokens: dict[str, Any],
    profile: ActivationProfile,
    micro_batch: int | None = None,
) -> dict[str, Any]:
    """Per-GPU memory of one training worker at a micro batch (default ``cfg``'s) and ZeRO stage."""
    b = _bytes_per_value(cfg)
    text = config.get_text_config()
    vision = config.vision_config
    mb = micro_batch or cfg.schedule.micro_batch_size
    seq = int(tokens["sequence_tokens"]) * mb  # padded to the longest: worst case all long
    layers = text.num_hidden_layers
    full = profile.per_token_layer * layers * seq
    checkpointed = text.hidden_size * b * layers * seq + profile.per_token_layer * seq
    activations = checkpointed if cfg.gradient_checkpointing else full
    answer = int(tokens.get("answer_tokens") or cfg.plan.answer_tokens) * mb
    positions = answer if cfg.supervised_logits_only else seq
    logits = profile.logits_per_position * positions
    patches = tokens["visual_tokens_per_clip"] * 4 * mb
    vision_fwd = patches * (6 * vision.hidden_size + vision.intermediate_size) * b
    frozen = params["frozen"] * b
    if cfg.deepspeed.zero_stage == 3:
        frozen = frozen // cfg.scaling.num_workers + 4 * profile.largest_layer
    states, states_how = model_state_bytes(params["trainable"], profile.largest_layer, cfg)
    reserved = cfg.plan.reserved_gb * GB
    total = frozen + states + activations + logits + vision_fwd + reserved
    return {
        "micro_batch_size": mb,
        "zero_stage": cfg.deepspeed.zero_stage,
        "workers": cfg.scaling.num_workers,
        "bytes_per_value": b,
        "frozen_weights_gb": frozen / GB,
        "model_states_gb": states / GB,
        "model_states_source": states_how,
        "activation_bytes_per_token_per_layer": round(profile.per_token_layer),
        "activations_gb": activations / GB,
        "activations_without_checkpointing_gb": full / GB,
        "activations_with_checkpointing_gb": checkpointed / GB,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "logits_gb": logits / GB,
        "logits_positions": positions,
        "supervised_logits_only": cfg.supervised_logits_only,
        "vision_forward_gb": vision_fwd / GB,
        "reserved_gb": cfg.plan.reserved_gb,
        "total_gb": total / GB,
        "gpu_memory_gb": cfg.plan.gpu_memory_gb,
        "fits": total <= cfg.plan.gpu_memory_gb * GB,
    }


def max_micro_batch(
    config: Any,
    cfg: TrainConfig,
    params: dict[str, int],
    tokens: dict[str, Any],
    profile: ActivationProfile,
    limit: int = 256,
) -> int:
    """The largest micro batch that fits one GPU (0 when not even one sample fits)."""
    best = 0
    for mb in range(1, limit + 1):
        if not training_memory(config, cfg, params, tokens, profile, mb)["fits"]:
            break
        best = mb
    return best


def serving_memory(
    config: Any, cfg: TrainConfig, params: dict[str, int], tokens: dict[str, Any]
) -> dict[str, Any]:
    """Memory of one model replica (bf16, merged LoRA) at the serving batch limits."""
    text = config.get_text_config()
    vision = config.vision_config
    p = cfg.plan
    b = 2
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_request = int(tokens["sequence_tokens"]) + p.serve_max_new_tokens
    batch_tokens = p.serve_max_batch_tokens or p.serve_max_batch_size * per_request
    requests = max(1, min(p.serve_max_batch_size, batch_tokens // per_request))
    kv = batch_tokens * text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * b
    prefill = batch_tokens * (3 * text.intermediate_size + 4 * text.hidden_size) * b
    patches = tokens["visual_tokens_per_clip"] * 4 * requests
    vision_fwd = patches * (6 * vision.hidden_size + vision.intermediate_size) * b
    logits = requests * text.vocab_size * 4 * 2  # last position only (lean logits)
    weights = params["total"] * b
    reserved = p.reserved_gb * GB
    total = weights + kv + prefill + vision_fwd + logits + reserved
    return {
        "batch_size": requests,
        "batch_tokens": batch_tokens,
        "tokens_per_request": per_request,
        "weights_gb": weights / GB,
        "kv_cache_gb": kv / GB,
        "prefill_gb": prefill / GB,
        "vision_forward_gb": vision_fwd / GB,
        "logits_gb": logits / GB,
        "reserved_gb": p.reserved_gb,
        "total_gb": total / GB,
        "gpu_memory_gb": p.gpu_memory_gb,
        "fits": total <= p.gpu_memory_gb * GB,
    }


# -- disk ---------------------------------------------------------------------------------------
def storage(
    cfg: TrainConfig, params: dict[str, int], tokens: dict[str, Any], data: Path | None, clips: int
) -> dict[str, Any]:
    """Preprocessed bytes (per record and dataset) and checkpoint bytes (each, and retained)."""
    from crashchat.video.samples import estimate_dataset_bytes

    records = clips * cfg.plan.records_per_clip
    layout = estimate_dataset_bytes(tokens, clips, records, data)
    b = _bytes_per_value(cfg)
    trainable = params["trainable"]
    export = trainable * b
    deepspeed_state = trainable * (b + 12)  # weights + fp32 master, momentum, variance
    checkpoint = deepspeed_state + 2 * export  # + this step's export + the best step's
    keep = cfg.schedule.num_checkpoints_to_keep
    if keep is None:
        rows = records * 0.8  # about 80% of records are training records
        steps = math.ceil(rows / cfg.schedule.global_batch_size * cfg.schedule.epochs)
        keep = max(1, steps // cfg.schedule.save_every)
    return {
        **layout,
        "checkpoint_gb": checkpoint / GB,
        "checkpoint_export_gb": export / GB,
        "checkpoints_kept": keep,
        "retention_gb": keep * checkpoint / GB,
    }


# -- the plan -----------------------------------------------------------------------------------
def _model_summary(model: Path, config: Any) -> dict[str, Any]:
    """The widths and depths a plan is computed from, as the plan shows them."""
    text, vision = config.get_text_config(), config.vision_config
    return {
        "source": str(model),
        "text": {
            "hidden_size": text.hidden_size,
            "layers": text.num_hidden_layers,
            "heads": text.num_attention_heads,
            "kv_heads": text.num_key_value_heads,
            "intermediate_size": text.intermediate_size,
            "vocab_size": text.vocab_size,
            "rope_theta": (text.rope_parameters or {}).get("rope_theta"),
        },
        "vision": {
            "hidden_size": vision.hidden_size,
            "layers": vision.num_hidden_layers,
            "heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "patch_size": vision.patch_size,
        },
    }


def _problems(train: dict[str, Any], serve: dict[str, Any]) -> list[str]:
    """What does not fit, with the parts that add up to it."""
    problems = []
    if not train["fits"]:
        problems.append(
            f"training needs {train['total_gb']:.1f} GB per GPU at micro batch "
            f"{train['micro_batch_size']} (weights {train['frozen_weights_gb']:.1f}, model states "
            f"{train['model_states_gb']:.1f}, activations {train['activations_gb']:.1f}, logits "
            f"{train['logits_gb']:.1f}, vision {train['vision_forward_gb']:.1f}, reserve "
            f"{train['reserved_gb']:.1f}); the GPU has {train['gpu_memory_gb']:g} GB"
        )
    if not serve["fits"]:
        problems.append(
            f"serving needs {serve['total_gb']:.1f} GB per replica for {serve['batch_tokens']} "
            f"batch tokens (weights {serve['weights_gb']:.1f}, KV cache {serve['kv_cache_gb']:.1f}, "
            f"prefill {serve['prefill_gb']:.1f}); the GPU has {serve['gpu_memory_gb']:g} GB"
        )
    return problems


def build_plan(
    cfg: TrainConfig,
    model: Path,
    data: Path | None = None,
    clips: int | None = None,
) -> ResourcePlan:
    """The resource plan of training ``model`` with ``cfg`` (and serving the result).

    Args:
        cfg: Training config (its ``plan`` section holds the assumptions).
        model: Model folder or config.json, native or upstream format.
        data: A preprocessed dataset: its real token counts and bytes replace the assumptions.
        clips: Dataset size (default: the dataset's, else ``plan.clips``).
    """
    from crashchat.models.upstream import load_native_config

    tokenizer = _tokenizer(model)
    config = load_native_config(model, tokenizer)
    params, largest = count_parameters(config, cfg)
    train_tokens = (
        measured_tokens(data)
        if data
        else assumed_tokens(cfg, tokenizer, cfg.plan.max_visual_tokens)
    )
    serve_tokens = assumed_tokens(cfg, tokenizer, cfg.plan.serve_max_visual_tokens)
    if clips is None and data is not None:
        from crashchat.video.samples import load_manifest

        clips = int(load_manifest(data)["counts"]["clips"])
    clips = clips or cfg.plan.clips
    profile = activation_profile(config, cfg, largest)
    train = training_memory(config, cfg, params, train_tokens, profile)
    train["max_micro_batch_size"] = max_micro_batch(config, cfg, params, train_tokens, profile)
    serve = serving_memory(config, cfg, params, serve_tokens)
    plan = ResourcePlan(
        model=_model_summary(model, config),
        parameters=params,
        tokens={"training": train_tokens, "serving": serve_tokens},
        training_memory=train,
        storage=storage(cfg, params, train_tokens, data, clips),
        serving_memory=serve,
    )
    plan.problems += _problems(train, serve)
    return plan


def dumps(plan: ResourcePlan) -> str:
    """The plan as JSON."""
    return json.dumps(plan.to_json(), indent=2)
