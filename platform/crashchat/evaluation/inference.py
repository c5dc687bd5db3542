"""Batch inference with Ray Data: a pool of model actors generating answers greedily.

Input rows are the preprocessed samples (the same frames, processor and prompt as training);
each actor loads the model once and answers its rows one by one, as upstream (batch 1, greedy).
A row that fails (bad tensor, generation error) yields an error string instead of an answer.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from crashchat.config import EvalConfig
from crashchat.data.tasks import AnswerKind, get_task
from crashchat.video.model_inputs import IGNORE_INDEX

OUTPUT_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("task", pa.string()),
        ("video", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("response", pa.string()),
        ("error", pa.string()),
    ]
)


def load_for_inference(model: str, dtype: str = "auto", attention: str = "auto") -> Any:
    """A platform checkpoint (adapter merged) or a native base model, ready for ``generate``."""
    from crashchat.models.checkpoint import load_model_or_checkpoint

    return load_model_or_checkpoint(model, dtype, attention)


def prompt_length(labels: list[int], total: int) -> int:
    """Where the answer starts: the first supervised label (all of it when there is none)."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), total)


class Generator:
    """Ray Data actor: holds one model, answers rows of preprocessed samples."""

    def __init__(
        self, model: str, pixel_norm: dict[str, Any], cfg_json: dict[str, Any], data_dir: str
    ) -> None:
        import torch

        from crashchat.video.model_inputs import PixelNorm
        from crashchat.video.samples import ClipStore

        cfg = EvalConfig.model_validate(cfg_json)
        torch.set_num_threads(max(1, int(cfg.worker_num_cpus)))
        self.loaded = load_for_inference(model, cfg.dtype, cfg.attention)
        self.norm = PixelNorm(**pixel_norm)
        self.clips = ClipStore(data_dir)  # this actor reads the clips of the rows it answers
        self.tokenizer = self.loaded.processor.tokenizer
        self.limits = (cfg.max_new_tokens, cfg.max_new_tokens_text)

    def answer(self, row: dict[str, Any]) -> str:
        """Greedy answer to one sample row."""
        import torch

        from crashchat.video.samples import row_to_model_inputs

        (row,) = self.clips.attach([row])
        ids = [int(x) for x in row["input_ids"]]
        start = prompt_length([int(x) for x in row["labels"]], len(ids))
        inputs = row_to_model_inputs(
            {**row, "input_ids": ids[:start], "labels": []}, self.norm, with_labels=False
        )
        device = self.loaded.model.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.loaded.model.dtype)
        text_task = get_task(row["task"]).kind is AnswerKind.TEXT
        with torch.no_grad():
            out = self.loaded.model.generate(
                **inputs,
                max_new_tokens=self.limits[1] if text_task else self.limits[0],
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return str(self.tokenizer.decode(out[0, start:], skip_special_tokens=True)).strip()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            response, error = "", None
            try:
                response = self.answer(row)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            out.append(
                {
                    "record_id": row["record_id"],
                    "task": row["task"],
                    "video": row["video"],
                    "prompt": row["prompt"],
                    "answer": row["answer"],
                    "response": response,
                    "error": error,
                }
            )
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def run_inference(
    dataset: Any, model: str, pixel_norm: dict[str, Any], cfg: EvalConfig, data_dir: str
) -> list[dict[str, Any]]:
    """Answers for every row of ``dataset`` (a Ray dataset of record rows).

    Args:
        dataset: The rows to answer (``read_samples`` of a preprocessed folder).
        model: Model or platform checkpoint folder each actor loads once.
        pixel_norm: The dataset's pixel normalisation (its manifest's ``pixel_norm``).
        cfg: Actors, their resources, batch size, answer budgets, dtype and attention.
        data_dir: The preprocessed folder the actors read the clips from.
    """
    import ray.data

    answered = dataset.map_batches(
        Generator,
        fn_constructor_kwargs={
            "model": model,
            "pixel_norm": pixel_norm,
            "cfg_json": cfg.model_dump(),
            "data_dir": data_dir,
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=cfg.worker_num_cpus,
        num_gpus=cfg.worker_num_gpus or None,
    )
    return list(answered.take_all())
