"""Errors on the wire, in two shapes.

keybroker's own API answers ``{"error": {"code", "message", "details"}}`` with the status of the
error class; the Vault-compatible routes answer ``{"errors": ["..."]}`` with the status Vault
would use (a bad token is 403 there, a check-and-set conflict 400), plus the stable code in the
``X-Keybroker-Error`` header. Nothing here ever echoes a request body: validation errors name the
field and the problem, never the input.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from keybroker.errors import (
    AuthenticationError,
    CasMismatch,
    Conflict,
    InvalidInput,
    KeybrokerError,
    NotFound,
    PermissionDenied,
)

__all__ = ["ERROR_RESPONSES", "install_error_handlers", "is_vault_route", "vault_error", "vault_status"]

log = logging.getLogger("keybroker.server")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
#: documented on every route, so clients (and schemathesis) know the error shape
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": desc, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, desc in (
        (400, "invalid input (stable code in error.code)"),
        (401, "missing, invalid, expired or revoked token"),
        (403, "permission denied"),
        (404, "not found"),
        (409, "conflict (check-and-set, already exists, deleted)"),
        (429, "rate limited or locked out"),
        (503, "sealed, not initialised, store or audit unavailable"),
    )
}


def vault_status(exc: KeybrokerError) -> int:
    """The status Vault gives for the same situation."""
    if isinstance(exc, AuthenticationError | PermissionDenied):
        return 403
    if isinstance(exc, CasMismatch | InvalidInput):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 400
    return exc.status


def vault_error(exc: KeybrokerError, status: int | None = None) -> JSONResponse:
    msg = exc.message
    if isinstance(exc, AuthenticationError | PermissionDenied):
        msg = f"permission denied: {exc.message}" if exc.message != "permission denied" else msg
    headers = {"X-Keybroker-Error": exc.code}
    retry = exc.details.get("retry_after") if exc.details else None
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(float(retry) + 0.999)))
    return JSONResponse({"errors": [msg]}, status_code=status or vault_status(exc), headers=headers)


def is_vault_route(request: Request) -> bool:
    route = request.scope.get("route")
    name = getattr(route, "name", "") or ""
    return name.startswith("vault_")


def keybroker_error(exc: KeybrokerError) -> JSONResponse:
    headers: dict[str, str] = {}
    retry = exc.details.get("retry_after") if exc.details else None
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(float(retry) + 0.999)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="keybroker"'
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def _clean_validation(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for e in errors[:20]:
        loc = [str(x) for x in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", "invalid"))[:200], "type": str(e.get("type", ""))})
    return out


def install_error_handlers(app: Any) -> None:
    async def on_keybroker(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeybrokerError)
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.code, type(exc).__name__)
        return vault_error(exc) if is_vault_route(request) else keybroker_error(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = _clean_validation(exc.errors())
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(x for x in first["loc"] if x not in ("body",)) or "request"
        err = InvalidInput(f"invalid {where}: {first['msg']}", errors=details)
        return vault_error(err) if is_vault_route(request) else keybroker_error(err)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}.get(
            exc.status_code, "http_error"
        )
        message = {404: "no such endpoint", 405: "method not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        if request.url.path.startswith("/v1/") and is_vault_route(request):
            return JSONResponse({"errors": [message]}, status_code=exc.status_code, headers=exc.headers)
        return JSONResponse(
            {"error": {"code": code, "message": message}}, status_code=exc.status_code, headers=exc.headers
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # never the exception text: it may hold anything
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        log.error("unexpected %s at %s on %s", type(exc).__name__, where, request.method)
        if is_vault_route(request):
            return JSONResponse({"errors": ["internal error"]}, status_code=500)
        return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)

    app.add_exception_handler(KeybrokerError, on_keybroker)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
