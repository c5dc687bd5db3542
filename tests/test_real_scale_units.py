"""The 7B path's defects that the CPU can show: collective devices, loss reduction, lean logits,
checkpoint retention and generator state, token-bounded batches, flash-attention fallback,
decode sizing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crashchat.models.lean_logits import LeanVideoLlama3, supervised_loss
from crashchat.models.loading import load_model
from crashchat.serving.batching import GreedyBatcher
from crashchat.training import loop
from crashchat.video.model_inputs import IGNORE_INDEX


def test_collectives_run_on_the_workers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL reduces CUDA tensors only: the helper must build the tensor on the given device."""
    import torch.distributed as dist

    seen: list[torch.device] = []

    class Handed(Exception):
        pass

    def fake_all_reduce(tensor: torch.Tensor) -> None:
        seen.append(tensor.device)
        raise Handed  # a meta tensor cannot come back to the host; the device is what counts

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    with pytest.raises(Handed):
        loop.all_reduce_sum([1.0, 2.0], torch.device("meta"))
    assert seen == [torch.device("meta")]
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.mul_(2))
    assert loop.all_reduce_sum([1.0, 2.0], torch.device("cpu")) == [2.0, 4.0]


def _batch(tiny_model_dir: Path, answer_lengths: list[int]) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in answer_lengths:
        ids = torch.randint(10, 200, (1, 20), generator=gen)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, -n:] = ids[0, -n:]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def test_lean_logits_give_the_native_loss_and_gradient(tiny_model_dir: Path) -> None:
    lean = load_model(tiny_model_dir).model
    assert isinstance(lean, LeanVideoLlama3)
    native = load_model(tiny_model_dir, supervised_logits_only=False).model
    (batch,) = _batch(tiny_model_dir, [3])
    a, b = lean(**batch), native(**batch)
    assert a.logits.shape[0] == 3 and b.logits.shape[1] == 20  # only supervised positions
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    ga = lean.model.language_model.layers[0].mlp.up_proj.weight.grad
    gb = native.model.language_model.layers[0].mlp.up_proj.weight.grad
    assert ga is not None and gb is not None and torch.allclose(ga, gb, atol=1e-6)


def test_generate_projects_only_the_last_prompt_position(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir).model
    widths: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
    ids = torch.randint(10, 200, (2, 40))
    model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False
    )
    assert widths and max(widths) == 1, widths  # prefill too: no (batch, 40, vocab) logits


def test_token_reduction_weighs_every_supervised_token_equally(tiny_model_dir: Path) -> None:
    """Two micro-batches, 1 and 9 answer tokens: the step's loss is the mean over 10 tokens,
    as HF Trainer computes it with num_items_in_batch, not the mean of two sample means."""
    model = load_model(tiny_model_dir).model
    batches = _batch(tiny_model_dir, [1, 9])
    with torch.no_grad():
        per = [model(**b).loss for b in batches]  # each sample's token mean
        hidden = [model.model(input_ids=b["input_ids"]).last_hidden_state for b in batches]
        sums = [
            supervised_loss(h, b["labels"], model.lm_head, torch.tensor(1.0))[0]
            for h, b in zip(hidden, batches, strict=True)
        ]
        world, accum, total = 1, 2, 10.0
        share = torch.tensor(total / (world * accum))
        scaled = [model(**b, num_items_in_batch=share).loss for b in batches]
    token_mean = (sums[0] + sums[1]) / total
    # DeepSpeed divides each micro-batch's loss by the accumulation steps.
    assert torch.allclose(sum(scaled) / accum, token_mean, atol=1e-6)
    assert not torch.allclose(token_mean, (per[0] + per[1]) / 2, atol=1e-3)


def _export(root: Path, tag: str) -> Path:
    root.mkdir(parents=True)
    (root / "non_lora_trainables.safetensors").write_text(tag)
    return root


def test_every_checkpoint_carries_the_best_steps_weights(tmp_path: Path) -> None:
    """With only the newest checkpoint kept, the best one's weights survive in it (and after a
    restart from it)."""
    worker = loop.Worker.__new__(loop.Worker)
    worker.best_dir = tmp_path / "kept"
    worker.state = loop.TrainState(step=3, best_step=3)
    worker._keep_best(_export(tmp_path / "ckpt3" / "export", "step3"), tmp_path / "ckpt3")
    worker.state = loop.TrainState(step=6, best_step=3)
    ckpt6 = tmp_path / "ckpt6"
    worker._keep_best(_export(ckpt6 / "export", "step6"), ckpt6)
    (ckpt6 / loop.STATE_FILE).write_text(json.dumps({"step": 6, "best_step": 3}))
    chosen, state = loop.best_export(ckpt6)
    assert chosen == ckpt6 / loop.BEST_DIR and state.best_step == 3
    assert (chosen / "non_lora_trainables.safetensors").read_text() == "step3"
    # A restarted worker picks the best export up from the checkpoint it resumes from.
    restored = tmp_path / "restored"
    loop._restore_best(ckpt6, state, restored)
    assert (restored / "non_lora_trainables.safetensors").read_text() == "step3"
    (ckpt6 / loop.BEST_DIR / loop.BEST_STEP_FILE).write_text(json.dumps({"step": 2}))
    with pytest.raises(FileNotFoundError, match="best step 3"):
        loop.best_export(ckpt6)


def test_a_checkpoint_restores_every_generator_of_its_worker(tmp_path: Path) -> None:
    import random

    from crashchat.training.rng_state import restore_rng_state, save_rng_state

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    save_rng_state(tmp_path, rank=1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2)  # a restarted worker seeds afresh, then resumes
    np.random.seed(2)
    random.seed(2)
    assert restore_rng_state(tmp_path, rank=1)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    assert not restore_rng_state(tmp_path, rank=0)  # written by rank 1 only


def test_batches_are_bounded_by_padded_tokens() -> None:
    async def main() -> list[list[int]]:
        seen: list[list[int]] = []

        async def run(_key: Any, items: list[int]) -> list[int]:
            seen.append(list(items))
            await asyncio.sleep(0.01)
            return items

        # cost = the item itself; at most 100 padded tokens: len(batch) * max(cost) <= 100.
        batcher = GreedyBatcher(run, 8, 0.05, cost=lambda i: i, max_batch_tokens=100)
        await asyncio.gather(*(batcher.submit(i) for i in [10, 20, 30, 40, 200, 5]))
        return seen

    seen = asyncio.run(main())
    assert seen[0] == [10, 20, 30]  # 4 x 40 = 160 > 100: the 40 waits for the next batch
    assert [200] in seen  # too large for any batch: it runs alone
    assert sorted(i for b in seen for i in b) == [5, 10, 20, 30, 40, 200]
    assert all(len(b) * max(b) <= 100 or len(b) == 1 for b in seen)


def test_a_broken_flash_attn_falls_back_to_sdpa(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from crashchat.models import loading

    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level("WARNING"):
        assert loading.select_attention() == "sdpa"
    assert "undefined symbol" in caplog.text


def test_short_clips_of_fast_sources_are_sized_for_their_real_frame_count(tmp_path: Path) -> None:
    """A 3 s clip at 30 fps samples 30 frames at 10 fps: the visual budget is shared by 30 frames,
    not by the 90 a 10 fps source of 90 frames would give."""
    from crashchat.video.decode import DecodeSpec, decode_clip, resolve_frame_size
    from media import write_video

    path = write_video(tmp_path / "fast.mp4", 320, 240, frames=90, fps=30)
    spec = DecodeSpec(max_visual_tokens=1536)
    clip = decode_clip(str(path), 320, 240, 90, spec, source_fps=30.0)
    assert len(clip.indices) == 30
    assert clip.frames.shape[1:3] == resolve_frame_size(320, 240, 30, spec)
    assert resolve_frame_size(320, 240, 30, spec) != resolve_frame_size(320, 240, 90, spec)


def test_the_processor_refuses_to_resize_decoded_frames(tiny_model_dir: Path) -> None:
    from crashchat.video.model_inputs import InputBuilder

    processor = load_model(tiny_model_dir).processor
    builder = InputBuilder(processor)
    frames = np.zeros((4, 56 * 20, 56 * 20, 3), dtype=np.uint8)  # far above the tiny budget
    with pytest.raises(ValueError, match="resized 1120x1120 frames"):
        builder.video(frames, [0, 1, 2, 3], 10.0, 4)
