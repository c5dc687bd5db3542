"""``crashchat plan``: the 7B's resources from its upstream config, without weights or a GPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from crashchat.config import TrainConfig, load_config
from crashchat.models.architecture import build_meta_model
from crashchat.models.upstream import load_native_config
from crashchat.planning.resource_plan import build_plan, resolve_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs/configs/videollama3-7b.yaml"
UPSTREAM = REPO / "jobs/configs/models/videollama3-7b/config.json"


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return load_config(CONFIG, TrainConfig)


@pytest.fixture(scope="module")
def plan(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    return build_plan(cfg, resolve_model(None, cfg, CONFIG))


def test_lora_and_projector_counts_match_independent_counts(plan, cfg: TrainConfig) -> None:  # type: ignore[no-untyped-def]
    up = json.loads(UPSTREAM.read_text())
    h, inter, layers = up["hidden_size"], up["intermediate_size"], up["num_hidden_layers"]
    kv = up["num_key_value_heads"] * h // up["num_attention_heads"]
    v = up["vision_encoder_config"]["hidden_size"]
    r = cfg.lora.r
    # Arithmetic from upstream's config: r x (in + out) for q, k, v, o, gate, up, down per layer.
    per_layer = (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + inter) + (inter + h)
    assert plan.parameters["lora"] == layers * r * per_layer == 161_480_704
    assert plan.parameters["projector"] == v * h + h + h * h + h == 16_980_992
    # And on the meta model, walking its Linear layers without PEFT.
    model = build_meta_model(load_native_config(UPSTREAM))
    pattern = re.compile(cfg.lora.target_modules)
    linear = [
        m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)
    ]
    assert len(linear) == 7 * layers
    assert plan.parameters["lora"] == sum(r * (m.in_features + m.out_features) for m in linear)
    assert plan.parameters["trainable"] == plan.parameters["lora"] + plan.parameters["projector"]
    assert 7.9e9 < plan.parameters["total"] < 8.2e9


def test_the_7b_plan_fits_an_80gb_gpu_and_says_why(plan) -> None:  # type: ignore[no-untyped-def]
    train, tokens = plan.training_memory, plan.tokens
    assert plan.fits and plan.problems == []
    assert plan.model["text"]["rope_theta"] == 1_000_000.0
    # Upstream's budgets: 10,240 visual tokens in training, 16,384 at evaluation (96 HD frames).
    assert tokens["training"]["visual_tokens_per_frame"] == 91
    assert tokens["serving"]["visual_tokens_per_frame"] == 153
    assert train["micro_batch_size"] == 1 and train["fits"]
    assert train["gradient_checkpointing"] and train["zero_stage"] == 1
    assert "deepspeed" in train["model_states_source"]
    # Without checkpointing the activations alone exceed the GPU: the refusal below relies on it.
    assert train["activations_without_checkpointing_gb"] > 80 > train["activations_gb"]
    assert 15 < train["frozen_weights_gb"] < 17  # 8.0 B frozen bf16 weights
    assert plan.storage["checkpoints_kept"] == 5
    assert plan.serving_memory["fits"]


def test_native_logits_cost_what_upstreams_supervised_logits_save(plan, cfg: TrainConfig) -> None:  # type: ignore[no-untyped-def]
    native = cfg.model_copy(deep=True)
    native.supervised_logits_only = False
    full = build_plan(native, resolve_model(None, native, CONFIG)).training_memory
    lean = plan.training_memory
    # fp32 log-softmax and its gradient over a 152k vocabulary at every one of ~9.7k positions.
    assert full["logits_gb"] > 15 > 1 > lean["logits_gb"]
    assert full["max_micro_batch_size"] < lean["max_micro_batch_size"]


@pytest.mark.timeout(300)
def test_cli_prints_the_plan_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    # In process (the console script itself is run by test_packaging).
    from typer.testing import CliRunner

    from crashchat.cli import app

    done = CliRunner().invoke(app, ["plan", "--config", str(CONFIG), "--json"])
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["fits"] and out["parameters"]["lora"] == 161_480_704
    assert out["storage"]["retention_gb"] == pytest.approx(5 * out["storage"]["checkpoint_gb"])
    refused = CliRunner().invoke(
        app, ["plan", "--config", str(CONFIG), "--set", "gradient_checkpointing=false"]
    )
    assert refused.exit_code == 1
    assert "does not fit" in refused.stderr and "activations" in refused.stderr
    assert re.search(r"training needs \d+\.\d GB per GPU", refused.stderr), refused.stderr
    missing = CliRunner().invoke(app, ["plan", "--model", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such folder" in missing.stderr
