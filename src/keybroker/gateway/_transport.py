"""The gateway's upstream connection pool: lean HTTP/1.1 on asyncio and ``httptools``.

Why: the gateway adds a hop to every model call, so its own cost is the product. httpx's stock
stack (client, httpcore, h11, anyio) spends most of a proxied request's CPU in URL validation,
header models, a cookie jar and pure-Python parsing, and its pool scans every connection on every
request, which collapses under dozens of concurrent streams. :class:`LeanPool` is one shared pool
(``request()`` with bytes in, a streamed :class:`LeanResponse` out) doing the wire work on an
asyncio protocol with ``httptools`` (llhttp, the parser uvicorn uses). It raises httpx's
exception types, and :class:`LeanTransport` puts the same pool behind httpx's transport interface
for code that wants an ``httpx.AsyncClient``:

* keep-alive pool per origin, LIFO, O(1) check-out and return; idle connections expire;
* request line, headers and body in one write; TCP_NODELAY; TLS via the standard ssl module;
* the response body is streamed chunk by chunk with back-pressure (reading pauses when a
  client is slower than the upstream);
* timeouts are timer callbacks, not tasks: connect, read (between bytes, first byte included),
  pool (waiting for a free connection); errors are httpx's exception types;
* a connection is reused only after a complete response that allowed keep-alive; a request that
  fails on a reused connection before any response byte is retried once on a new one.

Not supported (the gateway never needs them): HTTP/2, proxies, ``Expect: 100-continue``,
protocol upgrades, streaming request bodies.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

__all__ = ["LeanPool", "LeanResponse", "LeanTransport"]

_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18


class _Conn(asyncio.Protocol):
    """One upstream connection: an asyncio protocol feeding an httptools response parser."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.exc: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.reused = False
        self.counted_out = False
        self._reset(head=False)

    def _reset(self, head: bool) -> None:
        self.head = head
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.got_bytes = False
        self.until_close = False

    # -- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.exc = httpx.RemoteProtocolError("the upstream sent a malformed HTTP response")
            self.keep_alive = False
            self._close_transport()
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.until_close:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete and self.exc is None:
            self.exc = httpx.ReadError("the upstream closed the connection")
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            return
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        names = {k.lower() for k, _ in self.headers}
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        if self.head or self.status in (204, 304):
            self.complete = True
            self.keep_alive = self.keep_alive and not self.head  # llhttp cannot know a HEAD's body

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.reason, self.headers, self.status = b"", [], 0
            return
        self.complete = True

    # -- waiting ---------------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _expire(self, fut: asyncio.Future[None], exc: Exception) -> None:
        if not fut.done():
            fut.set_exception(exc)

    async def wait(self, timeout: float | None) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiter = fut
        timer = (
            self.loop.call_later(
                timeout, self._expire, fut, httpx.ReadTimeout("the upstream did not answer in time")
            )
            if timeout is not None
            else None
        )
        try:
            await fut
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def resume(self) -> None:
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _close_transport(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


class LeanResponse:
    """An upstream answer: status, raw headers (names lower case), and the body as a stream.
    Call :meth:`aclose` when done (the connection goes back to the pool only after a complete
    body)."""

    __slots__ = ("_conn", "_done", "_pool", "_released", "_timeout", "raw_headers", "reason", "status_code")

    def __init__(self, pool: LeanPool, conn: _Conn, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout
        self._done = False
        self._released = False
        self.status_code = conn.status
        self.reason = conn.reason
        self.raw_headers = [(k.lower(), v) for k, v in conn.headers]

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                # whatever has arrived goes out at once, as one piece (never waiting for more)
                chunk = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
                conn.chunks.clear()
                conn.buffered = 0
                conn.resume()
                yield chunk
                continue
            if conn.complete:
                self._done = True
                return
            if conn.exc is not None:
                raise conn.exc
            await conn.wait(self._timeout)

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if (self._done or (conn.complete and not conn.chunks)) and conn.keep_alive and conn.usable:
            self._pool._release(conn)
        else:
            self._pool._discard(conn)


class _HttpxStream(httpx.AsyncByteStream):
    def __init__(self, resp: LeanResponse) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.aiter_bytes():
            yield chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


class LeanPool:
    """See the module docstring. ``max_connections`` bounds open connections over all origins."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 300.0,
        pool_timeout: float = 30.0,
        max_connections: int = 1000,
        max_idle_per_origin: int = 256,
        idle_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle_per_origin
        self.idle_expiry = idle_expiry
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._host_headers: dict[tuple[str, str, int], bytes] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # -- pool ----------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _checkout(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_expiry:
                conn.reused = True
                return conn
            self._discard(conn)
        return None

    def _release(self, conn: _Conn) -> None:
        if self._closed:
            self._discard(conn)
            return
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn._close_transport()
        if not conn.counted_out:
            conn.counted_out = True
            self._open -= 1
            while self._slot_waiters:
                w = self._slot_waiters.popleft()
                if not w.done():
                    w.set_result(None)
                    break

    async def _slot(self) -> None:
        while self._open >= self.max_connections:
            # free a slot held by an idle connection, else wait for one
            for idle in self._idle.values():
                if idle:
                    self._discard(idle.popleft())
                    break
            else:
                loop = asyncio.get_running_loop()
                fut: asyncio.Future[None] = loop.create_future()
                self._slot_waiters.append(fut)
                try:
                    await asyncio.wait_for(fut, self.pool_timeout)
                except TimeoutError:
                    raise httpx.PoolTimeout("no free connection to the upstream") from None
        self._open += 1

    async def _connect(self, key: tuple[str, str, int], timeout: float) -> _Conn:
        await self._slot()
        loop = asyncio.get_running_loop()
        scheme, host, port = key
        conn = _Conn(loop, key)
        try:
            kw: dict[str, Any] = {}
            if scheme == "https":
                kw = {"ssl": self._ssl_context(), "server_hostname": host}
            await asyncio.wait_for(loop.create_connection(lambda: conn, host, port, **kw), timeout)
        except TimeoutError:
            self._discard(conn)
            raise httpx.ConnectTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._discard(conn)
            raise httpx.ConnectError(f"cannot connect to the upstream: {type(exc).__name__}") from None
        return conn

    # -- requests ------------------------------------------------------------------------------
    async def request(
        self,
        method: bytes,
        scheme: str,
        host: str,
        port: int | None,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> LeanResponse:
        """Send one request (``headers`` must not hold Host or Content-Length: they are added)
        and return once the response headers are in. Raises httpx's ConnectError, ConnectTimeout,
        ReadTimeout, ReadError, RemoteProtocolError, PoolTimeout."""
        port = port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        host_header = self._host_headers.get(key)
        if host_header is None:
            shown = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
            host_header = self._host_headers[key] = shown.encode("idna")
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host_header, b"\r\n"]
        for k, v in headers:
            parts += [k, b": ", v, b"\r\n"]
        if body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            parts += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        parts += [b"\r\n", body]
        wire = b"".join(parts)
        rt = self.read_timeout if read_timeout is None else read_timeout
        ct = self.connect_timeout if connect_timeout is None else connect_timeout
        for attempt in (0, 1):
            conn = self._checkout(key)
            if conn is None:
                conn = await self._connect(key, ct)
            conn._reset(head=method == b"HEAD")
            assert conn.transport is not None
            conn.transport.write(wire)
            try:
                while not conn.headers_done:
                    if conn.exc is not None:
                        raise conn.exc
                    await conn.wait(rt)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                self._discard(conn)
                if attempt == 0 and conn.reused and not conn.got_bytes:
                    continue  # a kept-alive connection the upstream had closed: one retry
                raise
            except BaseException:
                self._discard(conn)
                raise
            return LeanResponse(self, conn, rt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.popleft())
        self._idle.clear()
        # transports finish closing on the next turns of the loop: let them, before it stops
        for _ in range(3):
            await asyncio.sleep(0)


class LeanTransport(httpx.AsyncBaseTransport):
    """A :class:`LeanPool` behind httpx's transport interface (``httpx.AsyncClient(transport=...)``)."""

    def __init__(self, pool: LeanPool | None = None, **pool_options: Any) -> None:
        self.pool = pool or LeanPool(**pool_options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        headers = [
            (k.lower(), v) for k, v in request.headers.raw if k.lower() not in (b"host", b"content-length")
        ]
        body = b"".join([c async for c in request.stream])  # type: ignore[union-attr]
        timeouts = request.extensions.get("timeout", {})
        resp = await self.pool.request(
            request.method.encode(),
            url.scheme,
            url.host,
            url.port,
            url.raw_path,
            headers,
            body,
            read_timeout=timeouts.get("read"),
            connect_timeout=timeouts.get("connect"),
        )
        return httpx.Response(
            resp.status_code,
            headers=resp.raw_headers,
            stream=_HttpxStream(resp),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": resp.reason},
        )

    async def aclose(self) -> None:
        await self.pool.aclose()
