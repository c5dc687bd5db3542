"""The router: one FastAPI ingress in front of a decoder deployment and one autoscaled replica
group per checkpoint (or one multiplexed deployment); :mod:`crashchat.serving.builder` binds
them into the Serve application.
"""

# No ``from __future__ import annotations``: FastAPI must see real types on the routes.
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from crashchat.config import ServeConfig
from crashchat.data.answer_parsing import parse_answer
from crashchat.data.tasks import get_task
from crashchat.serving import api_schema, openai_api
from crashchat.serving.catalog import (
    BASELINE,
    Catalog,
    RouteError,
    ServedCheckpoint,
    processor_group,
)
from crashchat.serving.clip_inputs import ClipInputs
from crashchat.serving.cpu_priority import apply_niceness
from crashchat.serving.messages import Answer, Failure, Question
from crashchat.serving.requests import (
    RequestError,
    VideoSource,
    check_media_type,
    check_path,
    limited_stream,
    parse_checkpoint,
    parse_tasks,
)

PAGE = Path(__file__).with_name("static") / "index.html"
RETRYABLE = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "WorkerCrashedError")

api = FastAPI(
    title="CrashChat",
    description="Traffic-crash video analysis with CrashChat checkpoints on Ray Serve.",
    version="1",
)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "detail": detail}}, status, headers=headers)


def _openai_error(
    status: int, detail: str, param: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(openai_api.error_body(status, detail, param), status, headers=headers)


async def _sse(ident: str, out: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The answer as server-sent ``chat.completion.chunk`` events, then ``[DONE]``.

    Generation is batched on the replicas, so the answer streams once it is generated.
    """
    model = out["model"]

    def event(data: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(data)}\n\n".encode()

    yield event(openai_api.chunk(ident, model, {"role": "assistant", "content": ""}))
    for piece in openai_api.stream_pieces(out["text"]):
        yield event(openai_api.chunk(ident, model, {"content": piece}))
    last = openai_api.chunk(ident, model, {}, out["finish"])
    last["crashchat"] = out["extra"]
    yield event(last)
    if include_usage:
        usage = openai_api.chunk(ident, model, {})
        usage["choices"], usage["usage"] = [], out["usage"]
        yield event(usage)
    yield b"data: [DONE]\n\n"


def build_report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The crash report: each task's parsed answer under a plain name (None when unparsed)."""
    names = {
        "crash_recognition": "crash",
        "crash_localization": "crash_interval_s",
        "pre_crash_localization": "pre_crash_cue_s",
        "crash_description": "description",
        "causal_reasoning": "cause",
        "prevention_reasoning": "prevention",
    }
    return {
        names[t]: r["value"] if r.get("parsed") else None
        for t, r in results.items()
        if t in names and "error" not in r
    }


def _result_entry(task: str, c: ServedCheckpoint, ans: Answer, parse: str) -> dict[str, Any]:
    """One task's entry of an analysis: who answered, how long it took, the parsed answer."""
    entry: dict[str, Any] = {
        "checkpoint": c.name,
        "kind": str(get_task(task).kind),
        "model_ms": round(ans.model_ms, 1),
        "batch_size": ans.batch_size,
    }
    if ans.error:
        return entry | {"error": ans.error}
    parsed = parse_answer(task, ans.response, parse).to_json()
    return entry | {"answer": ans.response, "value": parsed["value"], "parsed": parsed["parsed"]}


@serve.ingress(api)
class Router:
    """The HTTP API: checks requests, decodes once, asks each task's checkpoint, answers."""

    def __init__(
        self,
        catalog_args: dict[str, Any],
        cfg_json: dict[str, Any],
        decoder: Any,
        models: dict[str, Any],
        multiplexed: bool = False,
    ) -> None:
        self.catalog = Catalog.from_args(catalog_args)
        self.cfg = ServeConfig.model_validate(cfg_json)
        apply_niceness(self.cfg.router, "router")
        self.decoder = decoder
        self.models = models
        self.multiplexed = multiplexed
        self.groups = {n: processor_group(c) for n, c in self.catalog.checkpoints.items()}
        self.token = os.environ.get(self.cfg.token_env) or None
        self.created = int(time.time())
        self.in_flight = 0  # analyze and chat requests being worked on (limits.max_in_flight)
        # A chat message equal to a task's prompt is that task (whitespace aside).
        self.task_of_prompt = {
            openai_api.normalize_prompt(p): t
            for c in self.catalog.checkpoints.values()
            for t, p in c.prompts.items()
        }

    # -- checks ---------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.token is None:
            return
        got = request.headers.get("authorization", "")
        if got != f"Bearer {self.token}":
            raise RequestError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def _read_json(
        self, request: Request, limit: int | None = None, what: str | None = None
    ) -> Any:
        """The JSON body, read no further than ``limit`` bytes (413 naming ``what`` beyond)."""
        chunks = limited_stream(
            request.stream(),
            limit or int(self.cfg.limits.max_upload_mb * 2**20),
            request.headers.get("content-length"),
            what,
        )
        body = b"".join([c async for c in chunks])
        try:
            return json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            raise RequestError(
                422, f"body: invalid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        except UnicodeDecodeError as exc:  # JSON must be UTF-8 (found by the API fuzzer)
            raise RequestError(422, f"body: not UTF-8 text ({exc.reason})") from None

    async def _parse_analyze(self, request: Request) -> tuple[VideoSource, list[str] | str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = await self._read_json(request)
            if not isinstance(body, dict):
                raise RequestError(422, "body: expected a JSON object with video_path and tasks")
            path = check_path(body.get("video_path"), self.cfg.limits.allowed_roots)
            return (
                VideoSource(path=path),
                parse_tasks(body.get("tasks")),
                parse_checkpoint(body.get("checkpoint")),
            )
        if ctype == "multipart/form-data":
            from starlette.formparsers import MultiPartException, MultiPartParser

            limit = int(self.cfg.limits.max_upload_mb * 2**20)
            parser = MultiPartParser(
                request.headers,
                limited_stream(request.stream(), limit, request.headers.get("content-length")),
                max_files=1,
                max_fields=8,
                max_part_size=64 * 1024,
            )
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                raise RequestError(422, f"multipart body: {exc.message}") from None
            upload = form.get("video") or form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "video: a file field named 'video' is required")
            filename = upload.filename or "upload"
            check_media_type(upload.content_type, filename)
            data = await upload.read()
            await upload.close()
            if not data:
                raise RequestError(422, f"video {filename}: empty file (0 bytes)")
            tasks = form.get("tasks")
            ckpt = form.get("checkpoint")
            return (
                VideoSource(data=data, filename=filename),
                parse_tasks(tasks if isinstance(tasks, str) else None),
                parse_checkpoint(ckpt if isinstance(ckpt, str) else None),
            )
        raise RequestError(
            415, f"content type {ctype or '(none)'}: send multipart/form-data or application/json"
        )

    # -- work -----------------------------------------------------------------------------
    def _model(self, name: str) -> Any:
        if self.multiplexed:
            return self.models["multiplexed"].options(multiplexed_model_id=name)
        return self.models[name]

    async def _call(self, make: Any, what: str) -> Any:
        """Await a handle call, resent (``limits.replica_retries``) when its replica died."""
        from ray.serve.exceptions import BackPressureError

        limits = self.cfg.limits
        for attempt in range(limits.replica_retries + 1):
            try:
                return await make()
            except BackPressureError:
                raise RequestError(
                    503,
                    f"{what} is at capacity; retry later",
                    {"Retry-After": str(limits.retry_after_s)},
                ) from None
            except Exception as exc:
                if not any(n in type(exc).__name__ for n in RETRYABLE):
                    raise
                if attempt == limits.replica_retries:
                    raise RequestError(
                        503,
                        f"{what} died {attempt + 1} time(s) while answering: {type(exc).__name__}",
                        {"Retry-After": str(limits.retry_after_s)},
                    ) from None
                await asyncio.sleep(limits.replica_retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _decode(self, source: VideoSource, groups: set[str]) -> dict[str, ClipInputs]:
        """The clip's model inputs for each processor group (one decode per group)."""
        payload = {"data": source.data, "filename": source.filename, "path": source.path}
        clips: dict[str, ClipInputs] = {}
        for group in sorted(groups):
            got = await self._call(
                lambda g=group: self.decoder.decode.remote(g, payload), "the video decoder"
            )
            if isinstance(got, Failure):
                raise RequestError(got.status, got.detail)
            clips[group] = got
        return clips

    async def analyze_source(
        self, source: VideoSource, tasks: list[str] | str, checkpoint: str
    ) -> dict[str, Any]:
        """Decode once per processor group, ask every task's checkpoint, parse the answers."""
        start = time.perf_counter()
        try:
            keys = self.catalog.resolve_tasks(tasks)
            routes = {t: self.catalog.route(t, checkpoint) for t in keys}
        except RouteError as exc:
            raise RequestError(404, str(exc)) from None
        decode_started = time.perf_counter()
        clips = await self._decode(source, {self.groups[c.name] for c in routes.values()})
        decode_wait_ms = (time.perf_counter() - decode_started) * 1000

        async def ask(task: str, c: ServedCheckpoint) -> Answer:
            q = Question(clips[self.groups[c.name]], task, c.prompts[task])
            return await self._call(
                lambda: self._model(c.name).answer.remote(q), f"checkpoint {c.name}"
            )

        models_started = time.perf_counter()
        answers = await asyncio.gather(*(ask(t, c) for t, c in routes.items()))
        models_wait_ms = (time.perf_counter() - models_started) * 1000
        results = {
            task: _result_entry(task, c, ans, self.cfg.parse)
            for (task, c), ans in zip(routes.items(), answers, strict=True)
        }
        clip = next(iter(clips.values()))
        return {
            "video": {"source": source.describe(), **clip.describe()},
            "tasks": keys,
            "results": results,
            "report": build_report(results),
            "timings": {
                "decode_ms": round(sum(c.decode_ms for c in clips.values()), 1),
                # Router-side: the decoder and model calls including their queues.
                "decoder_call_ms": round(decode_wait_ms, 1),
                "models_call_ms": round(models_wait_ms, 1),
                "total_ms": round((time.perf_counter() - start) * 1000, 1),
            },
        }

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """Count a request in flight; refuse it at once (503) when the router is full."""
        limit = self.cfg.limits.max_in_flight
        if limit is not None and self.in_flight >= limit:
            raise RequestError(
                503,
                f"the endpoint is at capacity ({limit} requests in flight); retry later",
                {"Retry-After": str(self.cfg.limits.retry_after_s)},
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _with_timeout(self, coro: Any) -> Any:
        try:
            # A timeout scope, not wait_for: the work stays in the request's task, so the
            # answer goes out without a hop through another task.
            async with asyncio.timeout(self.cfg.limits.request_timeout_s):
                return await coro
        except TimeoutError:
            raise RequestError(
                504, f"the request took over {self.cfg.limits.request_timeout_s:g} s"
            ) from None

    # -- routes ---------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the router (model replicas are health-checked by Serve)."""
        return {"status": "ok", "checkpoints": self.catalog.names, "mode": self.cfg.mode}

    @api.get("/v1/checkpoints")
    async def checkpoints(self, request: Request) -> Response:
        """The deployed checkpoints, their tasks and the checkpoint ``auto`` picks per task."""
        try:
            self._auth(request)
        except RequestError as exc:
            return _error(exc.status, exc.detail, exc.headers)
        return JSONResponse(self.catalog.to_json() | {"mode": self.cfg.mode})

    @api.post("/v1/analyze", openapi_extra=api_schema.ANALYZE)
    async def analyze(self, request: Request) -> Response:
        """One video (multipart field ``video``, or JSON ``video_path``), some or all tasks.

        Form or JSON fields: ``tasks`` (list, comma-separated or ``all``), ``checkpoint`` (a
        name or ``auto``).
        """
        try:
            self._auth(request)
            with self._admitted():
                source, tasks, checkpoint = await self._parse_analyze(request)
                out = await self._with_timeout(self.analyze_source(source, tasks, checkpoint))
        except RequestError as exc:
            return _error(exc.status, exc.detail, exc.headers)
        return JSONResponse({"id": uuid.uuid4().hex[:12]} | out)

    @api.post("/v1/batch", openapi_extra=api_schema.BATCH)
    async def batch(self, request: Request) -> Response:
        """Many videos by path: a JSON list (or ``{"items": [...]}``) or JSONL of items
        ``{"id", "video_path", "tasks", "checkpoint"}``. Streams NDJSON lines as items finish,
        each ``{"id", "index", "result"}`` or ``{"id", "index", "error"}``, then ``{"summary"}``.
        """
        try:
            self._auth(request)
            items = await self._parse_batch(request)
        except RequestError as exc:
            return _error(exc.status, exc.detail, exc.headers)
        return StreamingResponse(self._stream(items), media_type="application/x-ndjson")

    async def _parse_batch(self, request: Request) -> list[Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
            raw = b"".join(
                [
                    c
                    async for c in limited_stream(
                        request.stream(),
                        int(self.cfg.limits.max_upload_mb * 2**20),
                        request.headers.get("content-length"),
                    )
                ]
            )
            items: list[Any] = []
            for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    items.append(RequestError(422, f"line {n}: invalid JSON ({exc.msg})"))
        elif ctype == "application/json":
            body = await self._read_json(request)
            items = body.get("items") if isinstance(body, dict) else body  # type: ignore[assignment]
            if not isinstance(items, list):
                raise RequestError(422, "body: expected a JSON list of items or {'items': [...]}")
        else:
            raise RequestError(
                415,
                f"content type {ctype or '(none)'}: send application/json or application/x-ndjson",
            )
        if not items:
            raise RequestError(422, "items: the batch is empty")
        if len(items) > self.cfg.limits.max_batch_items:
            raise RequestError(
                413,
                f"items: {len(items)} items, above the limit of {self.cfg.limits.max_batch_items}",
            )
        return items

    async def _one(self, index: int, item: Any) -> dict[str, Any]:
        ident = item.get("id", index) if isinstance(item, dict) else index
        try:
            if isinstance(item, RequestError):
                raise item
            if not isinstance(item, dict):
                raise RequestError(422, f"item {index}: expected an object with video_path")
            path = check_path(item.get("video_path"), self.cfg.limits.allowed_roots)
            out = await self._with_timeout(
                self.analyze_source(
                    VideoSource(path=path),
                    parse_tasks(item.get("tasks")),
                    parse_checkpoint(item.get("checkpoint")),
                )
            )
            return {"id": ident, "index": index, "result": out}
        except RequestError as exc:
            return {
                "id": ident,
                "index": index,
                "error": {"status": exc.status, "detail": exc.detail},
            }
        except Exception as exc:  # one item never fails the batch
            return {
                "id": ident,
                "index": index,
                "error": {"status": 500, "detail": f"{type(exc).__name__}: {exc}"[:500]},
            }

    async def _stream(self, items: list[Any]) -> AsyncIterator[bytes]:
        start = time.perf_counter()
        gate = asyncio.Semaphore(self.cfg.limits.batch_concurrency)

        async def run(i: int, item: Any) -> dict[str, Any]:
            async with gate:
                return await self._one(i, item)

        ok = 0
        for fut in asyncio.as_completed([run(i, it) for i, it in enumerate(items)]):
            line = await fut
            ok += "result" in line
            yield (json.dumps(line) + "\n").encode()
        summary = {
            "items": len(items),
            "succeeded": ok,
            "failed": len(items) - ok,
            "elapsed_s": round(time.perf_counter() - start, 3),
        }
        yield (json.dumps({"summary": summary}) + "\n").encode()

    # -- OpenAI-compatible chat ------------------------------------------------------------
    def _free_form_checkpoint(self) -> ServedCheckpoint:
        """Who answers a question that is no task prompt: configured, else the all-task
        checkpoint, else the baseline, else any."""
        chosen = self.cfg.openai.free_form_checkpoint
        cps = self.catalog.checkpoints
        if chosen in cps:
            return cps[chosen]
        for c in cps.values():
            if c.strategy == "heterogeneous":
                return c
        return cps.get(BASELINE) or next(iter(cps.values()))

    def _chat_route(self, req: openai_api.ChatRequest) -> tuple[str | None, ServedCheckpoint]:
        """(the task the text asks, or None for a free-form question; the checkpoint)."""
        task = self.task_of_prompt.get(openai_api.normalize_prompt(req.text))
        if req.model == "auto":
            if task is not None:
                try:
                    return task, self.catalog.route(task, "auto")
                except RouteError:
                    pass
            return None, self._free_form_checkpoint()
        chosen = self.catalog.checkpoints.get(req.model)
        if chosen is None:
            raise RequestError(
                404,
                f"model {req.model!r} not found; served: {[*self.catalog.names, 'auto']}",
                param="model",
            )
        return (task if task in chosen.tasks else None), chosen

    async def _chat_answer(self, req: openai_api.ChatRequest) -> dict[str, Any]:
        """Decode the clip, ask the routed checkpoint, and describe what answered."""
        task, c = self._chat_route(req)
        payload = {"data": req.source.data, "filename": req.source.filename,
                   "path": req.source.path, "sampling": req.sampling}  # fmt: skip
        clip = await self._call(
            lambda: self.decoder.decode.remote(self.groups[c.name], payload), "the video decoder"
        )
        if isinstance(clip, Failure):
            raise RequestError(clip.status, clip.detail, param="messages")
        prompt = c.prompts[task] if task else req.text
        q = Question(clip, task, prompt, generation=req.generation)
        ans = await self._call(lambda: self._model(c.name).answer.remote(q), f"checkpoint {c.name}")
        if ans.error:
            raise RuntimeError(ans.error)
        text, stopped = openai_api.apply_stop(ans.response, req.generation.stop)
        extra: dict[str, Any] = {"task": task, "checkpoint": c.name,
                                 "frames": len(clip.timestamps), "timestamps": clip.timestamps,
                                 "video": {"source": req.source.describe(), **clip.describe()}}  # fmt: skip
        if task:
            parsed = parse_answer(task, text, self.cfg.parse).to_json()
            extra |= {"value": parsed["value"], "parsed": parsed["parsed"]}
        visual = int(sum(clip.video.compression_mask))
        usage = {
            "prompt_tokens": ans.prompt_tokens,
            "completion_tokens": ans.completion_tokens,
            "total_tokens": ans.prompt_tokens + ans.completion_tokens,
            "visual_tokens": visual,
        }
        return {"model": c.name, "text": text, "finish": "stop" if stopped else ans.finish_reason,
                "usage": usage, "extra": extra}  # fmt: skip

    @api.post("/v1/chat/completions", openapi_extra=api_schema.CHAT_COMPLETIONS)
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completions with one video part (``video_url``: a ``data:`` URL or a
        ``file://`` path under an allowed root) and text: a task prompt is answered like
        ``/v1/analyze`` answers that task, other text is a free-form question. ``model``: a
        checkpoint, ``auto`` or ``baseline``; ``mm_processor_kwargs``: ``fps``, ``max_frames``."""
        limits, pre = self.cfg.limits, self.cfg.preprocess
        video_bytes = int(limits.max_upload_mb * 2**20)
        try:
            self._auth(request)
            with self._admitted():
                body = await self._read_json(
                    request,
                    limit=video_bytes * 4 // 3 + 2**20,  # base64: 4/3 of the video, plus JSON
                    what=f"the video may be at most {limits.max_upload_mb:g} MiB (above the "
                    f"{limits.max_upload_mb:g} MiB limit once base64-decoded)",
                )
                req = openai_api.parse_chat_request(
                    body, video_bytes, limits.allowed_roots, self.cfg.openai.max_tokens_limit,
                    (self.cfg.openai.min_fps, self.cfg.openai.max_fps),
                    (pre.min_frames, pre.max_frames),
                )  # fmt: skip
                out = await self._with_timeout(self._chat_answer(req))
        except RequestError as exc:
            return _openai_error(exc.status, exc.detail, exc.param, exc.headers)
        except Exception as exc:  # the model failed: a server error in OpenAI's shape
            return _openai_error(500, f"{type(exc).__name__}: {exc}"[:500], None)
        ident = openai_api.completion_id()
        if not req.stream:
            return JSONResponse(
                openai_api.completion(
                    ident, out["model"], out["text"], out["finish"], out["usage"], out["extra"]
                )
            )
        return StreamingResponse(
            _sse(ident, out, req.include_usage), media_type="text/event-stream"
        )

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        """The served checkpoints (and ``auto``) as OpenAI models, with their tasks."""
        try:
            self._auth(request)
        except RequestError as exc:
            return _openai_error(exc.status, exc.detail, None, exc.headers)
        return JSONResponse(openai_api.model_list(self.catalog.to_json(), self.created))

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        """A page to upload a video and see the answers on a timeline."""
        return HTMLResponse(PAGE.read_text())
