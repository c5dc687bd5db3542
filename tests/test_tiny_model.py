"""The tiny VideoLLaMA3 kit: a real HF directory, loadable with the Auto classes, that trains."""

from __future__ import annotations

from pathlib import Path

import decord
import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    VideoLlama3ForConditionalGeneration,
)
from transformers.video_utils import VideoMetadata

from crashchat.models.loading import load_model, select_attention, select_dtype


def _clip_inputs(processor, video: Path, frame_size: int, answer: str | None = None):
    vr = decord.VideoReader(
        str(video), ctx=decord.cpu(0), num_threads=1, width=frame_size, height=frame_size
    )
    fps = vr.get_avg_fps()
    indices = list(range(0, len(vr), 5))
    frames = vr.get_batch(indices).asnumpy()
    meta = VideoMetadata(
        total_num_frames=len(vr), fps=fps, frames_indices=indices, duration=len(vr) / fps
    )
    messages = [
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": "Is there a crash?"}],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if answer is not None:
        text += answer + "<|im_end|>"
    return (
        processor(
            text=[text],
            videos=[frames],
            video_metadata=[meta],
            return_tensors="pt",
            do_sample_frames=False,
        ),
        indices,
        fps,
    )


def test_directory_loads_with_auto_classes(tiny_model_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert isinstance(model, VideoLlama3ForConditionalGeneration)
    assert type(processor).__name__ == "VideoLlama3Processor"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    for tok in ("<|im_start|>", "<|im_end|>", "<|video_pad|>", "<|image_pad|>"):
        assert processor.tokenizer.convert_tokens_to_ids(tok) != processor.tokenizer.unk_token_id


def test_forward_with_labels_and_generate_on_a_synthetic_clip(
    tiny_model_dir: Path, synth_dir: Path
) -> None:
    loaded = load_model(tiny_model_dir)
    assert loaded.attn_implementation == select_attention() and loaded.dtype == select_dtype()
    video = sorted((synth_dir / "videos").glob("*crash.mp4"))[0]
    inputs, indices, fps = _clip_inputs(
        loaded.processor, video, loaded.frame_size or 56, answer="Yes"
    )
    ids = inputs["input_ids"][0].tolist()
    video_id = loaded.model.config.video_token_id
    # Every frame is 56x56 -> 2x2 merged tokens, and the prompt carries real timestamps.
    assert ids.count(video_id) == len(indices) * 4
    text = loaded.processor.tokenizer.decode(ids)
    assert f"Time {indices[1] / fps:.1f}s:" in text
    labels = inputs["input_ids"].clone()
    loaded.model.train()
    out = loaded.model(**inputs, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    vision_grads = [
        p.grad for n, p in loaded.model.named_parameters() if "vision" in n and p.grad is not None
    ]
    assert vision_grads and any(
        g.abs().sum() > 0 for g in vision_grads
    )  # the video reaches the loss

    loaded.model.eval()
    gen_inputs, _, _ = _clip_inputs(loaded.processor, video, loaded.frame_size or 56)
    with torch.no_grad():
        generated = loaded.model.generate(**gen_inputs, max_new_tokens=6, do_sample=False)
    new = generated[0, gen_inputs["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 6
    assert isinstance(loaded.processor.tokenizer.decode(new, skip_special_tokens=True), str)


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_dtype_and_attention_selection_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert select_attention() == "sdpa"
    assert select_dtype("auto") == torch.float32
    assert select_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        select_dtype("int3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_load_uses_bf16_and_flash_attention_when_installed(tiny_model_dir: Path) -> None:
    import importlib.util

    loaded = load_model(tiny_model_dir)
    assert loaded.dtype == torch.bfloat16
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert loaded.attn_implementation == expected
    assert next(loaded.model.parameters()).is_cuda
