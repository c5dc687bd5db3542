"""The OpenAI chat-completions dialect of the endpoint: request checks and response shapes.

Video servers in this field (vLLM, SGLang, TensorRT-LLM) take video through the OpenAI chat API
as a content part ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}``
next to the text, with per-request sampling in ``mm_processor_kwargs`` (``fps``,
``max_frames``). This module turns such a request into what the router already knows (a video
source, a task or a free-form question, a checkpoint, generation settings) and the router's
answer back into OpenAI's shapes, so the official ``openai`` client, LangChain or LiteLLM work
unchanged. Everything here is plain data; the router does the work.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from crashchat.serving.requests import RequestError, VideoSource, check_path

VIDEO_PART_TYPES = ("video_url", "video")
DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
    504: "server_error",
}
ERROR_CODES = {
    401: "invalid_api_key",
    403: "forbidden",
    404: "model_not_found",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "overloaded",
    504: "timeout",
}


@dataclass
class Generation:
    """Per-request generation settings (equal settings share a dynamic batch)."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def key(self) -> tuple[Any, ...]:
        """What a batch must agree on."""
        return (self.max_tokens, self.temperature, self.top_p, self.seed, self.stop)


@dataclass
class ChatRequest:
    """A checked ``/v1/chat/completions`` request."""

    model: str
    text: str
    source: VideoSource
    generation: Generation
    stream: bool = False
    include_usage: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)  # fps / max_frames overrides


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": ERROR_CODES.get(status),
        }
    }


def _fail(status: int, message: str, param: str) -> RequestError:
    return RequestError(status, message, param=param)


def _user_content(messages: Any) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise _fail(422, "messages: a non-empty list of messages is required", "messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise _fail(422, "messages: no message with role 'user'", "messages")
    content = users[-1].get("content")  # earlier turns are context the model was not trained on
    if isinstance(content, str):
        raise _fail(
            422,
            "messages: the user message needs a video part ({'type': 'video_url', 'video_url': "
            "{'url': ...}}) next to its text",
            "messages",
        )
    if not isinstance(content, list):
        raise _fail(422, "messages: content must be a list of parts", "messages")
    return content


def _parts(messages: Any) -> tuple[str, str]:
    """(the video URL, the question text) of the last user message."""
    urls, texts = [], []
    for part in _user_content(messages):
        if not isinstance(part, dict):
            raise _fail(422, "messages: every content part must be an object", "messages")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind in VIDEO_PART_TYPES:
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise _fail(422, f"messages: {kind} needs a url", "messages")
            urls.append(url)
        else:
            raise _fail(
                422,
                f"messages: unsupported content part type {kind!r} (text and video_url are supported)",
                "messages",
            )
    if len(urls) != 1:
        raise _fail(422, f"messages: exactly one video part is needed, got {len(urls)}", "messages")
    text = " ".join(t.strip() for t in texts if t.strip())
    if not text:
        raise _fail(
            422, "messages: the user message has no text (a question or a task prompt)", "messages"
        )
    return urls[0], text


def video_source(url: str, max_bytes: int, roots: list[str]) -> VideoSource:
    """The video a URL names: a ``data:`` URL (size checked before decoding) or a ``file://``
    path under an allowed root. Other schemes are refused: the server never fetches URLs.

    Raises:
        RequestError: 413 too large, 415 not a video, 403 a refused scheme or path, 422 bad data.
    """
    if url.startswith("data:"):
        head = DATA_URL.match(url)
        if head is None or not head.group("b64"):
            raise _fail(
                422, "video_url: a data: URL must be base64 (data:video/mp4;base64,...)", "messages"
            )
        mime = (head.group("mime") or "").lower()
        if not (mime.startswith("video/") or mime == "application/octet-stream"):
            raise _fail(415, f"video_url: media type {mime or '(none)'} is not a video", "messages")
        payload = url[head.end() :]
        size = len(payload) * 3 // 4 - payload[-2:].count("=")
        if size > max_bytes:
            raise _fail(
                413,
                f"video_url: the video is {size / 2**20:.1f} MiB, above the {max_bytes / 2**20:g} MiB limit",
                "messages",
            )
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(422, "video_url: the data: URL is not valid base64", "messages") from None
        if not data:
            raise _fail(422, "video_url: the video is empty (0 bytes)", "messages")
        suffix = "." + mime.split("/")[-1] if mime.startswith("video/") else ".mp4"
        return VideoSource(data=data, filename=f"upload{suffix}")
    scheme = urlparse(url).scheme.lower()
    if scheme == "file":
        path = unquote(urlparse(url).path)
        return VideoSource(path=check_path(path, roots, field="video_url"))
    raise _fail(
        403,
        f"video_url: {scheme or 'this'} URLs are not fetched (the server makes no outbound "
        "requests); send the video as a data: URL or a file:// path under an allowed root",
        "messages",
    )


def _number(
    body: dict[str, Any], name: str, kind: type, low: float, high: float, default: Any
) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not float(value).is_integer())
    ):
        raise _fail(422, f"{name}: expected a {kind.__name__}", name)
    if not low <= value <= high:
        raise _fail(422, f"{name}: {value} is outside [{low:g}, {high:g}]", name)
    return kind(value)


def _sampling(
    body: dict[str, Any], fps_range: tuple[float, float], frames_range: tuple[int, int]
) -> dict[str, Any]:
    kwargs = body.get("mm_processor_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _fail(422, "mm_processor_kwargs: expected an object", "mm_processor_kwargs")
    unknown = sorted(set(kwargs) - {"fps", "max_frames"})
    if unknown:
        raise _fail(
            422,
            f"mm_processor_kwargs: unsupported keys {unknown} (fps, max_frames)",
            "mm_processor_kwargs",
        )
    out = {}
    if "fps" in kwargs:
        out["fps"] = _number(kwargs, "fps", float, *fps_range, None)
    if "max_frames" in kwargs:
        out["max_frames"] = _number(kwargs, "max_frames", int, *frames_range, None)
    return out


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw) and len(raw) <= 4:
        return tuple(s for s in raw if s)
    raise _fail(422, "stop: a string or a list of up to 4 strings", "stop")


def parse_chat_request(
    body: Any,
    max_video_bytes: int,
    roots: list[str],
    max_tokens_limit: int,
    fps_range: tuple[float, float],
    frames_range: tuple[int, int],
) -> ChatRequest:
    """Check a chat-completions body; every refusal names the field (OpenAI's ``param``).

    Raises:
        RequestError: with the status the endpoint uses for the problem.
    """
    if not isinstance(body, dict):
        raise _fail(422, "body: expected a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail(422, "model: a checkpoint name, 'auto' or 'baseline' is required", "model")
    n = body.get("n", 1)
    if n not in (None, 1):
        raise _fail(422, "n: only one choice per request is supported", "n")
    url, text = _parts(body.get("messages"))
    options = body.get("stream_options") or {}
    generation = Generation(
        max_tokens=_number(body, "max_completion_tokens", int, 1, max_tokens_limit, None)
        or _number(body, "max_tokens", int, 1, max_tokens_limit, None),
        temperature=_number(body, "temperature", float, 0.0, 2.0, 0.0),
        top_p=_number(body, "top_p", float, 0.0, 1.0, 1.0) or 1.0,
        seed=_number(body, "seed", int, -(2**63), 2**63 - 1, None),
        stop=_stop(body.get("stop")),
    )
    return ChatRequest(
        model=model,
        text=text,
        source=video_source(url, max_video_bytes, roots),
        generation=generation,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        sampling=_sampling(body, fps_range, frames_range),
    )


def normalize_prompt(text: str) -> str:
    """Whitespace-insensitive form of a prompt, to recognise a task's prompt in a request."""
    return " ".join(text.split())


def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop string; True when one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


# -- responses ----------------------------------------------------------------------------------
def completion_id() -> str:
    """A fresh ``chatcmpl-`` id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    ident: str, model: str, content: str, finish: str, usage: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    """A ``chat.completion`` object (plus the ``crashchat`` extension)."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
        "crashchat": extra,
    }


def chunk(
    ident: str, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream."""
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def stream_pieces(text: str) -> list[str]:
    """The answer cut into word-sized pieces for streaming; they concatenate to ``text``."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


def model_list(catalog_json: dict[str, Any], created: int) -> dict[str, Any]:
    """``GET /v1/models``: the served checkpoints (and ``auto``) in OpenAI's list shape."""
    data = [
        {
            "id": c["name"],
            "object": "model",
            "created": created,
            "owned_by": "crashchat",
            "crashchat": {
                "tasks": c["tasks"],
                "strategy": c["strategy"],
                "base_model": c["base_model"],
            },
        }
        for c in catalog_json["checkpoints"]
    ]
    data.append(
        {
            "id": "auto",
            "object": "model",
            "created": created,
            "owned_by": "crashchat",
            "crashchat": {"tasks": catalog_json["tasks"], "routes": catalog_json["auto"]},
        }
    )
    return {"object": "list", "data": data}
