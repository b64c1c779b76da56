"""The gateway: swaps a proxy token for the real key on the way to the upstream, and only there.

Request path (``/gw`` when mounted in ``keybroker serve``; the root when standalone)::

    /<route>/<upstream path>      route = the provider (openai, anthropic, gemini, stripe, generic)

so an SDK's base URL is ``http://127.0.0.1:8270/gw/openai/v1`` or ``.../gw/anthropic``. For each
request the gateway

1. finds the proxy token (``Authorization: Bearer``/``Basic``, ``x-api-key``, ``x-goog-api-key``,
   ``api-key`` or the ``key`` query parameter) and verifies it (cached for ``recheck_s``; an
   in-process revocation drops it at once);
2. refuses a token used toward any upstream other than its secret's (``wrong_upstream``);
3. applies the token's budget (requests, requests per minute, model tokens);
4. reads the key through ``SecretService.get(..., permission="use")`` as the session's principal
   (audited; reused for ``value_ttl_s``) - the gateway adds no access rule of its own;
5. strips the proxy token and hop-by-hop headers, puts the key where the upstream expects it and
   forwards over one shared ``httpx.AsyncClient`` (pooled connections, no redirects, no
   environment proxies);
6. streams the answer back as it comes (SSE event by event, chunked bodies chunk by chunk), with
   the key redacted if the upstream echoes it, keep-alive comments while an event stream is silent,
   and the upstream closed the moment the client goes away;
7. records the use (audit record + counters, group-committed by :class:`UseRecorder`).

A pool secret (``gateway.pool=lines``) spreads requests over its keys round-robin and fails over
to the next key when one answers 429 or 401/403; a failing key rests for ``key_cooldown_s``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import anyio
import httpx

from keybroker.core._access_errors import (
    BudgetExhausted,
    ProxyTokenExpired,
    ProxyTokenRevoked,
    WrongUpstream,
)
from keybroker.core._principal import Principal
from keybroker.core._providers import PROVIDERS, Upstream, upstream_for
from keybroker.core._proxy_tokens import PROXY_TOKEN_PREFIX, ProxyGrant, ProxyTokenService
from keybroker.core._secrets import ChangeEvent, SecretService
from keybroker.core._sessions import Revocation, SessionAuthorizer
from keybroker.errors import AuditUnavailable, KeybrokerError, PermissionDenied
from keybroker.gateway._errors import error_response, sse_error_event
from keybroker.gateway._masking import LineMasker, mask_bytes, mask_headers
from keybroker.gateway._transport import LeanPool
from keybroker.gateway._usage import UsageScanner, UseRecord, UseRecorder

__all__ = ["Gateway", "GatewayConfig"]

log = logging.getLogger("keybroker.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"accept-encoding",
    }
)
# request headers that may carry the proxy token (or any other credential): never forwarded
_AUTH_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})
_RESP_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"content-encoding",
    }
)
_QUERY_TOKEN_PARAMS = ("key", "api_key", "api-key")
_FAILOVER_STATUSES = frozenset({401, 403, 429})
_SSE = b"text/event-stream"
_PREFIX = PROXY_TOKEN_PREFIX.encode()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    connect_timeout: float = 10.0
    #: seconds without a byte from the upstream (first headers included) before giving up: 504
    read_timeout: float = 300.0
    write_timeout: float = 60.0
    pool_timeout: float = 30.0
    max_connections: int = 1000
    max_keepalive_connections: int = 200
    #: an SSE comment is sent when an event stream is silent this long (None: never)
    keepalive_interval: float | None = 15.0
    #: for a streaming request (``"stream": true``), answer 200 + event stream and send keep-alive
    #: comments if the upstream has not answered within keepalive_interval (slow first token)
    early_stream_headers: bool = True
    max_request_body: int = 32 << 20
    #: non-event-stream answers up to this size (with a Content-Length) are read whole and sent at once
    buffer_response_below: int = 1 << 20
    value_ttl_s: float = 60.0
    recheck_s: float = 1.0
    key_cooldown_s: float = 30.0
    audit_flush_interval: float = 0.05
    audit_max_backlog: int = 10_000
    #: the lean HTTP/1.1 transport (httptools) instead of httpx's default (httpcore, h11)
    lean_transport: bool = True


@dataclass(slots=True)
class _CachedGrant:
    grant: ProxyGrant
    checked: float


@dataclass(slots=True)
class _KeySet:
    upstream: Upstream
    keys: list[str]
    forms: list[bytes]
    version: int
    fetched: float
    next: int = 0
    resting: dict[int, float] = field(default_factory=dict)

    def order(self, now: float) -> list[int]:
        n = len(self.keys)
        start = self.next % n
        self.next += 1
        ring = [(start + i) % n for i in range(n)]
        ready = [i for i in ring if self.resting.get(i, 0.0) <= now]
        return ready + [i for i in ring if i not in ready]


@dataclass(slots=True)
class _Meter:
    requests: int
    tokens: int
    window: deque[float] = field(default_factory=deque)


class _ClientGone(Exception):
    pass


class _Abort(Exception):
    """Abort the connection: a non-event-stream body cannot be completed honestly."""


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Gateway:
    """The ASGI application. One per process; share it between ``serve`` (mounted at ``/gw``) and
    the standalone ``keybroker gateway``. Call :meth:`aclose` on shutdown (or let the ASGI lifespan
    do it when it is the top-level app)."""

    def __init__(
        self,
        tokens: ProxyTokenService,
        *,
        config: GatewayConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        self.tokens = tokens
        self.sessions = tokens.sessions
        base = tokens.secrets
        self.clock = base.clock
        # the one access rule for sessions lives in core; the gateway only asks it, via get()
        self.secrets = SecretService(base.vault, SessionAuthorizer(self.sessions, base.authorizer))
        self.recorder = UseRecorder(
            base.audit,
            tokens,
            flush_interval=self.config.audit_flush_interval,
            max_backlog=self.config.audit_max_backlog,
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._pool: LeanPool | None = None
        self._threads: anyio.CapacityLimiter | None = None
        self._grants: dict[str, _CachedGrant] = {}
        self._keysets: dict[str, _KeySet] = {}
        self._fetching: dict[str, asyncio.Future[_KeySet]] = {}
        self._verifying: dict[str, asyncio.Future[ProxyGrant]] = {}
        self._meters: dict[str, _Meter] = {}
        self._revoked_sessions: OrderedDict[str, None] = OrderedDict()
        self._revoked_tokens: OrderedDict[str, None] = OrderedDict()
        self.sessions.listeners.append(self._on_revocation)
        base.listeners.append(self._on_secret_change)
        _install_log_redaction()

    # ------------------------------------------------------------------ lifecycle
    def _limiter(self) -> anyio.CapacityLimiter:
        """The gateway's own worker threads for store reads (token checks, key fetches), so the
        server's thread policy for its routes never stalls the proxy."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(16)
        return self._threads

    def _lean(self) -> LeanPool | None:
        """The shared lean pool, or None when the stock httpx client is in use."""
        c = self.config
        if self._transport is not None or not c.lean_transport:
            return None
        if self._pool is None:
            self._pool = LeanPool(
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                pool_timeout=c.pool_timeout,
                max_connections=c.max_connections,
                max_idle_per_origin=c.max_keepalive_connections,
            )
        return self._pool

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=c.connect_timeout, read=c.read_timeout, write=c.write_timeout, pool=c.pool_timeout
                ),
                limits=httpx.Limits(
                    max_connections=c.max_connections, max_keepalive_connections=c.max_keepalive_connections
                ),
                follow_redirects=False,
                trust_env=False,
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        await anyio.to_thread.run_sync(self.recorder.close)

    # ------------------------------------------------------------------ invalidation
    def _on_revocation(self, rev: Revocation) -> None:
        for sid in rev.session_ids:
            self._revoked_sessions[sid] = None
        for tid in rev.token_ids:
            self._revoked_tokens[tid] = None
        for od in (self._revoked_sessions, self._revoked_tokens):
            while len(od) > 100_000:
                od.popitem(last=False)
        drop_sessions, drop_tokens = set(rev.session_ids), set(rev.token_ids)
        for h, cg in list(self._grants.items()):
            if cg.grant.session_id in drop_sessions or cg.grant.token_id in drop_tokens:
                self._grants.pop(h, None)
                self._keysets.pop(cg.grant.token_id, None)

    def _on_secret_change(self, ev: ChangeEvent) -> None:
        target = f"{ev.get('org')}/{ev.get('project')}/{ev.get('environment')}/{ev.get('name')}"
        for cg in list(self._grants.values()):
            if cg.grant.target == target:
                self._keysets.pop(cg.grant.token_id, None)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http_request(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not proxied: the connection is simply not accepted

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        route, _, rest = path.lstrip("/").partition("/")
        provider = PROVIDERS.get(route)
        style = provider.error_style if provider else "openai"
        ctx = _Ctx(style=style, route=route, method=scope["method"], path="/" + rest)
        try:
            if route == "_health":
                await self._health(send)
                return
            if provider is None:
                raise _Refusal(
                    404,
                    "unknown_route",
                    f"no gateway route {route[:40]!r}: use one of {', '.join(PROVIDERS)}",
                )
            await self._proxy(scope, receive, send, ctx)
        except _ClientGone:
            return
        except _Refusal as r:
            self._record_refusal(ctx, r)
            await _send_error(send, ctx, r)
        except KeybrokerError as exc:
            refusal = _Refusal(
                exc.status,
                exc.code,
                exc.message,
                retry_after=exc.details.get("retry_after"),
                should_retry=exc.status in (429, 503) and exc.details.get("budget") in (None, "rpm"),
            )
            self._record_refusal(ctx, refusal)
            await _send_error(send, ctx, refusal)

    async def _health(self, send: Send) -> None:
        ok = self.recorder.healthy
        body = json.dumps({"status": "ok" if ok else "audit_unavailable"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ the proxy
    async def _proxy(self, scope: Scope, receive: Receive, send: Send, ctx: _Ctx) -> None:
        if not self.recorder.healthy:
            raise AuditUnavailable("the gateway cannot make its audit records durable; refusing until it can")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        token, in_query = _find_token(headers, query)
        if token is None:
            raise _Refusal(401, "proxy_token_invalid", "no proxy token: send it as the API key")
        grant = await self._grant(token)
        ctx.grant = grant
        now = self.clock.now()
        if grant.expires_at <= now:
            self._grants.pop(_token_hash(token), None)
            raise ProxyTokenExpired("the proxy token has expired")
        if ctx.route != grant.route:
            other = PROVIDERS[ctx.route].base_url.split("://", 1)[-1] or ctx.route
            raise WrongUpstream(
                f"this proxy token is for {', '.join(grant.hosts)} ({grant.route}); "
                f"it is never sent to {other}"
            )
        keyset = await self._keyset(grant)
        up = keyset.upstream
        if up.netloc not in grant.hosts or up.route != grant.route:
            raise WrongUpstream("the secret's upstream changed after this token was issued; take a new token")
        self._admit(grant, now)
        ctx.admitted = True
        body = await _read_body(receive, self.config.max_request_body)
        await self._exchange(scope, receive, send, ctx, grant, keyset, headers, query, in_query, body)

    async def _grant(self, token: str) -> ProxyGrant:
        h = _token_hash(token)
        cached = self._grants.get(h)
        mono = time.monotonic()
        if cached is not None and mono - cached.checked < self.config.recheck_s:
            g = cached.grant
        else:
            # one store check per token at a time, however many requests arrive meanwhile
            pending = self._verifying.get(h)
            if pending is not None:
                g = await asyncio.shield(pending)
            else:
                fut: asyncio.Future[ProxyGrant] = asyncio.get_running_loop().create_future()
                self._verifying[h] = fut
                try:
                    g = await anyio.to_thread.run_sync(self.tokens.verify, token, limiter=self._limiter())
                except BaseException as exc:
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters re-raise it
                    raise
                else:
                    fut.set_result(g)
                finally:
                    self._verifying.pop(h, None)
                self._grants[h] = _CachedGrant(g, mono)
                if len(self._grants) > 100_000:
                    self._grants.pop(next(iter(self._grants)))
        if g.session_id in self._revoked_sessions or g.token_id in self._revoked_tokens:
            self._grants.pop(h, None)
            raise ProxyTokenRevoked("the proxy token was revoked or its session has ended")
        return g

    async def _keyset(self, grant: ProxyGrant) -> _KeySet:
        ks = self._keysets.get(grant.token_id)
        if ks is not None and time.monotonic() - ks.fetched < self.config.value_ttl_s:
            return ks
        fut = self._fetching.get(grant.token_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._fetching[grant.token_id] = fut
            try:
                try:
                    ks = await anyio.to_thread.run_sync(self._fetch, grant, ks, limiter=self._limiter())
                except PermissionDenied as exc:
                    # the session no longer covers this secret (ended elsewhere): the token is dead
                    self._revoked_tokens[grant.token_id] = None
                    raise ProxyTokenRevoked("the proxy token's session no longer allows this secret") from exc
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it, nobody warns about it
                raise
            else:
                fut.set_result(ks)
            finally:
                self._fetching.pop(grant.token_id, None)
            self._keysets[grant.token_id] = ks
            return ks
        return await asyncio.shield(fut)

    def _fetch(self, grant: ProxyGrant, old: _KeySet | None) -> _KeySet:
        """Read the key as the session's principal (audited, permission ``use``)."""
        read = self.secrets.get(
            grant.principal(), grant.scope, grant.name, permission="use", action="gateway.fetch"
        )
        up = upstream_for(read.meta)
        keys = up.keys(read.value)
        forms: list[bytes] = []
        for k in keys:
            forms.extend(up.auth.wire_forms(k))
        ks = _KeySet(up, keys, forms, read.version, time.monotonic())
        if old is not None and old.version == read.version and len(old.keys) == len(keys):
            ks.next, ks.resting = old.next, old.resting
        return ks

    def _admit(self, grant: ProxyGrant, now: Any) -> None:
        b = grant.budget
        m = self._meters.get(grant.token_id)
        if m is None:
            m = self._meters[grant.token_id] = _Meter(grant.used_requests, grant.used_tokens)
        if b.max_requests is not None and m.requests >= b.max_requests:
            raise BudgetExhausted(
                f"the proxy token's budget of {b.max_requests} requests is spent", budget="requests"
            )
        if b.max_tokens is not None and m.tokens >= b.max_tokens:
            raise BudgetExhausted(
                f"the proxy token's budget of {b.max_tokens} model tokens is spent", budget="tokens"
            )
        t = now.timestamp()
        if b.max_rpm is not None:
            w = m.window
            while w and w[0] <= t - 60.0:
                w.popleft()
            if len(w) >= b.max_rpm:
                raise BudgetExhausted(
                    f"the proxy token allows {b.max_rpm} requests per minute",
                    budget="rpm",
                    retry_after=round(max(0.0, w[0] + 60.0 - t), 3),
                )
            w.append(t)
        m.requests += 1

    # ------------------------------------------------------------------ upstream exchange
    def _build(
        self,
        ctx: _Ctx,
        up: Upstream,
        key: str,
        headers: list[tuple[bytes, bytes]],
        query: bytes,
        in_query: bool,
        body: bytes,
        raw_path: bytes,
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """(request target, headers) for the upstream: the client's headers less hop-by-hop ones
        and every credential, plus the real key where the upstream expects it."""
        out: list[tuple[bytes, bytes]] = []
        for k, v in headers:
            if k in _HOP or k in _AUTH_HEADERS or k.startswith(b"x-keybroker-"):
                continue
            out.append((k, v))
        h = up.auth.header(key)
        if h is not None:
            out.append((h[0].lower().encode(), h[1].encode()))
        out.append((b"accept-encoding", b"identity"))
        if in_query or up.auth.kind == "query":
            pairs = [
                (k, v)
                for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                if not (in_query and k in _QUERY_TOKEN_PARAMS and v.startswith(PROXY_TOKEN_PREFIX))
            ]
            if up.auth.kind == "query":
                pairs = [(k, v) for k, v in pairs if k != up.auth.name] + [(up.auth.name, key)]
            query = urlencode(pairs).encode("latin-1")
        target = up.path_prefix.encode() + raw_path
        if query:
            target += b"?" + query
        return target, out

    async def _send(
        self, ctx: _Ctx, up: Upstream, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _UpResponse:
        pool = self._lean()
        if pool is not None:
            return await pool.request(ctx.method.encode(), up.scheme, up.host, up.port, target, headers, body)
        url = httpx.URL(scheme=up.scheme, host=up.host, port=up.port, raw_path=target)
        resp = await self._http().send(
            httpx.Request(ctx.method, url, headers=headers, content=body), stream=True
        )
        return _HttpxUp(resp)

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: _Ctx,
        grant: ProxyGrant,
        ks: _KeySet,
        headers: list[tuple[bytes, bytes]],
        query: bytes,
        in_query: bool,
        body: bytes,
    ) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        root = scope.get("root_path", "").encode()
        if root and raw_path.startswith(root):
            raw_path = raw_path[len(root) :]
        raw_path = b"/" + raw_path.lstrip(b"/").partition(b"/")[2]
        up = ks.upstream
        streaming_request = self.config.early_stream_headers and _wants_stream(body)
        started = time.perf_counter()
        work = asyncio.ensure_future(
            self._pump(send, ctx, grant, ks, up, headers, query, in_query, body, raw_path, streaming_request)
        )
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                ctx.outcome = "client_disconnected"
            else:
                try:
                    work.result()
                except _Refusal as r:
                    ctx.outcome = r.code
                    raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._record_use(ctx, grant, time.perf_counter() - started)

    async def _pump(
        self,
        send: Send,
        ctx: _Ctx,
        grant: ProxyGrant,
        ks: _KeySet,
        up: Upstream,
        headers: list[tuple[bytes, bytes]],
        query: bytes,
        in_query: bool,
        body: bytes,
        raw_path: bytes,
        streaming_request: bool,
    ) -> None:
        order = ks.order(time.monotonic())
        resp: _UpResponse | None = None
        for n, idx in enumerate(order):
            target, out = self._build(ctx, up, ks.keys[idx], headers, query, in_query, body, raw_path)
            ctx.key_index = idx
            try:
                if streaming_request and self.config.keepalive_interval and n == 0:
                    resp = await self._send_early(send, ctx, self._send(ctx, up, target, out, body))
                    if resp is None:
                        return
                else:
                    resp = await self._send(ctx, up, target, out, body)
            except httpx.TimeoutException as exc:
                raise _Refusal(504, "upstream_timeout", f"{up.netloc} did not answer in time") from exc
            except httpx.HTTPError as exc:
                raise _Refusal(502, "upstream_unavailable", f"{up.netloc} could not be reached") from exc
            if resp.status_code in _FAILOVER_STATUSES and n + 1 < len(order) and not ctx.headers_sent:
                rest = self.config.key_cooldown_s
                ra = dict(resp.raw_headers).get(b"retry-after", b"")
                if resp.status_code == 429 and ra.isdigit():
                    rest = min(float(ra), 3600.0)
                ks.resting[idx] = time.monotonic() + rest
                ctx.failovers += 1
                await resp.aclose()
                continue
            break
        assert resp is not None
        try:
            await self._relay(send, ctx, ks, resp)
        except httpx.HTTPError as exc:
            if ctx.headers_sent:
                raise _Abort("the upstream broke off") from exc
            if isinstance(exc, httpx.TimeoutException):
                raise _Refusal(504, "upstream_timeout", f"{up.netloc} stopped answering") from exc
            raise _Refusal(502, "upstream_unavailable", f"{up.netloc} broke off the answer") from exc
        finally:
            await resp.aclose()

    async def _send_early(self, send: Send, ctx: _Ctx, sending: Awaitable[_UpResponse]) -> _UpResponse | None:
        """Send a streaming request; if the upstream is slow to answer, start the event stream
        ourselves and keep it alive with comments until the first byte arrives."""
        assert self.config.keepalive_interval is not None
        task = asyncio.ensure_future(sending)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.config.keepalive_interval)
            while not done:
                if not ctx.headers_sent:
                    await _start(
                        send, 200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
                    )
                    ctx.headers_sent = True
                    ctx.status = 200
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                done, _ = await asyncio.wait({task}, timeout=self.config.keepalive_interval)
            try:
                return task.result()
            except httpx.HTTPError as exc:
                if not ctx.headers_sent:
                    raise
                timeout = isinstance(exc, httpx.TimeoutException)
                status, code = (504, "upstream_timeout") if timeout else (502, "upstream_unavailable")
                ctx.outcome = code
                msg = (
                    "the upstream did not answer in time" if timeout else "the upstream could not be reached"
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse_error_event(ctx.style, status, code, msg),
                        "more_body": False,
                    }
                )
                return None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _relay(self, send: Send, ctx: _Ctx, ks: _KeySet, resp: _UpResponse) -> None:
        forms = ks.forms
        status = resp.status_code
        ctx.upstream_status = status
        hmap = dict(resp.raw_headers)
        encoding = hmap.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"identity", b""):
            # we asked for identity; a body we cannot read is a body we cannot redact
            if encoding not in (b"gzip", b"deflate", b"x-gzip") or ctx.headers_sent:
                raise _Refusal(
                    502, "upstream_encoding", "the upstream answered in an encoding keybroker cannot inspect"
                )
            resp = _Decoded(resp, encoding)
            hmap.pop(b"content-length", None)
        out_headers = mask_headers([(k, v) for k, v in resp.raw_headers if k not in _RESP_DROP], forms)
        is_sse = hmap.get(b"content-type", b"").lower().startswith(_SSE)
        scanner = UsageScanner()
        if ctx.headers_sent:
            # we already answered 200 + event stream (slow first token); carry on inside it
            await self._relay_into_started_stream(send, ctx, ks, resp, is_sse, scanner)
            return
        ctx.status = status
        no_body = ctx.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        length = hmap.get(b"content-length")
        if no_body or (
            not is_sse
            and length is not None
            and length.isdigit()
            and int(length) <= self.config.buffer_response_below
        ):
            data = b"" if no_body else mask_bytes(await _read_all(resp), forms)
            if not no_body:
                scanner.whole(data)
            await _start(send, status, [*out_headers, (b"content-length", str(len(data)).encode())])
            ctx.headers_sent = True
            await send({"type": "http.response.body", "body": data, "more_body": False})
            self._count_tokens(ctx, scanner)
            return
        await _start(send, status, out_headers)
        ctx.headers_sent = True
        masker = LineMasker(forms)
        try:
            await self._stream_body(send, resp, masker, scanner, is_sse)
        except httpx.HTTPError as exc:
            timeout = isinstance(exc, httpx.TimeoutException)
            ctx.outcome = "upstream_timeout" if timeout else "upstream_broken"
            if not is_sse:
                raise _Abort("the upstream broke off mid-body") from exc
            tail = masker.flush()
            msg = "the upstream stopped answering" if timeout else "the upstream broke off the stream"
            event = sse_error_event(ctx.style, 504 if timeout else 502, ctx.outcome, msg)
            await send({"type": "http.response.body", "body": tail + event, "more_body": False})
            self._count_tokens(ctx, scanner)
            return
        await send({"type": "http.response.body", "body": masker.flush(), "more_body": False})
        self._count_tokens(ctx, scanner)

    async def _stream_body(
        self, send: Send, resp: _UpResponse, masker: LineMasker, scanner: UsageScanner, is_sse: bool
    ) -> None:
        """Relay the body as it arrives. For an event stream, a watchdog sends a keep-alive
        comment when the upstream has been silent for ``keepalive_interval``, but only between
        events (a comment inside a half-sent event would corrupt it)."""
        interval = self.config.keepalive_interval if is_sse else None
        if interval is None:
            async for chunk in resp.aiter_bytes():
                scanner.feed(chunk)
                out = masker.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            scanner.finish()
            return
        state = {"last": time.monotonic(), "boundary": True}
        lock = asyncio.Lock()

        async def watchdog() -> None:
            while True:
                await asyncio.sleep(max(0.0, state["last"] + interval - time.monotonic()))
                if time.monotonic() - state["last"] >= interval and state["boundary"]:
                    async with lock:
                        if state["boundary"]:
                            await send(
                                {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                            )
                    state["last"] = time.monotonic()

        dog = asyncio.ensure_future(watchdog())
        try:
            async for chunk in resp.aiter_bytes():
                state["last"] = time.monotonic()
                scanner.feed(chunk)
                out = masker.feed(chunk)
                if out:
                    async with lock:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    state["boundary"] = out.endswith(b"\n\n") or out.endswith(b"\r\n\r\n")
        finally:
            dog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dog
        scanner.finish()

    async def _relay_into_started_stream(
        self, send: Send, ctx: _Ctx, ks: _KeySet, resp: _UpResponse, is_sse: bool, scanner: UsageScanner
    ) -> None:
        if resp.status_code >= 400 or not is_sse:
            data = mask_bytes(await _read_all(resp), ks.forms)
            scanner.whole(data)
            msg = _error_message(data) or f"the upstream answered {resp.status_code}"
            code = "upstream_error" if resp.status_code >= 400 else "upstream_not_a_stream"
            ctx.outcome = code
            event = sse_error_event(
                ctx.style, resp.status_code if resp.status_code >= 400 else 502, code, msg
            )
            await send({"type": "http.response.body", "body": event, "more_body": False})
            self._count_tokens(ctx, scanner)
            return
        masker = LineMasker(ks.forms)
        try:
            await self._stream_body(send, resp, masker, scanner, True)
        except httpx.HTTPError:
            ctx.outcome = "upstream_broken"
            event = sse_error_event(ctx.style, 502, "upstream_broken", "the upstream broke off the stream")
            await send({"type": "http.response.body", "body": masker.flush() + event, "more_body": False})
            self._count_tokens(ctx, scanner)
            return
        await send({"type": "http.response.body", "body": masker.flush(), "more_body": False})
        self._count_tokens(ctx, scanner)

    # ------------------------------------------------------------------ accounting
    def _count_tokens(self, ctx: _Ctx, scanner: UsageScanner) -> None:
        ctx.tokens = scanner.tokens
        if ctx.grant is not None and ctx.tokens:
            m = self._meters.get(ctx.grant.token_id)
            if m is not None:
                m.tokens += ctx.tokens

    def _record_use(self, ctx: _Ctx, grant: ProxyGrant, seconds: float) -> None:
        if ctx.recorded:
            return
        ctx.recorded = True
        result = ctx.outcome or (
            "ok" if ctx.upstream_status and ctx.upstream_status < 400 else f"upstream:{ctx.upstream_status}"
        )
        detail: dict[str, Any] = {
            "token": grant.token_id,
            "session": grant.session_id,
            "method": ctx.method,
            "path": ctx.path[:200],
            "route": ctx.route,
            "status": ctx.upstream_status,
            "ms": round(seconds * 1000, 2),
        }
        if ctx.tokens:
            detail["tokens"] = ctx.tokens
        if ctx.failovers:
            detail["failovers"] = ctx.failovers
            detail["key"] = ctx.key_index
        self.recorder.record(
            UseRecord(
                grant.principal(),
                grant.target,
                result,
                detail,
                token_id=grant.token_id,
                requests=1,
                tokens=ctx.tokens,
                at=self.clock.now(),
            )
        )

    def _record_refusal(self, ctx: _Ctx, r: _Refusal) -> None:
        if ctx.recorded:
            return
        g = ctx.grant
        if ctx.admitted and g is not None:
            ctx.outcome = r.code
            self._record_use(ctx, g, 0.0)
            return
        principal = (
            g.principal() if g is not None else Principal(id="anonymous", kind="anonymous", client="gateway")
        )
        target = g.target if g is not None else f"_gateway/{ctx.route[:40]}"
        detail: dict[str, Any] = {"method": ctx.method, "path": ctx.path[:200], "route": ctx.route[:40]}
        if g is not None:
            detail.update(token=g.token_id, session=g.session_id)
        self.recorder.record(UseRecord(principal, target, f"denied:{r.code}", detail, at=self.clock.now()))


@dataclass(slots=True)
class _Ctx:
    style: str
    route: str
    method: str
    path: str
    grant: ProxyGrant | None = None
    admitted: bool = False
    headers_sent: bool = False
    status: int | None = None
    upstream_status: int | None = None
    outcome: str | None = None
    tokens: int = 0
    failovers: int = 0
    key_index: int = 0
    recorded: bool = False


class _Refusal(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        should_retry: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.should_retry = should_retry


async def _send_error(send: Send, ctx: _Ctx, r: _Refusal) -> None:
    if ctx.headers_sent:
        if ctx.status == 200:
            await send(
                {
                    "type": "http.response.body",
                    "body": sse_error_event(ctx.style, r.status, r.code, r.message),
                    "more_body": False,
                }
            )
            return
        raise _Abort(r.code)
    status, headers, body = error_response(
        ctx.style,
        r.status,
        r.code,
        r.message,
        retry_after=r.retry_after,
        should_retry=r.should_retry or r.status in (502, 503, 504),
    )
    await _start(send, status, headers)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _Refusal(413, "request_too_large", f"the request body is over {limit} bytes")
            parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts) if len(parts) != 1 else parts[0]


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _read_all(resp: _UpResponse) -> bytes:
    return b"".join([c async for c in resp.aiter_bytes()])


class _UpResponse(Protocol):
    """An upstream answer, whichever client fetched it: raw headers with lower-case names."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _HttpxUp:
    """An ``httpx.Response`` as an :class:`_UpResponse` (httpx decodes the body itself)."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status_code = resp.status_code
        self.raw_headers = [(k.lower(), v) for k, v in resp.headers.raw if k.lower() != b"content-encoding"]

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._resp.aiter_bytes()

    async def aclose(self) -> None:
        await self._resp.aclose()


class _Decoded:
    """A gzip/deflate body decoded as it streams (an upstream that ignored our identity ask)."""

    def __init__(self, resp: _UpResponse, encoding: bytes) -> None:
        self._resp = resp
        self.status_code = resp.status_code
        self.raw_headers = [
            (k, v) for k, v in resp.raw_headers if k not in (b"content-encoding", b"content-length")
        ]
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding != b"deflate" else zlib.MAX_WBITS)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                out = self._z.decompress(chunk)
                if out:
                    yield out
            tail = self._z.flush()
        except zlib.error as exc:
            raise httpx.DecodingError("the upstream sent a corrupt compressed body") from exc
        if tail:
            yield tail

    async def aclose(self) -> None:
        await self._resp.aclose()


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("stream") is True


def _error_message(data: bytes) -> str | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg[:500] if isinstance(msg, str) else None


def _find_token(headers: list[tuple[bytes, bytes]], query: bytes) -> tuple[str | None, bool]:
    """(the proxy token, whether it came in the query string). Only a value that starts with the
    proxy-token prefix counts; anything else is left for the format check to refuse."""
    seen = False
    for k, v in headers:
        if k == b"authorization":
            seen = True
            scheme, _, cred = v.partition(b" ")
            cred = cred.strip()
            if scheme.lower() == b"bearer" and cred.startswith(_PREFIX):
                return cred.decode("latin-1"), False
            if scheme.lower() == b"basic":
                try:
                    user, _, pw = base64.b64decode(cred, validate=True).partition(b":")
                except ValueError:
                    continue
                for c in (user, pw):
                    if c.startswith(_PREFIX):
                        return c.decode("latin-1"), False
        elif k in (b"x-api-key", b"x-goog-api-key", b"api-key"):
            seen = True
            if v.strip().startswith(_PREFIX):
                return v.strip().decode("latin-1"), False
    if query and _PREFIX in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name in _QUERY_TOKEN_PARAMS and value.startswith(PROXY_TOKEN_PREFIX):
                return value, True
    if seen:
        return "", False
    return None, False


# --------------------------------------------------------------------------- log redaction
class _RedactQuery(logging.Filter):
    """httpx logs each request's URL at INFO; a query-parameter key would be in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact_url(a) for a in record.args)
        return True


def _redact_url(arg: object) -> object:
    if isinstance(arg, httpx.URL) and arg.query:
        return arg.copy_with(query=b"redacted")
    return arg


class _RedactHeaders(logging.Filter):
    """httpcore's DEBUG trace prints every response's headers, and an upstream may echo the key
    in one: keep the event, drop the headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("receive_response_headers.complete "):
            record.msg = "receive_response_headers.complete (headers not logged)"
            record.args = ()
        return True


_redaction_installed = False


def _install_log_redaction() -> None:
    global _redaction_installed
    if not _redaction_installed:
        logging.getLogger("httpx").addFilter(_RedactQuery())
        for name in ("httpcore.http11", "httpcore.http2"):
            logging.getLogger(name).addFilter(_RedactHeaders())
        _redaction_installed = True
