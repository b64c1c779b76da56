"""The blocking client: drives the shared flows of :mod:`keybroker.client._base` over httpx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from keybroker.client._async import _response, follow, unreachable
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
    SecretCache,
    tls_verify,
)
from keybroker.client._errors import ServerUnavailable
from keybroker.crypto import SecretValue

__all__ = ["Client"]

log = logging.getLogger("keybroker.client")
T = TypeVar("T")


class _BackgroundWatcher:
    """Follows the change stream on a thread of its own (an asyncio loop, so stopping it is a
    clean task cancel rather than a socket torn down under a blocked read)."""

    def __init__(self, core: ClientCore, verify: Any, read_timeout: float, backoff_max: float) -> None:
        self.core = core
        self.verify = verify
        self.read_timeout = read_timeout
        self.backoff_max = backoff_max
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keybroker-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        async with httpx.AsyncClient(base_url=self.core.addr, verify=tls_verify(self.verify)) as http:
            try:
                await follow(
                    http,
                    self.core,
                    read_timeout=self.read_timeout,
                    backoff_max=self.backoff_max,
                    on_connect=self.connected.set,
                    on_disconnect=self.connected.clear,
                )
            finally:
                self.connected.clear()

    def stop(self, timeout: float = 5.0) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)


class Client:
    """A keybroker client.

    ``addr``/``token`` default to ``KEYBROKER_ADDR``/``KEYBROKER_TOKEN``. Reads go through a
    resolution chain: an environment variable (only with ``env_override=True``, and only for the
    dev-like environments in ``env_override_environments``) -> the in-memory cache (fresh for
    ``cache_ttl`` seconds unless the change stream invalidated it) -> the server -> the last known
    value if the server cannot be reached (a :class:`StaleValueWarning`, at most ``max_stale``
    seconds old; ``max_stale=None`` turns this off). ``cache_invalidation=True`` (or
    :meth:`start_watching`) follows the change stream for the default project/environment in a
    background thread, so a rotation is seen at once instead of after the TTL. ``clock`` is for
    tests. Server errors are raised as the same :mod:`keybroker.errors` classes; an unreachable
    server as :class:`ServerUnavailable`.
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
        transport: httpx.BaseTransport | None = None,
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
        self._verify = verify
        self._http = httpx.Client(
            base_url=self._core.addr, timeout=timeout, verify=tls_verify(verify), transport=transport
        )
        self.watch_read_timeout = watch_read_timeout
        self.watch_backoff_max = watch_backoff_max
        self._watcher: _BackgroundWatcher | None = None
        if cache_invalidation:
            self.start_watching()

    def __repr__(self) -> str:
        return f"Client(addr={self._core.addr!r}, project={self._core.project!r})"

    @property
    def cache(self) -> SecretCache:
        """The in-memory cache (``hits``, ``misses``, ``len()``)."""
        return self._core.cache

    # -------------------------------------------------------------- plumbing
    def _send(self, req: Request) -> Response:
        try:
            r = self._http.request(
                req.method, req.path, params=dict(req.params), json=req.json, headers=dict(req.headers)
            )
        except httpx.TransportError as exc:
            raise unreachable(self._core.addr, exc) from exc
        return _response(r)

    def _run(self, flow: Flow[T]) -> T:
        try:
            req = next(flow)
            while True:
                try:
                    resp = self._send(req)
                except ServerUnavailable as exc:
                    req = flow.throw(exc)
                else:
                    req = flow.send(resp)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stop_watching()
        self._http.close()

    # -------------------------------------------------------------- secrets
    def get(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
    ) -> SecretValue:
        """The value of a secret (``current`` unless ``version`` or ``label`` is given), through
        the resolution chain. Raises SecretNotFound, SecretDeleted, VersionNotFound,
        PermissionDenied, AuthenticationError, ServerUnavailable (unreachable and nothing young
        enough cached) and the other :mod:`keybroker.errors` classes the server answers."""
        return self._run(self._core.get_flow(name, project, environment, version, label, resolve))

    def get_many(
        self,
        names: Iterable[str],
        *,
        project: str | None = None,
        environment: str | None = None,
        ignore_missing: bool = False,
    ) -> dict[str, SecretValue]:
        """Several current values in one request (cached ones are not asked for again).
        ``ignore_missing`` leaves out names that do not exist instead of raising."""
        return self._run(self._core.get_many_flow(names, project, environment, ignore_missing=ignore_missing))

    def set(
        self,
        name: str,
        value: SecretValue | str,
        *,
        cas: int | None = None,
        project: str | None = None,
        environment: str | None = None,
        **metadata: Any,
    ) -> dict[str, Any]:
        """Write a new current version; ``cas=N`` only if the latest version is N (0: only if
        new). Returns the metadata. Raises CasMismatch, SecretDeleted, InvalidInput, ..."""
        return self._run(self._core.set_flow(name, value, project, environment, cas, metadata))

    def rotate(
        self,
        name: str,
        value: SecretValue | str,
        *,
        project: str | None = None,
        environment: str | None = None,
    ) -> dict[str, Any]:
        """Write a ``pending`` version; ``current`` is unchanged until :meth:`promote`."""
        return self._run(self._core.rotate_flow(name, value, project, environment))

    def promote(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        """Make the pending version current. Raises VersionNotFound if there is none."""
        return self._run(self._core.promote_flow(name, project, environment))

    def delete(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> None:
        """Soft-delete the secret (or only some versions)."""
        self._run(self._core.delete_flow(name, project, environment, versions))

    def list_secrets(
        self,
        *,
        project: str | None = None,
        environment: str | None = None,
        prefix: str = "",
        deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Metadata of the live secrets of a project/environment (no values)."""
        return self._run(self._core.list_flow(project, environment, prefix, deleted))

    def read(
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
        return self._run(self._core.read_flow(name, project, environment, version, label, resolve))

    def describe(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        """A secret's metadata (no value)."""
        return self._run(self._core.describe_flow(name, project, environment))

    def history(
        self, name: str, *, project: str | None = None, environment: str | None = None
    ) -> list[dict[str, Any]]:
        """A secret's versions with their labels and state (no values)."""
        return self._run(self._core.history_flow(name, project, environment))

    def rollback(
        self, name: str, version: int, *, project: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        """Write ``version``'s value again as a new current version. Returns the metadata."""
        return self._run(self._core.rollback_flow(name, version, project, environment))

    def undelete(
        self,
        name: str,
        *,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> None:
        """Bring back a soft-deleted secret (or only some versions)."""
        self._run(self._core.undelete_flow(name, project, environment, versions))

    def destroy(
        self,
        name: str,
        versions: Iterable[int],
        *,
        project: str | None = None,
        environment: str | None = None,
    ) -> None:
        """Erase versions for good (their values cannot come back)."""
        self._run(self._core.destroy_flow(name, versions, project, environment))

    def export(self, *, project: str | None = None, environment: str | None = None) -> dict[str, SecretValue]:
        """Every current value of a project/environment the caller may read."""
        return self._run(self._core.export_flow(project, environment))

    def proxy_env(
        self,
        names: Iterable[str],
        *,
        project: str | None = None,
        environment: str | None = None,
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Proxy tokens instead of the values of proxy-only secrets, and the variables pointing
        the providers' SDKs at the gateway: ``{"tokens": {...}, "env": {...}, "session": {...}}``."""
        return self._run(self._core.proxy_env_flow(names, project, environment, ttl_s))

    def health(self) -> dict[str, Any]:
        return self._run(self._core.health_flow())

    def inject_env(
        self,
        names: Iterable[str] | None = None,
        *,
        project: str | None = None,
        environment: str | None = None,
        environ: Any = None,
        overwrite: bool = True,
        prefix: str = "",
    ) -> list[str]:
        """Set environment variables from secrets (``names``, or every secret of the
        project/environment); ``db/main`` becomes ``DB_MAIN``. Returns the variable names set."""
        target = os.environ if environ is None else environ
        return self._run(self._core.inject_flow(names, project, environment, target, overwrite, prefix))

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
    ) -> Iterator[Event]:
        """Change events as they happen (blocking iterator), reconnecting with
        ``Last-Event-ID`` after a drop. Raises PermissionDenied/AuthenticationError if the server
        refuses the subscription, ServerUnavailable if ``reconnect=False`` and it drops."""
        state = self._core.watch_state(
            project, environment, name, last_event_id, backoff_max=self.watch_backoff_max
        )
        timeout = httpx.Timeout(10.0, read=self.watch_read_timeout)
        while True:
            req = state.request()
            try:
                with self._http.stream(
                    req.method, req.path, params=dict(req.params), headers=dict(req.headers), timeout=timeout
                ) as r:
                    if r.status_code != 200:
                        r.read()
                        err = state.refused(_response(r))
                        if not (reconnect and state.retryable(err)):
                            raise err
                    else:
                        state.connected()
                        for line in r.iter_lines():
                            ev = state.feed(line)
                            if ev is not None:
                                yield ev
                        state.feed("")
            except httpx.TransportError as exc:
                if not reconnect:
                    raise unreachable(self._core.addr, exc) from exc
            if not reconnect:
                return
            time.sleep(state.next_delay())

    def start_watching(self) -> None:
        """Follow the change stream in a background thread, invalidating the cache."""
        if self._watcher is not None:
            return
        self._watcher = _BackgroundWatcher(
            self._core, self._verify, self.watch_read_timeout, self.watch_backoff_max
        )
        self._watcher.start()

    @property
    def watching(self) -> bool:
        """True while the background change stream is connected."""
        return self._watcher is not None and self._watcher.connected.is_set()

    def wait_watching(self, timeout: float = 10.0) -> bool:
        """Block until the background change stream is connected (False on timeout)."""
        return self._watcher is not None and self._watcher.connected.wait(timeout)

    def stop_watching(self) -> None:
        w, self._watcher = self._watcher, None
        if w is not None:
            w.stop()
