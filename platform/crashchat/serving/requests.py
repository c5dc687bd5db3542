"""Request checks that run before any work: limits, media types, paths, fields.

Every failure is a :class:`RequestError` carrying the HTTP status and a message that names the
field or limit; the router turns it into a JSON error response.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

VIDEO_TYPES = (
    "video/mp4",
    "video/quicktime",
    "video/x-msvideo",
    "video/x-matroska",
    "video/webm",
    "video/mpeg",
    "application/octet-stream",
)
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    return host in LOOPBACK or host.startswith("127.")


class ExposureError(ValueError):
    """An endpoint would be reachable from other machines without a token."""


def check_exposure(host: str, token_env: str) -> None:
    """Binding beyond loopback needs a bearer token in the environment variable ``token_env``.

    Raises:
        ExposureError: when ``host`` is not loopback and no token is set.
    """
    if not is_loopback(host) and not os.environ.get(token_env):
        raise ExposureError(
            f"host {host} is reachable from other machines: set a bearer token in "
            f"${token_env} (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


class RequestError(Exception):
    """A request the platform refuses; ``status`` is the HTTP status code."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.param = param  # the request field at fault (OpenAI's error "param")


@dataclass
class VideoSource:
    """Where a request's video is: uploaded bytes or a path under an allowed root."""

    data: bytes | None = None
    path: str | None = None
    filename: str = ""

    def describe(self) -> str:
        """For messages: the file name or path."""
        return self.path or self.filename or "upload"


def check_path(raw: Any, roots: list[str], field: str = "video_path") -> str:
    """A resolved path under one of ``roots``.

    Raises:
        RequestError: 422 when missing or not a string, 403 when outside the roots or with
            ``..``, 404 when the file does not exist.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise RequestError(422, f"{field}: a non-empty string path is required")
    if "\x00" in raw:  # the OS refuses it (ValueError, a 500 before; found by the API fuzzer)
        raise RequestError(422, f"{field}: a path cannot contain a NUL character")
    if ".." in PurePosixPath(raw).parts:
        raise RequestError(403, f"{field}: '..' is not allowed in paths")
    if not roots:
        raise RequestError(403, f"{field}: this server accepts no paths (no --allowed-root)")
    path = Path(raw)
    resolved = Path(os.path.realpath(path))
    allowed = [Path(os.path.realpath(r)) for r in roots]
    if not any(resolved == r or r in resolved.parents for r in allowed):
        raise RequestError(403, f"{field}: {raw} is outside the allowed roots")
    if not resolved.is_file():
        raise RequestError(404, f"{field}: {raw} does not exist")
    return str(resolved)


def check_media_type(content_type: str | None, filename: str) -> None:
    """Refuse an upload that is not a video by its declared type or its file name (415)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    suffix = Path(filename).suffix.lower()
    if ctype.startswith("video/") or (ctype in VIDEO_TYPES and suffix in VIDEO_SUFFIXES):
        return
    if ctype in ("", "application/octet-stream") and suffix in VIDEO_SUFFIXES:
        return
    raise RequestError(
        415,
        f"file {filename!r}: unsupported media type {ctype or '(none)'}; send a video "
        f"(video/*, or a {'/'.join(VIDEO_SUFFIXES)} file)",
    )


async def limited_stream(
    stream: AsyncIterator[bytes], limit_bytes: int, declared: str | None, what: str | None = None
) -> AsyncGenerator[bytes, None]:
    """``stream`` that stops with 413 once more than ``limit_bytes`` arrived.

    A ``Content-Length`` above the limit is refused before reading anything. ``what`` explains
    the limit in the message.
    """
    limit_mb = limit_bytes / 2**20
    why = f": {what}" if what else ""
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise RequestError(
            413, f"request body of {int(declared)} bytes is above {limit_mb:.3g} MiB{why}"
        )
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit_bytes:
            raise RequestError(413, f"request body is above the {limit_mb:.3g} MiB limit{why}")
        yield chunk


def parse_tasks(raw: Any, field: str = "tasks") -> list[str] | str:
    """A request's ``tasks``: a list of names, a comma-separated string, or ``all``.

    Raises:
        RequestError: 422 for any other type.
    """
    if raw is None or raw == "":
        return "all"
    if isinstance(raw, str):
        return "all" if raw.strip() == "all" else [t.strip() for t in raw.split(",") if t.strip()]
    if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        return "all" if raw == ["all"] else list(raw)
    raise RequestError(422, f"{field}: expected a list of task names or 'all'")


def parse_checkpoint(raw: Any, field: str = "checkpoint") -> str:
    """A request's ``checkpoint``: a name or ``auto`` (default)."""
    if raw is None or raw == "":
        return "auto"
    if not isinstance(raw, str):
        raise RequestError(422, f"{field}: expected a checkpoint name or 'auto'")
    return raw.strip()
