"""The DeepSpeed JSON, generated from the typed training config (never kept by hand)."""

from __future__ import annotations

from typing import Any

from crashchat.config import TrainConfig


def build_deepspeed_config(cfg: TrainConfig, world_size: int, dtype: str) -> dict[str, Any]:
    """DeepSpeed config for ``world_size`` workers training in ``dtype`` (bf16, fp16 or fp32).

    The optimizer and scheduler are built by the training loop (torch AdamW, the HF schedule) and
    handed to ``deepspeed.initialize``, except with ZeRO-Offload, where DeepSpeed's CPU Adam must
    own the optimizer state.
    """
    sched = cfg.schedule
    if sched.global_batch_size % (world_size * sched.micro_batch_size):
        raise ValueError(
            f"global batch {sched.global_batch_size} does not divide by {world_size} workers "
            f"x micro batch {sched.micro_batch_size}"
        )
    accum = sched.global_batch_size // (world_size * sched.micro_batch_size)
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(
            {
                "overlap_comm": ds.overlap_comm,
                "contiguous_gradients": True,
                "reduce_bucket_size": ds.reduce_bucket_size,
            }
        )
    if ds.zero_stage in (1, 2):
        zero.update(
            {"allgather_partitions": True, "allgather_bucket_size": ds.allgather_bucket_size}
        )
    if ds.zero_stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_prefetch_bucket_size": ds.allgather_bucket_size,
            }
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": sched.global_batch_size,
        "train_micro_batch_size_per_gpu": sched.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if ds.offload_optimizer:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "weight_decay": cfg.optim.weight_decay,
                "torch_adam": False,
            },
        }
    return config
