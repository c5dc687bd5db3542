"""Size limits of the VideoLLaMA3 processors, from a visual-token budget.

Upstream VideoLLaMA3 counts its budget in merged visual tokens (``max_tokens``, a patch of
``patch_size * merge_size`` pixels square each) shared by every frame of a clip; transformers'
native video processor counts pixels (``size.longest_edge`` for the whole clip, divided by its
frame count; ``size.shortest_edge`` per frame). :func:`video_size` converts one into the other,
so the native processor sizes frames exactly as upstream's ``simple_batched_resize`` does.
"""

from __future__ import annotations

from typing import Any

PATCH_SIZE = 14
VIDEO_MERGE_SIZE = 2
IMAGE_MERGE_SIZE = 1


def video_size(
    max_visual_tokens: int, patch_size: int = PATCH_SIZE, merge_size: int = VIDEO_MERGE_SIZE
) -> dict[str, int]:
    """The native video processor's ``size`` for a whole-clip budget of ``max_visual_tokens``.

    ``shortest_edge`` is one token per frame: frames the decode stage already sized from the
    budget are never upscaled by the processor (upstream's ``min_tokens`` 16 per frame only
    binds beyond 640 frames at its 10,240-token budget, never at 96 frames).
    """
    token_px = (patch_size * merge_size) ** 2
    return {"shortest_edge": token_px, "longest_edge": max_visual_tokens * token_px}


def image_pixel_limits(
    min_tokens: int, max_tokens: int, patch_size: int = PATCH_SIZE, merge_size: int = 1
) -> dict[str, int]:
    """``min_pixels`` / ``max_pixels`` of the native image processor for upstream's token limits."""
    token_px = (patch_size * merge_size) ** 2
    return {"min_pixels": min_tokens * token_px, "max_pixels": max_tokens * token_px}


def tokens_per_frame(
    height: int,
    width: int,
    frames: int,
    max_visual_tokens: int,
    patch_size: int = PATCH_SIZE,
    merge_size: int = VIDEO_MERGE_SIZE,
) -> tuple[int, int, int]:
    """(tokens per frame, resized height, resized width) of a ``frames``-frame clip.

    The native processor's arithmetic (``smart_resize`` with the budget shared by the frames),
    before token compression, which can only lower the count.
    """
    from transformers.models.video_llama_3.video_processing_video_llama_3 import smart_resize

    factor = patch_size * merge_size
    size = video_size(max_visual_tokens, patch_size, merge_size)
    h, w = smart_resize(
        height,
        width,
        factor=factor,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"] // max(frames, 1),
    )
    return (h // factor) * (w // factor), h, w


def processor_budget(video_processor: Any) -> int | None:
    """The whole-clip token budget a saved native video processor allows (None: no limit set)."""
    size = getattr(video_processor, "size", None) or {}
    longest = (
        size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    )
    if not longest:
        return None
    factor = int(video_processor.patch_size) * int(video_processor.merge_size)
    return int(longest) // (factor * factor)
