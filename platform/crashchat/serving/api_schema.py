"""The request and response shapes the HTTP API publishes in its OpenAPI document.

The routes read their bodies themselves (to stop reading at the upload limit), so FastAPI cannot
infer these; they are declared here, for ``/docs``, for generated clients, and for the API fuzzer
(schemathesis) that checks the endpoint against them.
"""

from __future__ import annotations

from typing import Any

TASKS = {
    "oneOf": [
        {"type": "string", "description": "'all', or comma-separated task keys"},
        {"type": "array", "items": {"type": "string"}},
    ]
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "detail"],
            "properties": {"status": {"type": "integer"}, "detail": {"type": "string"}},
        }
    },
}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ANALYSIS = {
    "type": "object",
    "required": ["id", "video", "tasks", "results", "report", "timings"],
    "properties": {
        "id": {"type": "string"},
        "video": {"type": "object"},
        "tasks": {"type": "array", "items": {"type": "string"}},
        "results": {"type": "object"},
        "report": {"type": "object"},
        "timings": {"type": "object"},
    },
}
ANALYZE_JSON = {
    "type": "object",
    "required": ["video_path"],
    "properties": {
        "video_path": {"type": "string", "description": "A video under an allowed root."},
        "tasks": TASKS,
        "checkpoint": {"type": "string", "description": "A checkpoint name, or 'auto'."},
    },
}
BATCH_ITEM = {
    "type": "object",
    "required": ["video_path"],
    "properties": {"id": {}, **ANALYZE_JSON["properties"]},  # type: ignore[dict-item]
}
CHAT = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string"},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {
                                        "type": {"type": "string"},
                                        "text": {"type": "string"},
                                        "video_url": {
                                            "type": "object",
                                            "properties": {"url": {"type": "string"}},
                                        },
                                    },
                                },
                            },
                        ]
                    },
                },
            },
        },
        "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
        "stream": {"type": "boolean"},
        "mm_processor_kwargs": {"type": "object"},
    },
}


def _responses(
    ok: dict[str, Any], error: dict[str, Any], media: str = "application/json"
) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "OK", "content": {media: {"schema": ok}}}}
    for code in ("401", "403", "404", "413", "415", "422", "503", "504"):
        out[code] = {"description": "refused", "content": {"application/json": {"schema": error}}}
    return out


ANALYZE = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ANALYZE_JSON},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "tasks": {"type": "string"},
                        "checkpoint": {"type": "string"},
                    },
                }
            },
        },
    },
    "responses": _responses(ANALYSIS, ERROR),
}
BATCH = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": BATCH_ITEM},
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": BATCH_ITEM}},
                        },
                    ]
                }
            }
        },
    },
    "responses": _responses({"type": "string"}, ERROR, "application/x-ndjson"),
}
CHAT_COMPLETIONS = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT}}},
    "responses": _responses(
        {"type": "object", "required": ["id", "object", "model", "choices"]}, OPENAI_ERROR
    ),
}
CHAT_COMPLETIONS["responses"]["200"]["content"]["text/event-stream"] = {
    "schema": {"type": "string"}
}
