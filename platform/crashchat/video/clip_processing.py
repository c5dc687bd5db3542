"""One clip's whole preprocessing in a process that may die: decode, the model's processor, store.

decord can crash its process on bad media. :class:`ClipProcessor` is a Ray actor that holds the
model's processor and decodes, processes and stores one clip per call; a crash kills that actor's
process only (Ray restarts it and the clip is retried a bounded number of times), and
:class:`ProcessorPool` gives each call a deadline that starts when the clip reaches a warm
processor, so loading the processor never counts as a hung decoder. The clip's pixels never
cross the object store: only its metadata (grid, tokens per frame, timestamps) returns to the
worker that tokenizes its records.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crashchat.video.decode import DecodeSpec, decode_clip
from crashchat.video.probe import VideoProbe

_BUILDERS: dict[str, Any] = {}  # model folder -> InputBuilder, one per task process


def input_builder(model: str) -> Any:
    """The model's :class:`~crashchat.video.model_inputs.InputBuilder`, loaded once per process."""
    if model not in _BUILDERS:
        from transformers import AutoProcessor

        from crashchat.video.model_inputs import InputBuilder

        _BUILDERS[model] = InputBuilder(
            AutoProcessor.from_pretrained(model, trust_remote_code=False)
        )
    return _BUILDERS[model]


def tokenizing_builder(model: str) -> Any:
    """An :class:`~crashchat.video.model_inputs.InputBuilder` that tokenizes only
    (:meth:`~crashchat.video.model_inputs.InputBuilder.for_tokenizing`), loaded once per process.

    What a data worker needs: it tokenizes records while its processor actors decode. Loads the
    tokenizer alone (3.5 s of CPU against 7 s for the whole processor) when the model folder
    holds a VideoLLaMA3 processor whose chat template is its ``chat_template.jinja`` (the layout
    ``save_pretrained`` writes); anything else gets the full builder.
    """
    key = f"tokenizing:{model}"
    if key not in _BUILDERS:
        root = Path(model)
        if not _template_is_the_jinja_file(root):
            _BUILDERS[key] = input_builder(model)
        else:
            from crashchat.video.model_inputs import InputBuilder

            tokenizer = _load_tokenizer(root)
            # VideoLlama3Processor's own rule for its video token.
            video_token = (
                tokenizer.video_token if hasattr(tokenizer, "video_token") else "<|video_pad|>"
            )
            template = (root / "chat_template.jinja").read_text(encoding="utf-8")
            _BUILDERS[key] = InputBuilder.for_tokenizing(tokenizer, template, video_token)
    return _BUILDERS[key]


def _load_tokenizer(root: Path) -> Any:
    """The tokenizer class ``tokenizer_config.json`` names, imported alone.

    ``AutoTokenizer`` finds the same class through transformers' config machinery, which
    imports torch: 1.4 s more of every data worker's start-up, for nothing it uses.
    """
    import transformers

    config = root / "tokenizer_config.json"
    name = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase):
        return cls.from_pretrained(str(root))
    return transformers.AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)


def _template_is_the_jinja_file(root: Path) -> bool:
    """A VideoLLaMA3 processor whose only chat template is ``chat_template.jinja`` (no legacy
    ``chat_template.json``, no template in its config, no additional templates)."""
    config = root / "processor_config.json"
    if not (config.is_file() and (root / "chat_template.jinja").is_file()):
        return False
    if (root / "chat_template.json").exists() or (root / "additional_chat_templates").exists():
        return False
    meta = json.loads(config.read_text())
    return meta.get("processor_class") == "VideoLlama3Processor" and "chat_template" not in meta


def settings_key(spec: DecodeSpec, video_processor: Any) -> str:
    """Digest of everything that shapes a clip's stored row: sampling, sizing, the processor,
    the stored layout (a clip of another schema version is never reused)."""
    from crashchat.video.samples import SCHEMA_VERSION

    processor = video_processor.to_dict()
    keep = {k: processor.get(k) for k in sorted(processor) if not k.startswith("_")}
    spec_fields = {k: v for k, v in asdict(spec).items() if k != "fault_injection"}
    text = json.dumps(
        {"spec": spec_fields, "processor": keep, "layout": SCHEMA_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def clip_key(file_digest: str, settings: str) -> str:
    """A clip's key: its content and the settings it was processed with."""
    return f"{file_digest[:32]}-{settings}"


@dataclass(frozen=True)
class ClipJob:
    """One clip to decode and store, as a data worker hands it to a processor actor.

    Attributes:
        path: The clip's file.
        probe: What probing the file found (size, frames, fps, codec).
        spec: How to sample and size its frames.
        key: Its clip key (:func:`clip_key`).
        video: Its path as the annotations name it.
        digest: The file's SHA-256.
    """

    path: str
    probe: VideoProbe
    spec: DecodeSpec
    key: str
    video: str
    digest: str


def process_clip(job: ClipJob, model: str, out: str) -> dict[str, Any]:
    """Decode the job's clip, run the model's processor, store the clip row; returns it without
    pixels.

    Raises:
        RuntimeError: on a decoder error (decord's message).
        ValueError: when the processor refuses the frames (the message says why).
    """
    import ray

    from crashchat.video.samples import CLIP_META_COLUMNS, pack_pixels, write_clip

    path, probe, key = job.path, job.probe, job.key
    clip = decode_clip(path, probe.width, probe.height, probe.frames, job.spec, probe.fps)
    builder = input_builder(model)
    vid = builder.video(clip.frames, clip.indices, clip.source_fps, clip.source_frames)
    row = {
        "clip_key": key,
        "video": job.video,
        "file_sha256": job.digest,
        "settings_key": key.split("-")[-1],
        "num_frames": len(clip.indices),
        "timestamps": clip.timestamps,
        "frame_indices": clip.indices,
        "frame_tokens": vid.frame_tokens,
        "pixel_values": pack_pixels(vid.pixels),
        "pixel_shape": list(vid.pixels.shape),
        "video_grid_thw": vid.grid_thw,
        "video_merge_size": vid.merge_size,
        "video_compression_mask": vid.compression_mask,
        "source_fps": clip.source_fps,
        "source_frames": clip.source_frames,
        "width": probe.width,
        "height": probe.height,
        "duration": probe.duration,
        "codec": probe.codec,
        "decode_node": ray.get_runtime_context().get_node_id(),
    }
    write_clip(out, row)
    return {k: row[k] for k in CLIP_META_COLUMNS}


class ClipProcessor:
    """Ray actor: the model's processor, loaded once; decodes, processes and stores clips."""

    def __init__(self, model: str, out: str) -> None:
        self.model, self.out = model, out
        input_builder(model)

    def ready(self) -> bool:
        """True once the processor is loaded (callers wait for it before giving work)."""
        return True

    def process(self, job: ClipJob) -> dict[str, Any]:
        """:func:`process_clip` of one clip in this process."""
        return process_clip(job, self.model, self.out)


class ProcessorPool:
    """A few :class:`ClipProcessor` actors, one clip at a time each, with crash retries and a
    deadline per clip.

    Args:
        model: Model folder whose processor the actors load.
        out: Dataset folder the clips are stored in.
        size: Actors.
        options: Ray actor options (resources, placement).
        timeout_s: A clip whose processing takes longer is failed and its actor restarted (a
            hung decoder); the clock starts when the clip reaches a ready actor.
        retries: Further attempts of a clip whose actor process died.

    The actors start with the first clip that needs processing (:meth:`start`), so a rerun
    whose clips are all stored starts none (each costs seconds of CPU to load the processor).
    """

    def __init__(
        self,
        model: str,
        out: str,
        size: int,
        options: dict[str, Any],
        timeout_s: float,
        retries: int,
    ) -> None:
        self.timeout_s, self.retries = timeout_s, retries
        self.model, self.out, self.size, self.options = model, out, max(1, size), options
        self.actors: list[Any] = []
        self.warming: dict[Any, Any] = {}
        self.idle: list[Any] = []

    def start(self) -> None:
        """Start the actors loading the processor, once (later calls do nothing)."""
        import ray

        if self.actors:
            return
        cls = ray.remote(ClipProcessor).options(max_restarts=-1, max_task_retries=0, **self.options)
        self.actors = [cls.remote(self.model, self.out) for _ in range(self.size)]
        self.warming = {a.ready.remote(): a for a in self.actors}

    def run(self, jobs: dict[int, ClipJob]) -> dict[int, dict[str, Any] | str]:
        """Process ``jobs`` (by index); returns the clip metadata, or the reason it failed, by
        index."""
        import ray

        if jobs:
            self.start()
        queue = deque(jobs)
        attempts: dict[int, int] = dict.fromkeys(jobs, 0)
        running: dict[Any, tuple[Any, int, float]] = {}
        results: dict[int, dict[str, Any] | str] = {}
        while queue or running:
            while queue and self.idle:
                i, actor = queue.popleft(), self.idle.pop()
                attempts[i] += 1
                running[actor.process.remote(jobs[i])] = (actor, i, time.monotonic())
            waiting = [*running, *self.warming]
            done, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
            for ref in done:
                if ref in self.warming:
                    self._warmed(ref)
                else:
                    self._finished(ref, running.pop(ref), attempts, queue, results)
            self._expire(running, results)
        return results

    def _warmed(self, ref: Any) -> None:
        import ray

        actor = self.warming.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(actor)
        except ray.exceptions.RayActorError:
            self.warming[actor.ready.remote()] = actor  # died while starting: it restarts

    def _finished(
        self,
        ref: Any,
        call: tuple[Any, int, float],
        attempts: dict[int, int],
        queue: deque[int],
        results: dict[int, dict[str, Any] | str],
    ) -> None:
        import ray

        actor, i, _ = call
        try:
            results[i] = dict(ray.get(ref))
            self.idle.append(actor)
        except ray.exceptions.RayTaskError as exc:  # the clip's own error: no retry
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            results[i] = str(cause).splitlines()[-1] if str(cause) else type(cause).__name__
            self.idle.append(actor)
        except ray.exceptions.RayActorError as exc:  # the process died (decoder crash)
            self.warming[actor.ready.remote()] = actor
            if attempts[i] <= self.retries:
                queue.appendleft(i)
            else:
                results[i] = (
                    f"decoder process died ({type(exc).__name__}) on all {attempts[i]} attempt(s)"
                )

    def _expire(
        self, running: dict[Any, tuple[Any, int, float]], results: dict[int, dict[str, Any] | str]
    ) -> None:
        """Fail clips past their deadline and restart their actors (a hung decoder)."""
        import ray

        now = time.monotonic()
        for ref, (actor, i, started) in list(running.items()):
            if now - started > self.timeout_s:
                del running[ref]
                ray.kill(actor, no_restart=False)
                self.warming[actor.ready.remote()] = actor
                results[i] = f"decode timed out after {self.timeout_s:.0f} s (processor restarted)"
