"""Import of upstream-layout VideoLLaMA3 weights and CrashChat checkpoints.

The upstream checkpoints are written from upstream's own names and config format
(``upstream_fixture``), never through the platform's mapping, so the mapping is checked against
upstream, not against itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crashchat.data.synth.labels import all_label_text
from crashchat.models.checkpoint import load_checkpoint
from crashchat.models.loading import load_model
from crashchat.models.upstream import UpstreamFormatError, import_base, import_checkpoint
from crashchat.video.model_inputs import InputBuilder
from upstream_fixture import (
    UpstreamSpec,
    expected_native_name,
    upstream_config,
    upstream_tokenizer,
    write_upstream_checkpoint,
)

SPEC = UpstreamSpec()
CLI = [sys.executable, "-m", "crashchat.cli", "checkpoint"]


def _native_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("upstream")
    tensors = write_upstream_checkpoint(root / "hub", SPEC, all_label_text())
    return root / "hub", tensors


@pytest.fixture(scope="module")
def imported(upstream, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    src, _ = upstream
    out = tmp_path_factory.mktemp("native") / "model"
    done = subprocess.run(
        [*CLI, "import-base", "--src", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def test_every_upstream_tensor_lands_under_its_native_name_unchanged(upstream, imported) -> None:  # type: ignore[no-untyped-def]
    _, tensors = upstream
    out, info = imported
    native = _native_tensors(out)
    assert info["tensors"] == len(tensors) == len(native)
    for name, value in tensors.items():
        assert torch.equal(native[expected_native_name(name)], value), name
    # The native model built from the converted config has exactly these weights.
    model = load_model(out).model
    own = {k for k in model.state_dict() if not k.endswith("inv_freq")}
    assert own == set(native)


def test_config_values_survive_the_conversion(imported) -> None:  # type: ignore[no-untyped-def]
    out, info = imported
    cfg = json.loads((out / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["rope_parameters"]["rope_theta"] == SPEC.rope_theta == info["rope_theta"]
    assert text["rms_norm_eps"] == SPEC.rms_norm_eps
    assert text["max_position_embeddings"] == SPEC.max_position_embeddings
    assert (text["hidden_size"], text["num_key_value_heads"]) == (SPEC.hidden, SPEC.kv_heads)
    assert vision["layer_norm_eps"] == SPEC.vision_layer_norm_eps
    assert vision["hidden_act"] == SPEC.vision_act and vision["patch_size"] == SPEC.patch
    loaded = load_model(out)
    assert loaded.model.config.text_config.rope_parameters["rope_theta"] == SPEC.rope_theta
    tok = loaded.processor.tokenizer
    # The native model's placeholders are the native processor's tokens, not upstream's <image>.
    assert loaded.model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert loaded.model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")


def test_the_processor_keeps_upstreams_visual_budget(imported) -> None:  # type: ignore[no-untyped-def]
    out, info = imported
    video = load_model(out).processor.video_processor
    assert info["max_visual_tokens"] == 16384  # preprocessor_config.json's max_tokens
    assert video.size["longest_edge"] == 16384 * 28 * 28
    assert video.use_token_compression is SPEC.use_token_compression
    # 96 frames of a 1280x720 clip: upstream's simple_batched_resize gives 252x476, 153 tokens.
    frames = np.zeros((96, 720, 1280, 3), dtype=np.uint8)
    got = video(videos=[frames], do_sample_frames=False, return_tensors="pt")
    assert got["video_grid_thw"][0].tolist() == [96, 18, 34]


def test_the_prompt_is_upstreams_token_for_token(imported) -> None:  # type: ignore[no-untyped-def]
    out, _ = imported
    processor = load_model(out).processor
    builder = InputBuilder(processor)
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    video = builder.video(frames, [0, 1, 2, 3], 10.0, 4)
    ids, _ = builder.tokens(video, "Is there a crash?", None)
    # Upstream's training template (videollama3/model/processor.py): no system prompt, each
    # frame "Time t.ts:" then its <image> tokens, frames joined by ",", a newline, the text.
    per_frame = (56 // 28) * (84 // 28)
    frames_text = ",".join(f"Time {t:.1f}s:" + "<image>" * per_frame for t in (0.0, 0.1, 0.2, 0.3))
    upstream = (
        f"<|im_start|>user\n{frames_text}\nIs there a crash?<|im_end|>\n<|im_start|>assistant\n"
    )
    tok = processor.tokenizer
    expected = tok(upstream, add_special_tokens=False)["input_ids"]
    image, pad = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<|video_pad|>")
    assert [pad if i == image else i for i in expected] == ids


def test_training_layout_pickle_imports_like_the_hub_layout(tmp_path: Path, upstream) -> None:  # type: ignore[no-untyped-def]
    _, tensors = upstream
    src = tmp_path / "baseline"
    write_upstream_checkpoint(src, SPEC, all_label_text(), layout="training")
    import_base(src, tmp_path / "native")
    native = _native_tensors(tmp_path / "native")
    assert set(native) == {expected_native_name(k) for k in tensors}
    for name, value in tensors.items():
        assert torch.equal(native[expected_native_name(name)], value), name


def _rewrite_config(src: Path, **changes: object) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def test_a_config_key_with_no_home_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "up"
    write_upstream_checkpoint(src, SPEC, all_label_text())
    _rewrite_config(src, mm_resampler_type="perceiver")
    with pytest.raises(UpstreamFormatError, match=r"no native home: \['mm_resampler_type'\]"):
        import_base(src, tmp_path / "native")
    assert not (tmp_path / "native").exists()


def test_missing_unknown_and_misshapen_weights_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "up"
    tensors = write_upstream_checkpoint(src, SPEC, all_label_text(), shards=1)
    shard = next(src.glob("model-*.safetensors"))
    # A weight missing would stay at random init: refused, named.
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}, str(shard))
    with pytest.raises(UpstreamFormatError, match=r"missing.*layers\.1\.mlp\.up_proj"):
        import_base(src, tmp_path / "a")
    save_file({**tensors, "model.audio_tower.w": torch.zeros(2)}, str(shard))
    with pytest.raises(UpstreamFormatError, match=r"model\.audio_tower\.w"):
        import_base(src, tmp_path / "b")
    bad = dict(tensors)
    bad["model.norm.weight"] = torch.ones(SPEC.hidden + 1)
    save_file(bad, str(shard))
    with pytest.raises(UpstreamFormatError, match=r"model\.language_model\.norm\.weight"):
        import_base(src, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_upstream_config_conversion_without_a_tokenizer_uses_qwen_ids() -> None:
    from crashchat.models.upstream import convert_config

    tok = upstream_tokenizer(all_label_text())
    raw = upstream_config(SPEC, len(tok), tok)
    converted = convert_config(raw, None)
    assert converted.config.image_token_id == 151655 and converted.config.video_token_id == 151656
    with pytest.raises(UpstreamFormatError, match="rope_scaling"):
        convert_config({**raw, "rope_scaling": {"type": "yarn", "factor": 4.0}}, None)
    with pytest.raises(UpstreamFormatError, match="mm_projector_type 'linear'"):
        convert_config({**raw, "mm_projector_type": "linear"}, None)


# -- published CrashChat checkpoints --------------------------------------------------------------
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _published(
    pub: Path, spec: UpstreamSpec, r: int, vision_b: float = 0.0
) -> dict[str, torch.Tensor]:
    """A CrashChat trainer checkpoint: LoRA under upstream names (incl. the accidental vision
    q/k/v LoRA peft's suffix match adds) and the projector pickle."""
    gen = torch.Generator().manual_seed(5)
    h, kv = spec.hidden, spec.kv_heads * (spec.hidden // spec.heads)
    dims = {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (h, spec.intermediate),
        "mlp.up_proj": (h, spec.intermediate),
        "mlp.down_proj": (spec.intermediate, h),
    }
    adapter = {}
    for n in range(spec.layers):
        for mod, (fan_in, fan_out) in dims.items():
            p = f"base_model.model.model.layers.{n}.{mod}"
            adapter[f"{p}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * 0.1
            adapter[f"{p}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.1
    v = spec.vision_hidden
    for n in range(spec.vision_layers):
        for mod in ("q_proj", "k_proj", "v_proj"):
            p = f"base_model.model.model.vision_encoder.vision_encoder.encoder.layers.{n}.self_attn.{mod}"
            adapter[f"{p}.lora_A.weight"] = torch.randn(r, v, generator=gen)
            adapter[f"{p}.lora_B.weight"] = torch.full((v, r), vision_b)
    pub.mkdir()
    save_file(adapter, str(pub / "adapter_model.safetensors"))
    (pub / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.05,
                    "bias": "none", "task_type": "CAUSAL_LM", "target_modules": list(LLM_TARGETS)})
    )  # fmt: skip
    projector = {
        "base_model.model.model.mm_projector.readout.0.weight": torch.randn(h, v, generator=gen),
        "base_model.model.model.mm_projector.readout.0.bias": torch.randn(h, generator=gen),
        "base_model.model.model.mm_projector.readout.2.weight": torch.randn(h, h, generator=gen),
        "base_model.model.model.mm_projector.readout.2.bias": torch.randn(h, generator=gen),
    }
    torch.save(projector, pub / "non_lora_trainables.bin")
    return adapter | projector


def test_published_checkpoint_imports_and_changes_the_outputs(imported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = imported
    pub = tmp_path / "published"
    published = _published(pub, SPEC, r=4)
    out = tmp_path / "ckpt"
    info = import_checkpoint(
        pub, pub / "non_lora_trainables.bin", out, str(base), ["crash_recognition"]
    )
    assert info["dropped_vision_lora_tensors"] == 6 * SPEC.vision_layers
    assert "lora_B is zero" in info["note"]
    assert info["adapter_tensors"] == 2 * len(LLM_TARGETS) * SPEC.layers
    loaded = load_checkpoint(out, merge=False)
    params = dict(loaded.model.named_parameters())
    # The LoRA matrices and the projector are the published ones, under native names.
    name = "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.default.weight"
    assert torch.equal(
        params[name], published["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    )
    proj = params["base_model.model.model.projector.readout.2.weight"]
    assert torch.equal(proj, published["base_model.model.model.mm_projector.readout.2.weight"])
    assert not any("vision_model" in n and "lora" in n for n in params)


def test_published_checkpoint_problems_are_refused_by_name(imported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = imported
    pub = tmp_path / "nonzero"
    _published(pub, SPEC, r=4, vision_b=0.5)
    with pytest.raises(UpstreamFormatError, match="vision-encoder LoRA matrices are not zero"):
        import_checkpoint(pub, None, tmp_path / "a", str(base))
    pub = tmp_path / "partial"
    adapter = _published(pub, SPEC, r=4)
    save_file(
        {k: v for k, v in adapter.items() if "lora" in k and "layers.0.mlp.gate_proj" not in k},
        str(pub / "adapter_model.safetensors"),
    )
    with pytest.raises(UpstreamFormatError, match=r"missing.*layers\.0\.mlp\.gate_proj"):
        import_checkpoint(pub, None, tmp_path / "b", str(base))
    pub = tmp_path / "noproj"
    _published(pub, SPEC, r=4)
    torch.save(
        {
            "base_model.model.model.mm_projector.readout.0.weight": torch.zeros(
                SPEC.hidden, SPEC.vision_hidden
            )
        },
        pub / "non_lora_trainables.bin",
    )
    with pytest.raises(UpstreamFormatError, match=r"missing.*projector\.readout\.0\.bias"):
        import_checkpoint(pub, pub / "non_lora_trainables.bin", tmp_path / "c", str(base))
    assert not any((tmp_path / n).exists() for n in "abc")


def test_import_refuses_a_pickle_with_code(imported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pickle

    base, _ = imported
    pub = tmp_path / "published"
    _published(pub, SPEC, r=4)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("owned",))

    (pub / "non_lora_trainables.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        import_checkpoint(pub, pub / "non_lora_trainables.bin", tmp_path / "out", str(base))
    assert not (tmp_path / "out").exists()
