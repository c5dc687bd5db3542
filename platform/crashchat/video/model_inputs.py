"""Turn decoded frames plus annotation records into exactly what the training step feeds the model.

The video goes through the model's own VideoLLaMA3 video processor once per clip; each record's
conversation is rendered with the processor's chat template and tokenized with the video
placeholder expanded ("Time 0.0s:<video tokens>,..."). Labels are masked to the answer.

Pixel values are stored losslessly as uint8 patches: the processor's rescale and normalisation
are an affine map of 8-bit pixels, undone on write and redone on read (:class:`PixelNorm`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

# torch and transformers are imported where tensors are made: the Serve router unpickles the
# VideoInputs the decoder sends and must not import them (see crashchat.serving.messages).
if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PixelNorm:
    """Per-column affine map between uint8 patch values and normalised floats."""

    mean: list[float]
    std: list[float]
    rescale_factor: float
    temporal_patch_size: int
    patch_size: int

    @classmethod
    def from_processor(cls, video_processor: Any) -> PixelNorm:
        """Read mean, std and rescale factor from a VideoLLaMA3 video processor."""
        return cls(
            [float(x) for x in video_processor.image_mean],
            [float(x) for x in video_processor.image_std],
            float(video_processor.rescale_factor),
            int(video_processor.temporal_patch_size),
            int(video_processor.patch_size),
        )

    def _columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        per_channel = self.temporal_patch_size * self.patch_size * self.patch_size
        mean = torch.tensor(self.mean, dtype=torch.float32).repeat_interleave(per_channel)
        std = torch.tensor(self.std, dtype=torch.float32).repeat_interleave(per_channel)
        return mean, std

    def to_uint8(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Normalised patches -> the uint8 pixels they came from."""
        import torch

        mean, std = self._columns()
        raw = (pixel_values.float() * std + mean) / self.rescale_factor
        return raw.round().clamp(0, 255).to(torch.uint8).numpy()

    def to_float(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 patches -> normalised floats, as the processor computes them."""
        import torch

        mean, std = self._columns()
        return (torch.from_numpy(pixels.astype(np.float32)) * self.rescale_factor - mean) / std

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        return asdict(self)


@dataclass
class VideoInputs:
    """One processed clip, shared by all its records."""

    pixels: np.ndarray | None  # (num_patches, patch_dim) uint8; None when only tokenizing
    grid_thw: list[int]
    merge_size: int
    compression_mask: list[bool]
    placeholder: str  # replaces the single video token in the rendered prompt
    frame_tokens: list[int]  # visual tokens kept per frame (after token compression)


def frame_token_counts(grid_thw: list[int], merge_size: int, mask: list[bool]) -> list[int]:
    """Visual tokens each frame keeps: the compression mask split per frame."""
    per_frame = grid_thw[1] * grid_thw[2] // (merge_size * merge_size)
    return [sum(mask[i : i + per_frame]) for i in range(0, grid_thw[0] * per_frame, per_frame)]


def placeholder_text(video_token: str, timestamps: list[float], frame_tokens: list[int]) -> str:
    """The text that stands for a clip in the prompt, as the native processor writes it
    (``VideoLlama3Processor.replace_video_token``): ``Time t.ts:`` and the frame's tokens per
    frame, joined by commas."""
    return ",".join(
        f"Time {t:.1f}s:" + video_token * n for n, t in zip(frame_tokens, timestamps, strict=True)
    )


class InputBuilder:
    """Builds model inputs with a model's processor (any native VideoLLaMA3 processor)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.norm = PixelNorm.from_processor(processor.video_processor)
        self.video_token: str = processor.video_token
        self.chat_template: str | None = None  # the processor's own
        self.eos: str = self.tokenizer.eos_token or "<|im_end|>"

    @classmethod
    def for_tokenizing(cls, tokenizer: Any, chat_template: str, video_token: str) -> InputBuilder:
        """A builder that only tokenizes records against a clip's stored metadata
        (:meth:`video_from_meta`, :meth:`tokens`): the processor's tokenizer, chat template and
        video token without its image and video processors, whose imports (torchvision,
        ``torch._dynamo``) double a process's start-up. :meth:`video` needs the full builder.
        """
        builder = cls.__new__(cls)
        builder.processor = None
        builder.tokenizer = tokenizer
        builder.video_token = video_token
        builder.chat_template = chat_template
        builder.eos = tokenizer.eos_token or "<|im_end|>"
        return builder

    def video(
        self, frames: np.ndarray, indices: list[int], source_fps: float, source_frames: int
    ) -> VideoInputs:
        """Run the video processor on decoded frames (already at the target size)."""
        from transformers.video_utils import VideoMetadata

        meta = VideoMetadata(
            total_num_frames=source_frames,
            fps=source_fps,
            frames_indices=list(indices),
            duration=source_frames / source_fps,
        )
        out = self.processor.video_processor(
            videos=[frames],
            video_metadata=[meta],
            return_metadata=True,
            do_sample_frames=False,
            return_tensors="pt",
        )
        grid = [int(x) for x in out["video_grid_thw"][0].tolist()]
        patch = int(self.processor.video_processor.patch_size)
        if (grid[1] * patch, grid[2] * patch) != tuple(frames.shape[1:3]):
            from crashchat.models.processors import processor_budget

            raise ValueError(
                f"the video processor resized {frames.shape[1]}x{frames.shape[2]} frames to "
                f"{grid[1] * patch}x{grid[2] * patch}: its limit of "
                f"{processor_budget(self.processor.video_processor)} visual tokens per clip "
                "disagrees with the decode budget (max_visual_tokens); lower max_visual_tokens "
                "or rebuild the processor (crashchat checkpoint import-base --max-visual-tokens)"
            )
        placeholder = self.processor.replace_video_token(out, 0)
        merge = int(out["video_merge_sizes"][0])
        mask = [bool(x) for x in out["video_compression_mask"].tolist()]
        return VideoInputs(
            self.norm.to_uint8(out["pixel_values_videos"]),
            grid,
            merge,
            mask,
            placeholder,
            frame_token_counts(grid, merge, mask),
        )

    def video_from_meta(self, meta: dict[str, Any]) -> VideoInputs:
        """A stored clip's inputs without its pixels (enough to tokenize its records).

        Timestamps are the frame indices over the source rate, as the processor computes them.
        """
        grid = [int(x) for x in meta["video_grid_thw"]]
        merge = int(meta["video_merge_size"])
        mask = [bool(x) for x in meta["video_compression_mask"]]
        tokens = [int(x) for x in meta["frame_tokens"]]
        times = [int(i) / float(meta["source_fps"]) for i in meta["frame_indices"]]
        return VideoInputs(
            None, grid, merge, mask, placeholder_text(self.video_token, times, tokens), tokens
        )

    def prompt_text(self, prompt: str) -> str:
        """The rendered chat up to the assistant's answer, with one video token."""
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}
        ]
        if self.processor is None:  # the same rendering, from the processor's template
            return self.tokenizer.apply_chat_template(  # type: ignore[no-any-return]
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=True,
            )
        return self.processor.apply_chat_template(  # type: ignore[no-any-return]
            messages, tokenize=False, add_generation_prompt=True
        )

    def tokens(
        self, video: VideoInputs, prompt: str, answer: str | None
    ) -> tuple[list[int], list[int]]:
        """Input ids and answer-masked labels (labels empty when ``answer`` is None).

        Raises:
            ValueError: when the answer's tokens do not follow the prompt's (template mismatch).
        """
        text = self.prompt_text(prompt)
        if text.count(self.video_token) != 1:
            raise ValueError(
                f"chat template produced {text.count(self.video_token)} video tokens, expected 1"
            )
        text = text.replace(self.video_token, video.placeholder, 1)
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if answer is None:
            return prompt_ids, []
        ids = self.tokenizer(text + answer + self.eos, add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("answer tokens do not extend the prompt tokens; cannot mask labels")
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
        return ids, labels


def to_model_inputs(
    input_ids: list[int],
    pixels: np.ndarray,
    grid_thw: list[int],
    merge_size: int,
    compression_mask: list[bool],
    norm: PixelNorm,
    labels: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors for one sample, batch of one, as ``VideoLlama3ForConditionalGeneration`` takes them."""
    import torch

    inputs = {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "attention_mask": torch.ones((1, len(input_ids)), dtype=torch.long),
        "pixel_values_videos": norm.to_float(pixels),
        "video_grid_thw": torch.tensor([grid_thw], dtype=torch.long),
        "video_merge_sizes": torch.tensor([merge_size], dtype=torch.long),
        "video_compression_mask": torch.tensor(compression_mask, dtype=torch.bool),
    }
    if labels:
        inputs["labels"] = torch.tensor([labels], dtype=torch.long)
    return inputs
