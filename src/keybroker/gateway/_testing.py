"""A local stand-in for provider APIs, and a way to run ASGI apps on a free port in a thread.

Used by the gateway's tests and benchmark: nothing reaches the internet. :class:`FakeUpstream`
speaks enough of the OpenAI (``/v1/chat/completions``, ``/v1/models``) and Anthropic
(``/v1/messages``) wire formats for the official SDKs, checks that every request carries one of
the real keys it was given (and never a proxy token), and can misbehave on request: the
``model`` field picks a behaviour (``slow``, ``slow-first-token``, ``broken-stream``,
``error-500``, ``echo-key``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

from keybroker.core._access_requests import AccessPolicy, AccessRequestService, MemoryNotifier
from keybroker.core._agents import ToolRegistry
from keybroker.core._identity import IdentityService
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.core._proxy_tokens import ProxyTokenService
from keybroker.core._secrets import SecretService
from keybroker.core._sessions import SessionService
from keybroker.core._tokens import TokenService
from keybroker.core._vault import Vault

__all__ = ["AccessStack", "FakeUpstream", "Seen", "ServerThread"]

AsgiScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class Seen:
    method: str
    path: str
    query: str
    key: str | None
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    """``keys``: the real keys it accepts. ``limited``: keys that get 429. ``delay``: seconds for
    the slow behaviours. ``chunks``: stream length. ``record``: keep every request (off for
    benchmarks)."""

    keys: set[str]
    limited: set[str] = field(default_factory=set)
    delay: float = 2.0
    chunks: int = 5
    chunk_delay: float = 0.0
    record: bool = True
    seen: list[Seen] = field(default_factory=list)
    proxy_token_seen: bool = False
    broken_closed: threading.Event = field(default_factory=threading.Event)
    #: set when a client went away in the middle of a streamed answer
    stream_abandoned: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode()
        key = self._key(headers, query)
        if any("kbp_" in v for v in headers.values()) or "kbp_" in query or b"kbp_" in body:
            self.proxy_token_seen = True
        path = scope["path"]
        if self.record:
            self.seen.append(Seen(scope["method"], path, query, key, headers, body))
        anthropic = path.endswith("/messages")
        if key is None or key not in self.keys:
            shown = key or ""
            if anthropic:
                return await _json(
                    send, 401, _anth_error("authentication_error", f"invalid x-api-key {shown}")
                )
            return await _json(
                send,
                401,
                {
                    "error": {
                        "message": f"Incorrect API key provided: {shown}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
            )
        if key in self.limited:
            extra = [(b"retry-after", b"1")]
            if anthropic:
                return await _json(send, 429, _anth_error("rate_limit_error", "slow down"), extra)
            return await _json(
                send,
                429,
                {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
                extra,
            )
        req: dict[str, Any] = json.loads(body) if body.startswith(b"{") else {}
        model = str(req.get("model", ""))
        if model == "slow":
            await asyncio.sleep(self.delay)
        if model == "error-500":
            if anthropic:
                return await _json(send, 500, _anth_error("api_error", "upstream exploded"))
            return await _json(send, 500, {"error": {"message": "upstream exploded", "type": "server_error"}})
        if path.endswith("/models") and scope["method"] == "GET":
            return await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"id": "gpt-test", "object": "model", "created": 0, "owned_by": "test"}],
                },
            )
        echo = key if model == "echo-key" else None
        if req.get("stream") and (anthropic or path.endswith("/chat/completions")):
            return await self._watched(receive, send, req, model, echo, anthropic)
        if path.endswith("/chat/completions"):
            return await _json(send, 200, _completion(echo), [(b"x-echo", echo.encode())] if echo else [])
        if anthropic:
            return await _json(send, 200, _message(echo), [(b"x-echo", echo.encode())] if echo else [])
        return await _json(send, 404, {"error": {"message": "no such path", "type": "invalid_request_error"}})

    async def _watched(
        self, receive: Receive, send: Send, req: dict[str, Any], model: str, echo: str | None, anthropic: bool
    ) -> None:
        """Stream, and notice at once if the client (the gateway) goes away mid-stream."""
        work = asyncio.ensure_future(
            self._anthropic_stream(send, model, echo)
            if anthropic
            else self._openai_stream(send, req, model, echo)
        )

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    if not work.done():
                        self.stream_abandoned.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({watcher, work}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()
            else:
                work.cancel()
        finally:
            watcher.cancel()

    @staticmethod
    def _key(headers: dict[str, str], query: str) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        if auth.lower().startswith("basic "):
            return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        for h in ("x-api-key", "x-goog-api-key"):
            if h in headers:
                return headers[h]
        for part in query.split("&"):
            if part.startswith("key="):
                return part[4:]
        return None

    async def _openai_stream(self, send: Send, req: dict[str, Any], model: str, echo: str | None) -> None:
        await _start_sse(send, [(b"x-echo", echo.encode())] if echo else [])
        if model == "slow-first-token":
            await asyncio.sleep(self.delay)
        words = [f"tok{i} " for i in range(self.chunks)]
        if echo:
            words.insert(1, echo)
        for i, w in enumerate(words):
            if model == "broken-stream" and i == 2:
                self.broken_closed.set()
                raise RuntimeError("upstream broke off")
            chunk = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gpt-test",
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
            }
            await _sse(send, json.dumps(chunk).encode())
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
            await _sse(
                send,
                json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "gpt-test",
                        "choices": [],
                        "usage": usage,
                    }
                ).encode(),
            )
        await _sse(send, b"[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _anthropic_stream(self, send: Send, model: str, echo: str | None) -> None:
        await _start_sse(send, [])
        if model == "slow-first-token":
            await asyncio.sleep(self.delay)

        async def ev(name: str, data: dict[str, Any]) -> None:
            body = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

        msg = _message(None)
        msg["content"] = []
        msg["usage"] = {"input_tokens": 11, "output_tokens": 1}
        await ev("message_start", {"type": "message_start", "message": msg})
        await ev(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        words = [f"tok{i} " for i in range(self.chunks)]
        if echo:
            words.insert(1, echo)
        for i, w in enumerate(words):
            if model == "broken-stream" and i == 2:
                self.broken_closed.set()
                raise RuntimeError("upstream broke off")
            await ev(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
            )
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        await ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        )
        await ev("message_stop", {"type": "message_stop"})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _anth_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _completion(echo: str | None) -> dict[str, Any]:
    text = "hello from upstream" + (f" {echo}" if echo else "")
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def _message(echo: str | None) -> dict[str, Any]:
    text = "hello from upstream" + (f" {echo}" if echo else "")
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 6, "output_tokens": 4},
    }


async def _json(send: Send, status: int, obj: Any, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _start_sse(send: Send, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _sse(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})


class ServerThread:
    """Run an ASGI app with uvicorn on 127.0.0.1 and a free port, in a thread of its own."""

    def __init__(
        self, app: Any, *, lifespan: Literal["auto", "on", "off"] = "auto", loop: str = "asyncio", **kw: Any
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="none",
            lifespan=lifespan,
            loop=loop,
            access_log=False,
            timeout_graceful_shutdown=2,
            **kw,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class AccessStack:
    """The agent-access services over one vault, as a server builds them (for tests and bench)."""

    vault: Vault
    secrets: SecretService
    sessions: SessionService
    tokens: ProxyTokenService
    tools: ToolRegistry
    requests: AccessRequestService
    identities: IdentityService
    notifier: MemoryNotifier

    @classmethod
    def build(cls, vault: Vault, *, policy: AccessPolicy | None = None) -> AccessStack:
        secrets = SecretService(vault)
        sessions = SessionService(secrets)
        tokens = ProxyTokenService(sessions)
        tools = ToolRegistry(sessions)
        notifier = MemoryNotifier()
        requests = AccessRequestService(tools, notifier=notifier, policy=policy)
        identities = IdentityService(vault, TokenService(vault))
        return cls(vault, secrets, sessions, tokens, tools, requests, identities, notifier)

    def agent(self, admin: Principal, name: str = "bot") -> Principal:
        """A new agent identity, and the principal its login token gives."""
        ident = self.identities.create(admin, name, "agent")
        return Principal(
            id=f"default/{name}",
            kind="agent",
            client="test",
            attrs={"org": "default", "identity_id": ident.id},
        )

    def put_key(
        self,
        admin: Principal,
        name: str,
        value: str,
        *,
        provider: str,
        base_url: str | None = None,
        risk: str = "low",
        scope: Scope | None = None,
        **custom: str,
    ) -> None:
        md = {k.replace("_", "."): v for k, v in custom.items()}
        if base_url:
            md["gateway.base_url"] = base_url
        self.secrets.put(
            admin, scope or Scope(), name, value, provider=provider, risk=risk, custom_metadata=md
        )

    def grant(
        self,
        admin: Principal,
        agent: Principal,
        names: list[str],
        *,
        tool: str = "tool",
        duration_s: int = 600,
        budget: dict[str, int] | None = None,
        max_risk: str = "medium",
    ) -> str:
        """Register a tool allowing ``names`` (default project, dev) and get an auto-approved
        session for them. Returns the session id."""
        self.tools.register(
            admin,
            agent.attrs["identity_id"],
            tool,
            allowed_secrets=[f"default/{n}" for n in names],
            environments=["dev"],
            max_risk=max_risk,
            max_session_s=max(duration_s, 60),
            budget=budget,
        )
        req = self.requests.request(
            agent, tool, [f"default/dev/{n}" for n in names], justification="test", duration_s=duration_s
        )
        assert req.session_id is not None, req.policy
        return req.session_id
