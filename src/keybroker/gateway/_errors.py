"""Error bodies in the shape the agent's SDK expects, so its own exception types fire.

* ``openai`` (also Stripe and generic upstreams): ``{"error": {"message", "type", "code", "param"}}``
* ``anthropic``: ``{"type": "error", "error": {"type", "message", "code"}}``
* ``google`` (Gemini): ``{"error": {"code": <status>, "message", "status", "details"}}``

Every answer also carries ``x-keybroker-error: <stable code>`` and ``x-should-retry`` (both SDKs
obey it), so a client never retries what cannot succeed (a revoked token, a spent budget).
Messages are keybroker's own text: never upstream exception text, never a URL.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["error_body", "error_response", "sse_error_event"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(style: str, status: int, code: str, message: str) -> dict[str, Any]:
    if style == "anthropic":
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message, "code": code},
        }
    if style == "google":
        return {
            "error": {
                "code": status,
                "message": message,
                "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
                "details": [{"reason": code, "domain": "keybroker"}],
            }
        }
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "code": code,
            "param": None,
        }
    }


def error_response(
    style: str,
    status: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
    should_retry: bool = False,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(error_body(style, status, code, message), separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-keybroker-error", code.encode()),
        (b"x-should-retry", b"true" if should_retry else b"false"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    return status, headers, body


def sse_error_event(style: str, status: int, code: str, message: str) -> bytes:
    """An error inside an already-started event stream (both SDKs raise on it)."""
    data = json.dumps(error_body(style, status, code, message), separators=(",", ":"))
    if style == "anthropic":
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()
