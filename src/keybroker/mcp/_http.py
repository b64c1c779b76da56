"""Streamable HTTP: the MCP endpoint behind agent bearer-token authentication.

Every HTTP request must carry ``Authorization: Bearer kbt_...`` of an agent identity; core's
token service checks it (checksum, hash lookup, expiry, revocation, disabled identity, CIDRs,
per-token rate limit) before the MCP layer sees a byte. Failures answer with the REST API's error
shape and codes (``{"error": {"code", "message"}}``, 401/403/429). An MCP session is bound to
the agent that opened it: the SDK's session manager answers 404 to another agent's requests.

:class:`McpHttpApp` is a plain ASGI app. Run it on its own (``keybroker mcp --transport http``,
where it handles the ASGI lifespan) or route it inside another app (``keybroker serve``, see
:func:`keybroker.mcp.install`): the session manager then starts with the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import partial
from typing import Any

import anyio.to_thread
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from keybroker.core._sessions import principal_identity
from keybroker.errors import AuthenticationError, KeybrokerError
from keybroker.mcp._auth import check_agent
from keybroker.mcp._server import PRINCIPAL_SCOPE_KEY, KeybrokerMCP

__all__ = ["AgentBearerAuth", "McpHttpApp", "security_for"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def security_for(host: str, allowed_hosts: tuple[str, ...] = ()) -> TransportSecuritySettings:
    """DNS-rebinding protection: the given Host values, or loopback names for a loopback bind."""
    if allowed_hosts:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=list(allowed_hosts), allowed_origins=[]
        )
    if host in _LOOPBACK:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


async def _send_json(
    send: Send, status: int, body: Mapping[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Receive) -> None:
    """Read the request body we refuse, so the connection stays usable."""
    while True:
        msg = await receive()
        if msg.get("type") != "http.request" or not msg.get("more_body"):
            return


def _bearer(scope: Scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == b"authorization":
            scheme, _, value = bytes(v).decode("latin-1").partition(" ")
            token = value.strip()
            if scheme.lower() == "bearer" and token:
                return token
    return None


class AgentBearerAuth:
    """ASGI middleware: authenticate the agent, or answer 401/403/429 without calling ``app``."""

    def __init__(self, app: ASGIApp, mcp: KeybrokerMCP) -> None:
        self.app = app
        self.mcp = mcp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        addr = client[0] if client else None
        tokens = self.mcp.services.tokens
        try:
            token = _bearer(scope)
            if token is None:
                await anyio.to_thread.run_sync(tokens.check_address, addr)
                raise AuthenticationError("no token: send Authorization: Bearer kbt_... (the agent's token)")
            principal = await anyio.to_thread.run_sync(
                partial(tokens.authenticate, token, address=addr, client="mcp:http")
            )
            check_agent(principal)
        except KeybrokerError as exc:
            await _drain(receive)
            headers: list[tuple[bytes, bytes]] = []
            if exc.status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="keybroker"'))
            retry = exc.details.get("retry_after")
            if retry is not None:
                headers.append((b"retry-after", str(max(1, round(float(retry)))).encode()))
            await _send_json(send, exc.status, {"error": {"code": exc.code, "message": exc.message}}, headers)
            return
        ident = principal_identity(principal) or principal.id
        inner = dict(scope)
        inner[PRINCIPAL_SCOPE_KEY] = principal
        # the SDK binds each MCP session to the (client_id, issuer, subject) that opened it
        inner["user"] = AuthenticatedUser(
            AccessToken(
                token=principal.attrs.get("token", ""), client_id=ident, scopes=[], subject=principal.id
            )
        )
        await self.app(inner, receive, send)


class McpHttpApp:
    """The MCP endpoint at ``path`` (plus optional ``mounts``, e.g. ``{"/gw": gateway}``, and
    ``/healthz``). Handles the ASGI lifespan when it is the top-level app; when routed inside
    another app it starts the session manager with the first request (call :meth:`aclose`, or
    :meth:`close_nowait` from a synchronous shutdown hook)."""

    def __init__(
        self,
        mcp: KeybrokerMCP,
        *,
        path: str | None = None,
        security: TransportSecuritySettings | None = None,
        mounts: Mapping[str, ASGIApp] | None = None,
        json_response: bool = False,
        stateless: bool = False,
    ) -> None:
        self.mcp = mcp
        s = mcp.settings
        self.path = (path or s.path).rstrip("/") or "/"
        self.manager = StreamableHTTPSessionManager(
            app=mcp.server,
            json_response=json_response,
            stateless=stateless,
            security_settings=security or security_for(s.host, s.allowed_hosts),
        )
        self.endpoint = AgentBearerAuth(StreamableHTTPASGIApp(self.manager), mcp)
        self.mounts = {k.rstrip("/"): v for k, v in (mounts or {}).items()}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ session manager
    async def start(self) -> None:
        if self._ready is None:
            self._ready, self._stop = asyncio.Event(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._ready, self._stop))
        await self._ready.wait()

    async def _run(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        async with self.manager.run():
            ready.set()
            await stop.wait()

    def close_nowait(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def aclose(self) -> None:
        self.close_nowait()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
            self._task = None
        for app in self.mounts.values():
            close = getattr(app, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await anyio.to_thread.run_sync(self.mcp.services.close)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await self.start()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path: str = scope["path"]
        if path == self.path or path == self.path + "/":
            await self.start()
            await self.endpoint(scope, receive, send)
            return
        for prefix, app in self.mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                await app({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
                return
        await _drain(receive)
        if path == "/healthz":
            await _send_json(send, 200, {"status": "ok"}, [])
            return
        await _send_json(send, 404, {"error": {"code": "not_found", "message": "no such path"}}, [])
