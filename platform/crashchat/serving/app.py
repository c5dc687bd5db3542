"""The Serve application: one FastAPI router as the only HTTP ingress, in front of a decoder
deployment and one autoscaled replica group per checkpoint (or one multiplexed deployment).

``build_app(args)`` is the application builder Serve's own tooling imports
(``import_path: crashchat.serving.app:build_app``); ``crashchat serve`` calls it too.
"""

# No ``from __future__ import annotations``: FastAPI must see real types on the routes.
import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from crashchat.config import ServeConfig
from crashchat.data.answer_parsing import parse_answer
from crashchat.data.tasks import get_task
from crashchat.models.checkpoint import PROCESSOR_DIR, is_checkpoint
from crashchat.serving.catalog import (
    BASELINE,
    Catalog,
    RouteError,
    ServedCheckpoint,
    deployment_name,
)
from crashchat.serving.clip_inputs import ClipInputs
from crashchat.serving.deployments import (
    Answer,
    CheckpointModel,
    Decoder,
    Failure,
    MultiplexedModel,
)
from crashchat.serving.generation import Question
from crashchat.serving.requests import (
    RequestError,
    VideoSource,
    check_media_type,
    check_path,
    limited_stream,
    parse_checkpoint,
    parse_tasks,
)

MODEL_META = "crashchat_model.json"
PAGE = Path(__file__).with_name("static") / "index.html"
RETRYABLE = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "WorkerCrashedError")

api = FastAPI(
    title="CrashChat",
    description="Traffic-crash video analysis with CrashChat checkpoints on Ray Serve.",
    version="1",
)


def processor_dir(c: ServedCheckpoint) -> str:
    """Folder of the processor a checkpoint was trained with (the base's for the baseline)."""
    return str(Path(c.path) / PROCESSOR_DIR) if is_checkpoint(c.path) else c.path


def model_frame_size(c: ServedCheckpoint) -> int | None:
    """Square frame size of tiny models (from the base's platform metadata), else None."""
    meta = Path(c.base_model) / MODEL_META
    return json.loads(meta.read_text()).get("frame_size") if meta.is_file() else None


def processor_group(c: ServedCheckpoint) -> str:
    """Checkpoints whose processors agree share one decoded clip: a hash of the settings."""
    digest = hashlib.sha1(str(model_frame_size(c)).encode())
    folder = Path(processor_dir(c))
    for name in (
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "detail": detail}}, status, headers=headers)


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
        self.decoder = decoder
        self.models = models
        self.multiplexed = multiplexed
        self.groups = {n: processor_group(c) for n, c in self.catalog.checkpoints.items()}
        self.token = os.environ.get(self.cfg.token_env) or None

    # -- checks ---------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.token is None:
            return
        got = request.headers.get("authorization", "")
        if got != f"Bearer {self.token}":
            raise RequestError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def _read_json(self, request: Request) -> Any:
        body = b"".join(
            [
                c
                async for c in limited_stream(
                    request.stream(),
                    int(self.cfg.limits.max_upload_mb * 2**20),
                    request.headers.get("content-length"),
                )
            ]
        )
        try:
            return json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            raise RequestError(
                422, f"body: invalid JSON ({exc.msg} at line {exc.lineno})"
            ) from None

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
        """Await a handle call; one retry when the replica died under it."""
        from ray.serve.exceptions import BackPressureError

        for attempt in (1, 2):
            try:
                return await make()
            except BackPressureError:
                raise RequestError(
                    503,
                    f"{what} is at capacity; retry later",
                    {"Retry-After": str(self.cfg.limits.retry_after_s)},
                ) from None
            except Exception as exc:
                if attempt == 1 and any(n in type(exc).__name__ for n in RETRYABLE):
                    await asyncio.sleep(0.5)
                    continue
                raise
        raise AssertionError("unreachable")

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
        payload = {"data": source.data, "filename": source.filename, "path": source.path}
        clips: dict[str, ClipInputs] = {}
        decode_started = time.perf_counter()
        for group in sorted({self.groups[c.name] for c in routes.values()}):
            got = await self._call(
                lambda g=group: self.decoder.decode.remote(g, payload), "the video decoder"
            )
            if isinstance(got, Failure):
                raise RequestError(got.status, got.detail)
            clips[group] = got
        decode_wait_ms = (time.perf_counter() - decode_started) * 1000

        async def ask(task: str, c: ServedCheckpoint) -> Answer:
            q = Question(clips[self.groups[c.name]], task, c.prompts[task])
            return await self._call(
                lambda: self._model(c.name).answer.remote(q), f"checkpoint {c.name}"
            )

        models_started = time.perf_counter()
        answers = await asyncio.gather(*(ask(t, c) for t, c in routes.items()))
        models_wait_ms = (time.perf_counter() - models_started) * 1000
        results: dict[str, dict[str, Any]] = {}
        for (task, c), ans in zip(routes.items(), answers, strict=True):
            entry: dict[str, Any] = {
                "checkpoint": c.name,
                "kind": str(get_task(task).kind),
                "model_ms": round(ans.model_ms, 1),
                "batch_size": ans.batch_size,
            }
            if ans.error:
                entry["error"] = ans.error
            else:
                parsed = parse_answer(task, ans.response).to_json()
                entry |= {
                    "answer": ans.response,
                    "value": parsed["value"],
                    "parsed": parsed["parsed"],
                }
            results[task] = entry
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

    @api.post("/v1/analyze")
    async def analyze(self, request: Request) -> Response:
        """One video (multipart field ``video``, or JSON ``video_path``), some or all tasks.

        Form or JSON fields: ``tasks`` (list, comma-separated or ``all``), ``checkpoint`` (a
        name or ``auto``).
        """
        try:
            self._auth(request)
            source, tasks, checkpoint = await self._parse_analyze(request)
            out = await self._with_timeout(self.analyze_source(source, tasks, checkpoint))
        except RequestError as exc:
            return _error(exc.status, exc.detail, exc.headers)
        return JSONResponse({"id": uuid.uuid4().hex[:12]} | out)

    @api.post("/v1/batch")
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

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        """A page to upload a video and see the answers on a timeline."""
        return HTMLResponse(PAGE.read_text())


def _deployment_options(
    settings: Any, name: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    actor = settings.ray_actor_options()
    if env:
        # Serve reads these at import in the replica process; the job's env_vars still apply.
        actor["runtime_env"] = {"env_vars": dict(env)}
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": actor,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "autoscaling_config": settings.autoscaling.to_serve(),
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 5,
    }
    return opts


def _deployment(cls: type) -> Any:
    """``serve.deployment`` of a plain class (options are applied by the caller)."""
    return serve.deployment(cls)


def build_application(catalog: Catalog, cfg: ServeConfig) -> Any:
    """The bound Serve application for ``catalog`` under ``cfg``."""
    cfg_json = cfg.model_dump(mode="json")
    env = cfg.replica_env()
    groups: dict[str, dict[str, Any]] = {}
    for c in catalog.checkpoints.values():
        groups.setdefault(
            processor_group(c), {"dir": processor_dir(c), "frame_size": model_frame_size(c)}
        )
    decoder = (
        _deployment(Decoder)
        .options(**_deployment_options(cfg.decoder, "decoder", env))
        .bind(cfg_json, groups)
    )
    models: dict[str, Any]
    if cfg.mode == "multiplexed":
        bases = {c.base_model for c in catalog.checkpoints.values()}
        if len(bases) != 1:
            raise ValueError(
                f"multiplexed mode needs one base model; the checkpoints use {sorted(bases)}"
            )
        paths = {n: c.path for n, c in catalog.checkpoints.items() if n != BASELINE}
        models = {
            "multiplexed": _deployment(MultiplexedModel)
            .options(**_deployment_options(cfg.model, "model_multiplexed", env))
            .bind(bases.pop(), paths, cfg_json)
        }
    else:
        models = {
            name: _deployment(CheckpointModel)
            .options(**_deployment_options(cfg.replica(name), deployment_name(name), env))
            .bind(name, c.path, cfg_json)
            for name, c in catalog.checkpoints.items()
        }
    return (
        _deployment(Router)
        .options(**_deployment_options(cfg.router, "router", env))
        .bind(catalog.to_args(), cfg_json, decoder, models, cfg.mode == "multiplexed")
    )


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files.

    ``args``: ``config`` (a ServeConfig mapping, or ``config_path``), and either ``catalog``
    (as written by ``crashchat serve config``), ``checkpoints`` (a folder, with optional
    ``base_model``), or ``registry`` (an MLflow experiment, with optional ``tracking_uri``).
    """
    from crashchat.config import load_config
    from crashchat.serving.catalog import build_catalog_from_dir, build_catalog_from_registry
    from crashchat.serving.lifecycle import check_exposure

    if "config_path" in args:
        cfg = load_config(args["config_path"], ServeConfig)
    else:
        cfg = ServeConfig.model_validate(args.get("config") or {})
    check_exposure(cfg)  # declarative deployments obey the same rule as `serve up`
    if "catalog" in args:
        catalog = Catalog.from_args(args["catalog"])
    elif "checkpoints" in args:
        catalog = build_catalog_from_dir(
            args["checkpoints"], args.get("base_model"), prompts=cfg.prompts
        )
    elif "registry" in args:
        catalog = build_catalog_from_registry(
            args["registry"],
            args.get("download_root", "/tmp/crashchat-serve-models"),
            args.get("tracking_uri"),
            args.get("base_model"),
            prompts=cfg.prompts,
        )
    else:
        raise ValueError("build_app needs 'catalog', 'checkpoints' or 'registry' in its args")
    return build_application(catalog, cfg)
