"""The asyncio client: drives the shared flows of :mod:`keybroker.client._base` over httpx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from keybroker.client._base import (
    DEFAULT_MAX_STALE,
    DEFAULT_TTL,
    DEV_ENVIRONMENTS,
    ClientCore,
    Clock,
    Event,
    Flow,
    Request,
    Response,
    WatchState,
    tls_verify,
)
from keybroker.client._errors import ServerUnavailable
from keybroker.crypto import SecretValue
from keybroker.errors import KeybrokerError

__all__ = ["AsyncClient"]

log = logging.getLogger("keybroker.client")
T = TypeVar("T")


def unreachable(addr: str, exc: Exception) -> ServerUnavailable:
    shown = re.sub(r"//[^/@]*@", "//", addr)  # never user:password from an address
    err = ServerUnavailable(f"could not reach the keybroker server at {shown} ({type(exc).__name__})")
    err.__cause__ = exc
    return err


def _response(r: httpx.Response) -> Response:
    return Response(r.status_code, r.content, dict(r.headers))


async def stream_events(
    http: httpx.AsyncClient,
    state: WatchState,
    *,
    reconnect: bool = True,
    read_timeout: float = 60.0,
    on_connect: Callable[[], None] | None = None,
    on_disconnect: Callable[[], None] | None = None,
) -> AsyncIterator[Event]:
    """Events of one subscription, reconnecting with ``Last-Event-ID`` after a drop. Raises the
    server's error if it refuses the subscription for good (401, 403, 400...)."""
    timeout = httpx.Timeout(10.0, read=read_timeout)
    while True:
        req = state.request()
        try:
            async with http.stream(
                req.method, req.path, params=dict(req.params), headers=dict(req.headers), timeout=timeout
            ) as r:
                if r.status_code != 200:
                    await r.aread()
                    err = state.refused(_response(r))
                    if not (reconnect and state.retryable(err)):
                        raise err
                else:
                    state.connected()
                    if on_connect is not None:
                        on_connect()
                    try:
                        async for line in r.aiter_lines():
                            ev = state.feed(line)
                            if ev is not None:
                                yield ev
                        state.feed("")
                    finally:
                        if on_disconnect is not None:
                            on_disconnect()
        except httpx.TransportError as exc:
            if not reconnect:
                raise unreachable(state.core.addr, exc) from exc
            log.debug("change stream dropped (%s); reconnecting", type(exc).__name__)
        if not reconnect:
            return
        await asyncio.sleep(state.next_delay())


async def follow(
    http: httpx.AsyncClient,
    core: ClientCore,
    *,
    read_timeout: float,
    backoff_max: float,
    on_connect: Callable[[], None],
    on_disconnect: Callable[[], None],
) -> None:
    """Follow the client's default project/environment forever, invalidating its cache (the
    background watcher of both clients). A refusal (401/403) is logged and retried slowly."""
    state = core.watch_state(core.project, core.environment, None, backoff_max=backoff_max)
    while True:
        try:
            async for _ in stream_events(
                http, state, read_timeout=read_timeout, on_connect=on_connect, on_disconnect=on_disconnect
            ):
                pass
        except KeybrokerError as exc:
            log.warning("the change stream was refused (%s); the cache relies on its TTL", exc.code)
            on_disconnect()
            await asyncio.sleep(max(backoff_max, 1.0))


class AsyncClient:
    """Async keybroker client. Same arguments and methods as :class:`keybroker.Client`, awaited.

    With ``cache_invalidation=True`` a background task follows the change stream (started by
    ``async with`` or the first call) so a rotation invalidates the cache at once.
    """

    def __init__(
        self,
        addr: str | None = None,
        token: str | None = None,
        *,
        project: str = "default",
        environment: str = "dev",
        cache_ttl: float = DEFAULT_TTL,
        max_stale: float | None = DEFAULT_MAX_STALE,
        env_override: bool = False,
        env_prefix: str = "",
        env_override_environments: Collection[str] = DEV_ENVIRONMENTS,
        cache_invalidation: bool = False,
        clock: Clock | None = None,
        timeout: float = 10.0,
        verify: Any = True,
        transport: httpx.AsyncBaseTransport | None = None,
        watch_read_timeout: float = 60.0,
        watch_backoff_max: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._core = ClientCore(
            addr,
            token,
            project=project,
            environment=environment,
            cache_ttl=cache_ttl,
            max_stale=max_stale,
            env_override=env_override,
            env_prefix=env_prefix,
            env_override_environments=env_override_environments,
            clock=clock,
            environ=environ,
        )
        self._http = httpx.AsyncClient(
            base_url=self._core.addr, timeout=timeout, verify=tls_verify(verify), transport=transport
        )
        self._auto_watch = cache_invalidation
        self._watch_task: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()
        self.watch_read_timeout = watch_read_timeout
        self.watch_backoff_max = watch_backoff_max

    def __repr__(self) -> str:
        return f"AsyncClient(addr={self._core.addr!r}, project={self._core.project!r})"

    @property
    def cache(self) -> Any:
        """The in-memory :class:`~keybroker.client.SecretCache` (hits, misses, len)."""
        return self._core.cache

    # -------------------------------------------------------------- plumbing
    async def _send(self, req: Request) -> Response:
        try:
            r = await self._http.request(
                req.method, req.path, params=dict(req.params), json=req.json, headers=dict(req.headers)
            )
        except httpx.TransportError as exc:
            raise unreachable(self._core.addr, exc) from exc
        return _response(r)

    async def _run(self, flow: Flow[T]) -> T:
        if self._auto_watch and self._watch_task is None:
            self.start_watching()
        try:
            req = next(flow)
            while True:
                try:
                    resp = await self._send(req)
                except ServerUnavailable as exc:
                    req = flow.throw(exc)
                else:
                    req = flow.send(resp)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def __aenter__(self) -> AsyncClient:
        if self._auto_watch:
            self.start_watching()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stop_watching()
        await self._http.aclose()

    # -------------------------------------------------------------- secrets
    async def get(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
    ) -> SecretValue:
        """The value of a secret (see :meth:`keybroker.Client.get`)."""
        return await self._run(self._core.get_flow(name, project, environment, version, label, resolve))

    async def get_many(
        self,
        names: Iterable[str],
        *,
        project: str | None = None,
        environment: str | None = None,
        ignore_missing: bool = False,
    ) -> dict[str, SecretValue]:
        return await self._run(
            self._core.get_many_flow(names, project, environment, ignore_missing=ignore_missing)
        )

    async def set(
        self,
        name: str,
        value: SecretValue | str,
        *,
        cas: int | None = None,
        project: str | None = None,
        environment: str | None = None,
        **metadata: Any,
    ) -> dict[str, Any]:
        return await self._run(self._core.set_flow(name, value, project, environment, cas, metadata))

    async def rotate(
        self,
        name: str,
        value: SecretValue | str,
        *,
        project: str | None = None,
        environment: str | None = None,
    ) -> dict[str, Any]:
        return await self._run(self._core.rotate_flow(name, value, project, environment))

    async def promote(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._core.promote_flow(name, project, environment))

    async def delete(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> None:
        await self._run(self._core.delete_flow(name, project, environment, versions))

    async def list_secrets(
        self,
        *,
        project: str | None = None,
        environment: str | None = None,
        prefix: str = "",
        deleted: bool = False,
    ) -> list[dict[str, Any]]:
        return await self._run(self._core.list_flow(project, environment, prefix, deleted))

    async def read(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
    ) -> dict[str, Any]:
        """One read straight from the server (no cache, no fallback), with what :meth:`get`
        leaves out: ``{"name","version","value": SecretValue,"metadata","references"}``."""
        return await self._run(self._core.read_flow(name, project, environment, version, label, resolve))

    async def describe(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        """A secret's metadata (no value)."""
        return await self._run(self._core.describe_flow(name, project, environment))

    async def history(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> list[dict[str, Any]]:
        """A secret's versions with their labels and state (no values)."""
        return await self._run(self._core.history_flow(name, project, environment))

    async def rollback(
        self, name: str, version: int, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        """Write ``version``'s value again as a new current version. Returns the metadata."""
        return await self._run(self._core.rollback_flow(name, version, project, environment))

    async def undelete(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> None:
        """Bring back a soft-deleted secret (or only some versions)."""
        await self._run(self._core.undelete_flow(name, project, environment, versions))

    async def destroy(
        self,
        name: str,
        versions: Iterable[int],
        *,
        project: str | None = None,
        environment: str | None = None,
    ) -> None:
        """Erase versions for good (their values cannot come back)."""
        await self._run(self._core.destroy_flow(name, versions, project, environment))

    async def export(
        self, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, SecretValue]:
        """Every current value of a project/environment the caller may read."""
        return await self._run(self._core.export_flow(project, environment))

    async def health(self) -> dict[str, Any]:
        return await self._run(self._core.health_flow())

    async def inject_env(
        self,
        names: Iterable[str] | None = None,
        *,
        project: str | None = None,
        environment: str | None = None,
        environ: Any = None,
        overwrite: bool = True,
        prefix: str = "",
    ) -> list[str]:
        import os

        target = os.environ if environ is None else environ
        return await self._run(self._core.inject_flow(names, project, environment, target, overwrite, prefix))

    # -------------------------------------------------------------- change stream
    def on_change(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` after each change event has invalidated the cache (on the thread or
        task that follows the stream: keep it quick; exceptions are logged and ignored)."""
        self._core.listeners.append(fn)

    def watch(
        self,
        *,
        project: str | None = None,
        environment: str | None = None,
        name: str | None = None,
        last_event_id: int | str | None = None,
        reconnect: bool = True,
    ) -> AsyncIterator[Event]:
        """Change events as they happen; reconnects with ``Last-Event-ID``. Raises
        PermissionDenied/AuthenticationError if the server refuses the subscription."""
        state = self._core.watch_state(
            project, environment, name, last_event_id, backoff_max=self.watch_backoff_max
        )
        return stream_events(self._http, state, reconnect=reconnect, read_timeout=self.watch_read_timeout)

    def start_watching(self) -> None:
        """Follow the change stream in a background task, invalidating the cache (needs a loop)."""
        if self._watch_task is not None and not self._watch_task.done():
            return
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(), name="keybroker-watch")

    async def _watch_loop(self) -> None:
        await follow(
            self._http,
            self._core,
            read_timeout=self.watch_read_timeout,
            backoff_max=self.watch_backoff_max,
            on_connect=self._watching.set,
            on_disconnect=self._watching.clear,
        )

    @property
    def watching(self) -> bool:
        """True while the background change stream is connected."""
        return self._watching.is_set()

    async def wait_watching(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self._watching.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop_watching(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watching.clear()
