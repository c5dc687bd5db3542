"""Answer many (clip, prompt) pairs in one padded ``generate`` call, and swap adapters per request.

:class:`BatchGenerator` is what a model replica holds: one loaded model, greedy decoding of a
dynamic batch with left padding (VideoLLaMA3 concatenates every clip's patches and splits them by
``video_grid_thw``, so clips of different lengths share a batch). :class:`AdapterBank` holds the
base model once and applies a checkpoint's LoRA adapter and projector on demand (multiplexed
serving).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crashchat.data.tasks import AnswerKind, get_task
from crashchat.serving.clip_inputs import concat_pixels
from crashchat.serving.messages import Question
from crashchat.video.model_inputs import InputBuilder


@dataclass
class Generated:
    """A generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (the token budget ran out)


class BatchGenerator:
    """Answers for a batch of questions from one model (greedy unless the request asks)."""

    def __init__(
        self, loaded: Any, max_new_tokens: int, max_new_tokens_text: int, threads: int = 1
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.loaded = loaded
        self.builder = InputBuilder(loaded.processor)
        self.tokenizer = loaded.processor.tokenizer
        self.limits = (max_new_tokens, max_new_tokens_text)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(self.tokenizer.eos_token_id if pad is None else pad)
        eos = loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def budget(self, q: Question) -> int:
        """New tokens the question may generate."""
        if q.generation and q.generation.max_tokens:
            return q.generation.max_tokens
        text = q.task is None or get_task(q.task).kind is AnswerKind.TEXT
        return self.limits[1] if text else self.limits[0]

    def prompt_ids(self, q: Question) -> list[int]:
        """The question's prompt token ids (video placeholder expanded), computed once."""
        if q.ids is None:
            q.ids = self.builder.tokens(q.clip.video, q.prompt, None)[0]
        return q.ids

    def cost(self, q: Question) -> int:
        """Tokens the question occupies in a batch: its prompt plus its answer budget."""
        return len(self.prompt_ids(q)) + self.budget(q)

    def inputs(self, questions: list[Question]) -> tuple[dict[str, torch.Tensor], int]:
        """Left-padded model inputs for ``questions`` and the padded prompt length."""
        ids = [self.prompt_ids(q) for q in questions]
        width = max(len(i) for i in ids)
        videos = [q.clip.video for q in questions]
        model = self.loaded.model
        # Built on the model's device: one transfer (the pixels), no copy of the small tensors.
        dev = model.device
        padded = [[self.pad_id] * (width - len(i)) + i for i in ids]
        mask = [[0] * (width - len(i)) + [1] * len(i) for i in ids]
        pixels = self.builder.norm.to_float(concat_pixels(videos))
        grids = [v.grid_thw for v in videos]
        merges = [v.merge_size for v in videos]
        compress = [m for v in videos for m in v.compression_mask]
        inputs = {
            "input_ids": torch.tensor(padded, dtype=torch.long, device=dev),
            "attention_mask": torch.tensor(mask, dtype=torch.long, device=dev),
            "pixel_values_videos": pixels.to(dev, model.dtype),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long, device=dev),
            "video_merge_sizes": torch.tensor(merges, dtype=torch.long, device=dev),
            "video_compression_mask": torch.tensor(compress, dtype=torch.bool, device=dev),
        }
        return inputs, width

    def _sampling(self, q: Question) -> dict[str, Any]:
        g = q.generation
        if g is None or g.temperature <= 0:
            return {"do_sample": False}
        if g.seed is not None:
            torch.manual_seed(g.seed)
        return {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p}

    def answer(self, questions: list[Question], model: Any = None) -> list[Generated]:
        """Answers, in order. ``model`` overrides the loaded one (adapter views).

        The questions of one call share their generation settings (the batcher groups them).
        """
        if not questions:
            return []
        inputs, width = self.inputs(questions)
        with torch.no_grad():
            out = (model or self.loaded.model).generate(
                **inputs,
                max_new_tokens=max(self.budget(q) for q in questions),
                pad_token_id=self.pad_id,
                **self._sampling(questions[0]),
            )
        return [self._result(q, row[width:]) for q, row in zip(questions, out, strict=True)]

    def _result(self, q: Question, new: torch.Tensor) -> Generated:
        tokens = new.tolist()
        end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens[: end if end is not None else self.budget(q)]
        text = str(self.tokenizer.decode(kept, skip_special_tokens=True)).strip()
        finish = "stop" if end is not None else "length"
        used = len(kept) + (1 if end is not None else 0)
        return Generated(text, len(self.prompt_ids(q)), used, finish)


class AdapterBank:
    """The base model once, with the adapters and trained weights of several checkpoints.

    ``activate(name)`` makes one checkpoint current: its LoRA adapter is enabled and its
    non-LoRA trained weights (the projector) are copied in. ``baseline`` disables adapters and
    restores the base weights. Calls are serialised: one checkpoint is active at a time.
    """

    def __init__(self, base: str, dtype: str = "auto", attention: str = "auto") -> None:
        from crashchat.models.loading import load_model

        self.loaded = load_model(base, dtype=dtype, attention=attention)
        self.peft: Any = None
        self.base_weights: dict[str, torch.Tensor] = {}
        self.weights: dict[str, dict[str, torch.Tensor]] = {}
        self.current: str | None = None
        self.lock = threading.Lock()

    def load(self, name: str, path: str) -> None:
        """Load checkpoint ``path``'s adapter and trained weights under ``name`` (verified).

        Raises:
            CheckpointError: when the checkpoint fails verification or does not fit the base.
        """
        from peft import PeftModel
        from safetensors.torch import load_file

        from crashchat.models.checkpoint import (
            ADAPTER_DIR,
            NON_LORA_FILE,
            CheckpointError,
            verify_checkpoint,
        )

        root = Path(path)
        verify_checkpoint(root)
        state = load_file(str(root / NON_LORA_FILE)) if (root / NON_LORA_FILE).is_file() else {}
        base_model = self.peft.base_model.model if self.peft is not None else self.loaded.model
        own = dict(base_model.named_parameters())
        unknown = sorted(k for k in state if k not in own)
        if unknown:
            raise CheckpointError(f"{root / NON_LORA_FILE}: weights not in the base: {unknown[:3]}")
        for key in state:
            self.base_weights.setdefault(key, own[key].detach().clone())
        with self.lock:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.loaded.model, str(root / ADAPTER_DIR), adapter_name=name
                )
                self.peft.eval()
            else:
                self.peft.load_adapter(str(root / ADAPTER_DIR), adapter_name=name)
            self.weights[name] = state
            self.current = None

    def unload(self, name: str) -> None:
        """Forget ``name`` (multiplexing evicted it)."""
        with self.lock:
            self.weights.pop(name, None)
            if self.peft is not None and name in self.peft.peft_config:
                if self.current == name:
                    self.current = None
                self.peft.delete_adapter(name)

    def _copy_in(self, state: dict[str, torch.Tensor]) -> None:
        model = self.peft.base_model.model if self.peft is not None else self.loaded.model
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, base in self.base_weights.items():
                params[key].copy_(state.get(key, base))

    def model_for(self, name: str) -> Any:
        """The model answering as checkpoint ``name``; call under :attr:`lock`."""
        if name == "baseline" or self.peft is None:
            if self.current != "baseline":
                self._copy_in({})
                self.current = "baseline"
            return _AdaptersOff(self.peft) if self.peft is not None else self.loaded.model
        if self.current != name:
            self.peft.set_adapter(name)
            self._copy_in(self.weights[name])
            self.current = name
        return self.peft


class _AdaptersOff:
    """``generate`` of a PEFT model with its adapters disabled."""

    def __init__(self, peft: Any) -> None:
        self.peft = peft

    def generate(self, **kwargs: Any) -> Any:
        with self.peft.disable_adapter():
            return self.peft.generate(**kwargs)
