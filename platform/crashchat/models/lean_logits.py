"""Compute ``lm_head`` only where it is needed: the last position when generating, the supervised
positions when training.

transformers 5.23's ``VideoLlama3ForConditionalGeneration.forward`` has no ``logits_to_keep``,
so ``generate`` projects every prompt position onto the vocabulary: for a batch of 8 prompts of
15k tokens and a 152k vocabulary that is 8 x 15k x 152k bf16 logits, about 38 GB, of which
``generate`` reads one row per prompt. In training only the answer tokens carry labels (a few
to a few hundred of ~10k positions), yet the loss upcasts the logits of every position to fp32.

:func:`enable_lean_logits` swaps a loaded model's class for :class:`LeanVideoLlama3`, whose
forward is the native one except for what it projects: ``logits_to_keep`` (``generate`` sets it
to 1 as soon as the forward accepts it) and, when ``labels`` are given, only the positions whose
next token is supervised. The loss is the same cross-entropy over the same tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import VideoLlama3ForConditionalGeneration
from transformers.models.video_llama_3.modeling_video_llama_3 import (
    VideoLlama3CausalLMOutputWithPast,
)
from transformers.utils.generic import can_return_tuple

IGNORE_INDEX = -100


def supervised_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    num_items_in_batch: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the supervised positions): causal LM cross-entropy over labelled tokens.

    The same value transformers' ``ForCausalLMLoss`` computes (fp32 cross-entropy, mean over the
    supervised tokens, or their sum divided by ``num_items_in_batch``), projecting only the
    positions whose next token has a label.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][keep]).float()
    picked = targets[keep].to(logits.device)
    if num_items_in_batch is None:
        if picked.numel() == 0:
            return logits.sum() * 0.0, logits
        return torch.nn.functional.cross_entropy(logits, picked), logits
    total = torch.nn.functional.cross_entropy(logits, picked, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch, logits


class LeanVideoLlama3(VideoLlama3ForConditionalGeneration):
    """The native model with ``logits_to_keep`` and supervised-only training logits."""

    #: Project only supervised positions when ``labels`` are given (False: every position).
    supervised_logits_only: bool = True

    @can_return_tuple
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        image_merge_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        video_merge_sizes: torch.LongTensor | None = None,
        video_compression_mask: torch.BoolTensor | None = None,
        mm_encoder_outputs: Any = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> VideoLlama3CausalLMOutputWithPast:
        """The native forward; ``logits_to_keep`` and ``labels`` decide which logits are made.

        Long for its signature: every keyword of the native forward, so ``generate`` and the
        training loop call it exactly as they call the native model.
        """
        num_items = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            image_merge_sizes=image_merge_sizes,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            video_merge_sizes=video_merge_sizes,
            video_compression_mask=video_compression_mask,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs[0]
        loss = None
        if labels is not None and self.supervised_logits_only:
            loss, logits = supervised_loss(hidden, labels, self.lm_head, num_items)
        else:
            keep = (
                slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            )
            logits = self.lm_head(hidden[:, keep, :])
            if labels is not None:
                extra = {} if num_items is None else {"num_items_in_batch": num_items}
                loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.get_text_config().vocab_size,
                    **extra,
                )
        return VideoLlama3CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            video_hidden_states=outputs.video_hidden_states,
        )


def enable_lean_logits(model: Any, supervised_only: bool = True) -> Any:
    """Make a loaded native VideoLLaMA3 a :class:`LeanVideoLlama3` (same weights, same object).

    Other model classes are returned unchanged.
    """
    if isinstance(model, VideoLlama3ForConditionalGeneration):
        model.__class__ = LeanVideoLlama3
        model.supervised_logits_only = supervised_only  # type: ignore[assignment]
    return model
