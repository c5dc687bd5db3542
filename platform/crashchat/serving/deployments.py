"""The model-side Serve deployments: video decoding, one replica group per checkpoint, multiplexed.

The classes are plain: :mod:`crashchat.serving.app` turns them into deployments with the
resources, queue bounds and autoscaling of the config. Errors a request causes come back as
:class:`Failure` values, never as exceptions, so they cannot be mistaken for a broken replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve

from crashchat.config import ServeConfig
from crashchat.scratch import make_scratch
from crashchat.serving.batching import GreedyBatcher
from crashchat.serving.clip_inputs import ClipInputs, build_clip_inputs
from crashchat.serving.cpu_priority import apply_niceness
from crashchat.serving.messages import Answer, Failure, Question
from crashchat.video.decode import decode_spec

if TYPE_CHECKING:  # imported by the model replicas alone: torch is 2 s of a driver's start-up
    from crashchat.serving.generation import AdapterBank, BatchGenerator


class Decoder:
    """Probes and decodes request videos; the processor runs here, not on the model replicas.

    decord runs in a Ray task pinned to this node, so a file that crashes the decoder kills that
    task's worker only, never this replica.
    """

    def __init__(self, cfg_json: dict[str, Any], processors: dict[str, dict[str, Any]]) -> None:
        import ray
        from transformers import AutoProcessor

        from crashchat.video.decode import decode_task
        from crashchat.video.model_inputs import InputBuilder

        self.cfg = ServeConfig.model_validate(cfg_json)
        apply_niceness(self.cfg.decoder, "decoder")
        self.builders = {
            group: InputBuilder(AutoProcessor.from_pretrained(p["dir"], trust_remote_code=False))
            for group, p in processors.items()
        }
        self.specs = {
            g: decode_spec(self.cfg.preprocess, p["frame_size"]) for g, p in processors.items()
        }
        node = ray.get_runtime_context().get_node_id()
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node, soft=False)
        self.decode_fn = ray.remote(decode_task).options(
            num_cpus=self.cfg.preprocess.decode_num_cpus,
            max_retries=0,
            scheduling_strategy=strategy,
        )
        # Uploads are written here for the decoder to read by path; each is removed after its
        # request, and the folder with the replica (Serve calls __del__ on shutdown; a killed
        # replica's by the next decoder on the machine).
        self._spool = make_scratch("uploads")
        self.spool = Path(self._spool.name)

    def __del__(self) -> None:
        if hasattr(self, "_spool"):  # not when __init__ failed before it
            self._spool.cleanup()

    async def decode(self, group: str, source: dict[str, Any]) -> ClipInputs | Failure:
        """Clip inputs for ``source`` (``{"data": bytes, "filename"}`` or ``{"path"}``)."""
        import ray

        from crashchat.video.probe import VideoRejected, probe_video

        name = source.get("path") or source.get("filename") or "upload"
        tmp = None
        try:
            if source.get("data") is not None:
                suffix = Path(str(source.get("filename") or "")).suffix or ".mp4"
                fd, tmp = tempfile.mkstemp(suffix=suffix, dir=self.spool)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(source["data"])
                path = tmp
            else:
                path = str(source["path"])
            try:
                probe = probe_video(path, self.cfg.preprocess.limits)
            except VideoRejected as exc:
                return Failure(422, f"video {name}: {exc}")
            start = time.perf_counter()
            spec = self.specs[group]
            if source.get("sampling"):  # per-request fps / max_frames (OpenAI mm_processor_kwargs)
                spec = dataclasses.replace(spec, **source["sampling"])
            ref = self.decode_fn.remote(path, probe, spec)
            try:
                clip = await asyncio.wait_for(ref, timeout=self.cfg.preprocess.decode_timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                # A hung decoder is killed, whether it timed out here or the request was dropped.
                ray.cancel(ref, force=True)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return Failure(
                    422,
                    f"video {name}: decoding took over {self.cfg.preprocess.decode_timeout_s:g} s",
                )
            except Exception as exc:
                return Failure(422, f"video {name}: cannot be decoded ({_cause(exc)})")
            decode_ms = (time.perf_counter() - start) * 1000
            try:
                return await asyncio.to_thread(
                    build_clip_inputs,
                    clip,
                    self.builders[group],
                    probe.width,
                    probe.height,
                    decode_ms,
                )
            except Exception as exc:
                return Failure(422, f"video {name}: {exc}")
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)


def _cause(exc: BaseException) -> str:
    """The last line of a Ray error: the decoder's own message or the worker's death."""
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


class CheckpointModel:
    """One checkpoint's replica: the model loaded once, requests batched dynamically."""

    def __init__(self, name: str, path: str, cfg_json: dict[str, Any]) -> None:
        from crashchat.models.checkpoint import load_model_or_checkpoint
        from crashchat.serving.generation import BatchGenerator

        cfg = ServeConfig.model_validate(cfg_json)
        settings = cfg.replica(name)
        apply_niceness(settings, f"checkpoint {name}")
        self.name = name
        self.generator = BatchGenerator(
            load_model_or_checkpoint(path, cfg.dtype, cfg.attention),
            cfg.max_new_tokens,
            cfg.max_new_tokens_text,
            threads=max(1, int(settings.num_cpus)),
        )
        self.batcher: GreedyBatcher[Question, Answer] = GreedyBatcher(
            self._run,
            settings.max_batch_size,
            settings.batch_wait_timeout_s,
            cost=self.generator.cost,
            max_batch_tokens=settings.max_batch_tokens,
        )

    async def answer(self, question: Question) -> Answer:
        """The answer, from a dynamic batch; a failing batch is retried one question at a time."""
        return await self.batcher.submit(question, question.batch_key())

    async def _run(self, _key: Any, questions: list[Question]) -> list[Answer]:
        return await asyncio.to_thread(_answer_all, self.generator, questions, None)

    def pid(self) -> int:
        """The replica's process id (tests and diagnostics)."""
        return os.getpid()


def _answer_all(generator: BatchGenerator, questions: list[Question], model: Any) -> list[Answer]:
    start = time.perf_counter()
    try:
        got = generator.answer(questions, model)
        ms = (time.perf_counter() - start) * 1000
        return [_as_answer(g, ms, len(questions)) for g in got]
    except Exception:
        if len(questions) == 1:
            raise
    out = []
    for q in questions:
        one = time.perf_counter()
        try:
            (g,) = generator.answer([q], model)
            out.append(_as_answer(g, (time.perf_counter() - one) * 1000, 1))
        except Exception as exc:
            out.append(
                Answer("", (time.perf_counter() - one) * 1000, 1, f"{type(exc).__name__}: {exc}")
            )
    return out


def _as_answer(g: Any, ms: float, batch: int) -> Answer:
    return Answer(
        g.text,
        ms,
        batch,
        prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens,
        finish_reason=g.finish_reason,
    )


class MultiplexedModel:
    """The base model once per replica; each request's checkpoint adapter swapped in on demand."""

    def __init__(self, base: str, checkpoints: dict[str, str], cfg_json: dict[str, Any]) -> None:
        from crashchat.serving.generation import AdapterBank, BatchGenerator

        cfg = ServeConfig.model_validate(cfg_json)
        settings = cfg.model
        apply_niceness(settings, "multiplexed model")
        self.paths = checkpoints
        self.bank = AdapterBank(base, cfg.dtype, cfg.attention)
        self.generator = BatchGenerator(
            self.bank.loaded,
            cfg.max_new_tokens,
            cfg.max_new_tokens_text,
            threads=max(1, int(settings.num_cpus)),
        )
        bank, paths = self.bank, self.paths

        async def load(model_id: str) -> _Slot:
            if model_id != "baseline":
                await asyncio.to_thread(bank.load, model_id, paths[model_id])
            return _Slot(bank, model_id)

        self.slot = serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(load)
        self.batcher: GreedyBatcher[Question, Answer] = GreedyBatcher(
            self._run_batch,
            settings.max_batch_size,
            settings.batch_wait_timeout_s,
            cost=self.generator.cost,
            max_batch_tokens=settings.max_batch_tokens,
        )

    async def answer(self, question: Question) -> Answer:
        """The answer as the request's checkpoint (a batch holds one checkpoint's requests)."""
        return await self.batcher.submit(
            question, (serve.get_multiplexed_model_id(), question.batch_key())
        )

    async def _run_batch(self, key: Any, questions: list[Question]) -> list[Answer]:
        slot = await self.slot(str(key[0]))
        return await asyncio.to_thread(self._run, slot.name, questions)

    def _run(self, name: str, questions: list[Question]) -> list[Answer]:
        with self.bank.lock:
            model = self.bank.model_for(name)
            return _answer_all(self.generator, questions, model)

    def loaded_adapters(self) -> list[str]:
        """Adapters currently loaded in this replica."""
        return sorted(self.bank.weights)

    def pid(self) -> int:
        """The replica's process id."""
        return os.getpid()


class _Slot:
    """A multiplexed model handle; evicting it unloads the adapter from the shared base."""

    def __init__(self, bank: AdapterBank, name: str) -> None:
        self.bank = bank
        self.name = name

    def __del__(self) -> None:
        if self.name != "baseline":
            # At interpreter shutdown there is nothing left to free.
            with contextlib.suppress(Exception):
                self.bank.unload(self.name)
