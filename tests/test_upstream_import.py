"""Import of upstream-layout (custom-code) VideoLLaMA3 weights and CrashChat checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crashchat.config import LoraSettings
from crashchat.models.checkpoint import load_checkpoint
from crashchat.models.loading import load_model
from crashchat.models.lora import trainable_state
from crashchat.models.upstream import (
    UpstreamFormatError,
    import_base,
    import_checkpoint,
    native_key,
    upstream_key,
)
from helpers import perturbed_lora_model, text_inputs

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def _write_upstream_base(native_dir: Path, dest: Path, extra_key: str | None = None) -> dict:
    """The tiny model saved the way the upstream release lays out VideoLLaMA3-7B."""
    dest.mkdir(parents=True)
    model = load_model(native_dir).model
    state = {upstream_key(k): v.clone() for k, v in model.state_dict().items()}
    if extra_key:
        state[extra_key] = torch.zeros(2)
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(dest / name))
        weight_map.update(dict.fromkeys(part, name))
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    native = json.loads((native_dir / "config.json").read_text())
    upstream = {
        **native["text_config"],
        "architectures": ["Videollama3Qwen2ForCausalLM"],
        "model_type": "videollama3_qwen2",
        "vision_encoder_config": {
            **native["vision_config"],
            "model_type": "videollama3_vision_encoder",
        },
        "mm_projector_type": "mlp2x_gelu",
        "image_token_index": native["image_token_id"],
        "use_token_compression": True,
    }
    (dest / "config.json").write_text(json.dumps(upstream))
    for name in TOKENIZER_FILES:
        if (native_dir / name).is_file():
            shutil.copy2(native_dir / name, dest / name)
    return {k: v for k, v in model.state_dict().items()}


def test_key_mapping_round_trips_and_refuses_unknown_names() -> None:
    for native in (
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "model.projector.readout.2.bias",
        "model.language_model.layers.3.mlp.up_proj.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.norm.weight",
        "lm_head.weight",
        "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight",
    ):
        assert native_key(upstream_key(native)) == native
    assert native_key("model.mm_projector.readout.0.weight") == "model.projector.readout.0.weight"
    assert native_key("model.layers.0.self_attn.q_proj.weight") == (
        "model.language_model.layers.0.self_attn.q_proj.weight"
    )
    with pytest.raises(UpstreamFormatError, match=r"model.audio_tower.x"):
        native_key("model.audio_tower.x")


def test_import_base_renames_every_tensor_and_generates(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    original = _write_upstream_base(tiny_model_dir, tmp_path / "upstream")
    cli = [sys.executable, "-m", "crashchat.cli", "checkpoint", "import-base"]
    out = tmp_path / "native"
    done = subprocess.run(
        [*cli, "--src", str(tmp_path / "upstream"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors"] == len(original)

    converted: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("model-*.safetensors")):
        converted.update(load_file(str(shard)))
    assert set(converted) == set(original)  # nothing unmapped, nothing invented
    assert all(torch.equal(converted[k], original[k]) for k in original)

    loaded = load_model(out)
    assert type(loaded.model).__name__ == "VideoLlama3ForConditionalGeneration"
    proc = loaded.processor
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Crash?"}]}
    ]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = proc(
        text=[text],
        videos=[frames],
        return_tensors="pt",
        video_metadata=[{"fps": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3]}],
    )
    generated = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]  # it produced new tokens


def test_import_base_refuses_unmapped_tensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    _write_upstream_base(tiny_model_dir, tmp_path / "upstream", extra_key="model.audio_tower.w")
    with pytest.raises(UpstreamFormatError, match=r"no native name.*model.audio_tower.w"):
        import_base(tmp_path / "upstream", tmp_path / "native")
    assert not (tmp_path / "native").exists()


def test_import_crashchat_checkpoint_reproduces_the_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = perturbed_lora_model(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        expected = model(**text_inputs(tiny_model_dir)).logits
    adapter, non_lora = trainable_state(model)
    assert adapter is not None and non_lora
    # The published layout: upstream names, short target-module names, projector as a pickle.
    pub = tmp_path / "published"
    pub.mkdir()
    save_file(
        {upstream_key(k): v for k, v in adapter.items()}, str(pub / "adapter_model.safetensors")
    )
    peft_cfg = model.peft_config["default"].to_dict()
    peft_cfg["target_modules"] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    (pub / "adapter_config.json").write_text(json.dumps(peft_cfg, default=list))
    torch.save(
        {"base_model.model." + upstream_key(k): v for k, v in non_lora.items()},
        pub / "non_lora_trainables.bin",
    )

    out = tmp_path / "imported"
    info = import_checkpoint(
        pub,
        pub / "non_lora_trainables.bin",
        out,
        str(tiny_model_dir),
        ["crash_recognition"],
        "crash_recognition",
    )
    assert info["adapter_tensors"] == len(adapter) and info["non_lora_tensors"] == len(non_lora)
    loaded = load_checkpoint(out)
    with torch.no_grad():
        got = loaded.model(**text_inputs(tiny_model_dir)).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # Adapters stayed on the language model: the vision encoder is untouched.
    assert not any("vision_model" in n and "lora" in n for n, _ in loaded.model.named_parameters())


def test_import_refuses_a_pickle_with_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    pub = tmp_path / "published"
    pub.mkdir()
    (pub / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({}, str(pub / "adapter_model.safetensors"))
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("owned",))

    (pub / "non_lora_trainables.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        import_checkpoint(
            pub, pub / "non_lora_trainables.bin", tmp_path / "out", str(tiny_model_dir)
        )
    assert not (tmp_path / "out").exists()
