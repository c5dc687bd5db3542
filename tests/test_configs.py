"""Every YAML file in the repository parses into its typed config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from crashchat.config import (
    ConfigError,
    EvalConfig,
    LocalClusterConfig,
    PipelineConfig,
    PreprocessConfig,
    ServeConfig,
    SynthConfig,
    TinyModelConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from crashchat.training.deepspeed_config import build_deepspeed_config

REPO = Path(__file__).resolve().parents[1]

# Each YAML the repo ships and the config model it must validate against. A new YAML that is not
# listed here fails test_every_yaml_is_registered.
CONFIGS: dict[str, type[BaseModel]] = {
    "jobs/configs/synth-demo.yaml": SynthConfig,
    "jobs/configs/tiny-model.yaml": TinyModelConfig,
    "jobs/configs/preprocess.yaml": PreprocessConfig,
    "jobs/configs/preprocess-tiny.yaml": PreprocessConfig,
    "jobs/configs/preprocess-7b-eval.yaml": PreprocessConfig,
    "jobs/configs/tiny-cpu.yaml": TrainConfig,
    "jobs/configs/videollama3-7b.yaml": TrainConfig,
    "jobs/configs/tiny-learn-pretrain.yaml": TrainConfig,
    "jobs/configs/tiny-learn.yaml": TrainConfig,
    "jobs/configs/synth-learn.yaml": SynthConfig,
    "jobs/configs/preprocess-learn.yaml": PreprocessConfig,
    "jobs/configs/eval-learn.yaml": EvalConfig,
    "jobs/configs/eval-tiny.yaml": EvalConfig,
    "jobs/configs/eval-demo.yaml": EvalConfig,
    "jobs/configs/tiny-demo.yaml": TrainConfig,
    "serve/tiny.yaml": ServeConfig,
    "serve/videollama3-7b.yaml": ServeConfig,
    "jobs/configs/pipeline-tiny.yaml": PipelineConfig,
    "cluster/local/cluster.yaml": LocalClusterConfig,
    "jobs/configs/pipeline-7b.yaml": PipelineConfig,
}
# YAML with another schema, validated by the named test module.
OTHER_SCHEMAS: dict[str, str] = {
    "serve/demo.yaml": "test_serve_files.py (Ray's ServeDeploySchema, the app's config)",
    "cluster/aws.yaml": "test_cluster_files.py (Ray's ray-schema.json)",
    "cluster/kuberay/raycluster.yaml": "test_cluster_files.py (KubeRay structure)",
    "cluster/kuberay/rayjob.yaml": "test_cluster_files.py (KubeRay structure)",
    "cluster/kuberay/rayservice.yaml": "test_cluster_files.py (KubeRay + ServeDeploySchema)",
    "cluster/kuberay/redis.yaml": "test_cluster_files.py (GCS fault tolerance)",
}
SKIP_DIRS = {".venv", ".git", "runs", ".cache", "node_modules"}


def _repo_yaml() -> set[str]:
    found = set()
    for p in REPO.rglob("*.y*ml"):
        rel = p.relative_to(REPO)
        if not SKIP_DIRS & set(rel.parts) and p.suffix in (".yaml", ".yml"):
            found.add(rel.as_posix())
    return found


def test_every_yaml_is_registered() -> None:
    assert _repo_yaml() == set(CONFIGS) | set(OTHER_SCHEMAS)


@pytest.mark.parametrize("rel", sorted(CONFIGS))
def test_yaml_validates(rel: str) -> None:
    cfg = load_config(REPO / rel, CONFIGS[rel])
    assert isinstance(cfg, CONFIGS[rel])


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("fps: 10\nlimits:\n  max_widht: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, PreprocessConfig)
    assert str(bad) in str(err.value) and "limits.max_widht" in str(err.value)


def test_overrides_apply_nested_values() -> None:
    data = apply_overrides(
        {"limits": {"max_width": 10}}, ["limits.max_height=20", "fps=5", "strict=true"]
    )
    cfg = PreprocessConfig.model_validate(data)
    assert (cfg.limits.max_width, cfg.limits.max_height, cfg.fps, cfg.strict) == (10, 20, 5.0, True)
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["novalue"])


def test_preprocess_job_rejects_a_bad_override_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "preprocess.py"),
            "--annotations",
            str(tmp_path),
            "--video-root",
            str(tmp_path),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "fps=-1",
            "--address",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "--set overrides" in out.stderr and "fps" in out.stderr


def test_train_batch_must_divide_over_workers() -> None:
    with pytest.raises(ValueError, match="global_batch_size"):
        TrainConfig.model_validate({"schedule": {"global_batch_size": 5}})
    cfg = TrainConfig.model_validate({"schedule": {"global_batch_size": 24, "micro_batch_size": 2}})
    assert cfg.grad_accum_steps == 6  # 24 / (2 workers x 2)
    assert cfg.accum_steps(4) == 3  # the same global batch on 4 workers


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_json_is_generated_per_stage(stage: int) -> None:
    cfg = TrainConfig.model_validate(
        {"deepspeed": {"zero_stage": stage}, "schedule": {"global_batch_size": 8}}
    )
    ds = build_deepspeed_config(cfg, world_size=2, dtype="bf16")
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (8, 1)
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert "optimizer" not in ds  # torch AdamW from the loop, no fused-Adam compilation
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)
    assert ("allgather_partitions" in ds["zero_optimization"]) == (stage in (1, 2))


def test_deepspeed_offload_uses_deepspeed_adam_and_needs_zero() -> None:
    cfg = TrainConfig.model_validate(
        {"deepspeed": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}}
    )
    ds = build_deepspeed_config(cfg, world_size=2, dtype="fp32")
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 1e-5
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        TrainConfig.model_validate({"deepspeed": {"zero_stage": 2, "offload_params": True}})


def test_upstream_hyperparameters_in_the_7b_config() -> None:
    cfg = load_config(REPO / "jobs/configs/videollama3-7b.yaml", TrainConfig)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 16, 0.05)
    assert cfg.lora.train_projector and not cfg.lora.train_lm_head
    assert (cfg.optim.lr, cfg.optim.scheduler, cfg.optim.warmup_ratio) == (1e-5, "cosine", 0.1)
    assert (cfg.precision, cfg.gradient_checkpointing, cfg.deepspeed.zero_stage) == (
        "bf16",
        True,
        1,
    )
    s = cfg.schedule
    assert (s.global_batch_size, s.epochs, s.monotask_epochs) == (24, 10, 20)
    assert (s.eval_every, s.save_every, s.early_stopping_patience) == (50, 50, 3)
    assert s.early_stopping_threshold == 0.001
    assert s.num_checkpoints_to_keep == 5 and cfg.loss_reduction == "tokens"


def test_7b_configs_train_at_10240_and_evaluate_at_16384_visual_tokens() -> None:
    """Upstream trains with mm_max_length 10,240 and evaluates with max_visual_tokens 16,384."""
    pipe = load_config(REPO / "jobs/configs/pipeline-7b.yaml", PipelineConfig)
    assert pipe.preprocess.max_visual_tokens == 10240
    assert pipe.evaluate.preprocess.max_visual_tokens == 16384
    assert (
        load_config(REPO / "jobs/configs/preprocess.yaml", PreprocessConfig).max_visual_tokens
        == 10240
    )
    ev = load_config(REPO / "jobs/configs/preprocess-7b-eval.yaml", PreprocessConfig)
    assert (ev.max_visual_tokens, ev.splits) == (16384, ["test"])
    serve = load_config(REPO / "serve/videollama3-7b.yaml", ServeConfig)
    assert serve.preprocess.max_visual_tokens == 16384 and serve.model.max_batch_tokens
    train = load_config(REPO / "jobs/configs/videollama3-7b.yaml", TrainConfig)
    assert (train.plan.max_visual_tokens, train.plan.serve_max_visual_tokens) == (10240, 16384)
