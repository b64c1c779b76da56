"""The SDK's I/O-free core, shared by :class:`~keybroker.Client` and :class:`~keybroker.AsyncClient`.

Everything that decides (which request to send, how to read the answer, when the cache answers,
when the last known value may be served, how the change stream is parsed and resumed) lives
here and never touches a socket. Each operation is a *flow*: a generator that yields
:class:`Request` objects and receives :class:`Response` objects (or has
:class:`ServerUnavailable` thrown in when the server cannot be reached), and returns the result.
The sync and async clients only drive flows over httpx, the way httpx's own ``Auth`` flows work,
so the two clients cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import ssl
import threading
import warnings
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from keybroker.client._errors import ServerUnavailable, StaleValueWarning
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AuthenticationError,
    Conflict,
    InvalidInput,
    KeybrokerError,
    NotFound,
    PermissionDenied,
    from_code,
)

__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_MAX_STALE",
    "DEFAULT_TTL",
    "CacheEntry",
    "ClientCore",
    "Clock",
    "Event",
    "Flow",
    "Request",
    "Response",
    "SSEDecoder",
    "SSEMessage",
    "SecretCache",
    "WatchState",
]

log = logging.getLogger("keybroker.client")

DEFAULT_ADDR = "http://127.0.0.1:8270"
DEFAULT_TTL = 300.0
DEFAULT_MAX_STALE = 3600.0
#: environments where an environment variable may stand in for a secret (opt-in, dev only)
DEV_ENVIRONMENTS = ("dev", "development", "local", "test")
#: statuses after which the last known value may be served (the server is there but cannot serve)
_FALLBACK_STATUSES = frozenset({502, 503, 504})
#: events after which a cached value must not even be kept as "last known"
_DROP_KINDS = frozenset({"deleted", "destroyed", "revoked"})

T = TypeVar("T")


class Clock(Protocol):
    """Anything with ``now()`` (``keybroker.core.SystemClock``/``ManualClock`` fit)."""

    def now(self) -> datetime: ...


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


# ---------------------------------------------------------------------------- wire types
@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to send. ``path`` is relative to the client's address."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # bodies may hold values: never shown
        return f"Request({self.method} {self.path})"


@dataclass(frozen=True, slots=True)
class Response:
    """What the drivers hand back: status, raw body, headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Response({self.status})"

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


#: An operation: yields requests, receives responses, returns the result.
Flow = Generator[Request, Response, T]


@dataclass(frozen=True, slots=True)
class Event:
    """A change on the server: which secret, what happened, which version. Never a value."""

    id: int
    kind: str
    org: str
    project: str
    environment: str
    name: str
    version: int | None
    ts: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(
            id=int(d["id"]),
            kind=str(d["kind"]),
            org=str(d.get("org", "")),
            project=str(d["project"]),
            environment=str(d["environment"]),
            name=str(d["name"]),
            version=None if d.get("version") is None else int(d["version"]),
            ts=str(d.get("ts", "")),
        )


# ---------------------------------------------------------------------------- errors
_STATUS_CLASSES: dict[int, str] = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    502: "server_unavailable",
    503: "server_unavailable",
    504: "server_unavailable",
}
_RESERVED = {"message", "self", "cls"}


def error_from_response(resp: Response) -> KeybrokerError:
    """Rebuild the server's error class from ``{"error": {"code","message","details"}}``; a body
    without one (a proxy's HTML page) is classed by its status."""
    body = resp.json()
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        raw = err.get("details")
        details = (
            {k: v for k, v in raw.items() if isinstance(k, str) and k not in _RESERVED}
            if isinstance(raw, dict)
            else {}
        )
        exc = from_code(err["code"], str(err.get("message") or err["code"]), **details)
    else:
        code = _STATUS_CLASSES.get(resp.status, "error")
        exc = from_code(code, f"the server answered HTTP {resp.status}")
    exc.http_status = resp.status  # type: ignore[attr-defined]
    return exc


def check(resp: Response) -> Any:
    """The JSON body of a 2xx answer; raises the rebuilt error otherwise."""
    if resp.status >= 400:
        raise error_from_response(resp)
    return resp.json()


# ---------------------------------------------------------------------------- SSE
@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str
    data: str
    id: str | None
    retry: int | None


class SSEDecoder:
    """Incremental ``text/event-stream`` parser (WHATWG rules), fed one line at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event and self._id is None:
                self._retry = None
                return None
            msg = SSEMessage(self._event or "message", "\n".join(self._data), self._id, self._retry)
            self._event, self._data, self._id, self._retry = "", [], None, None
            return msg
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


# ---------------------------------------------------------------------------- cache
CacheKey = tuple[str, str, str, int | None, str | None]


@dataclass(slots=True)
class CacheEntry:
    value: SecretValue
    version: int
    fetched_at: datetime
    fresh: bool = True

    def __repr__(self) -> str:
        return f"CacheEntry(version={self.version}, fresh={self.fresh}, value=[secret])"


class SecretCache:
    """Values by (project, environment, name, version, label), thread-safe.

    An entry answers reads while it is *fresh*: younger than ``ttl`` and not invalidated by the
    change stream. Past that it stays as the *last known value*, which the resolution chain may
    serve when the server is unreachable, for at most ``max_stale`` seconds after it was fetched.
    A generation counter per secret stops a fetch that raced an invalidation from storing an
    outdated value as fresh.
    """

    def __init__(self, clock: Clock, ttl: float = DEFAULT_TTL, max_stale: float = DEFAULT_MAX_STALE) -> None:
        if ttl < 0 or max_stale < 0:
            raise InvalidInput("cache_ttl and max_stale must not be negative")
        self.clock = clock
        self.ttl = ttl
        self.max_stale = max_stale
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, CacheEntry] = {}
        self._by_name: dict[tuple[str, str, str], set[CacheKey]] = {}
        self._gen: dict[tuple[str, str, str], int] = {}
        self._epoch = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def generation(self, key: CacheKey) -> tuple[int, int]:
        with self._lock:
            return self._epoch, self._gen.get(key[:3], 0)

    def age(self, entry: CacheEntry) -> float:
        return (self.clock.now() - entry.fetched_at).total_seconds()

    def fresh(self, key: CacheKey) -> CacheEntry | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            e = self._entries.get(key)
            if e is not None and e.fresh and self.age(e) < self.ttl:
                self.hits += 1
                return e
            self.misses += 1
            return None

    def last_known(self, key: CacheKey) -> CacheEntry | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: CacheKey, value: SecretValue, version: int, gen: tuple[int, int]) -> None:
        with self._lock:
            still = gen == (self._epoch, self._gen.get(key[:3], 0))
            self._entries[key] = CacheEntry(value, version, self.clock.now(), fresh=still)
            self._by_name.setdefault(key[:3], set()).add(key)

    def invalidate(self, project: str, environment: str, name: str, *, drop: bool = False) -> int:
        """Mark every cached version/label of one secret not fresh (``drop``: forget it too)."""
        k3 = (project, environment, name)
        with self._lock:
            self._gen[k3] = self._gen.get(k3, 0) + 1
            keys = self._by_name.get(k3, set())
            for k in list(keys):
                if drop:
                    self._entries.pop(k, None)
                elif k in self._entries:
                    self._entries[k].fresh = False
            if drop:
                self._by_name.pop(k3, None)
            return len(keys)

    def invalidate_all(self) -> None:
        with self._lock:
            self._epoch += 1
            for e in self._entries.values():
                e.fresh = False

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._by_name.clear()


# ---------------------------------------------------------------------------- watch state
class WatchState:
    """Resumable state of one change-stream subscription: filters, the last event id seen (sent
    back as ``Last-Event-ID`` on reconnect) and the reconnect back-off."""

    def __init__(
        self,
        core: ClientCore,
        project: str | None,
        environment: str | None,
        name: str | None,
        last_event_id: int | str | None = None,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.core = core
        self.params = {
            k: v for k, v in (("project", project), ("environment", environment), ("name", name)) if v
        }
        self.last_event_id = None if last_event_id is None else str(last_event_id)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.attempt = 0
        self.decoder = SSEDecoder()
        self.connections = 0

    def request(self) -> Request:
        headers = dict(self.core.headers())
        headers["Accept"] = "text/event-stream"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return Request("GET", "/v1/events", dict(self.params), None, headers)

    def connected(self) -> None:
        """The server accepted the subscription. A first connection without a last event id
        cannot know what changed before it, so the cache stops trusting what it holds."""
        self.connections += 1
        self.attempt = 0
        self.decoder = SSEDecoder()
        if self.last_event_id is None:
            self.core.cache.invalidate_all()

    def refused(self, resp: Response) -> KeybrokerError:
        """The error for a non-200 answer; raised by the driver unless :meth:`retryable`."""
        return error_from_response(resp)

    @staticmethod
    def retryable(err: KeybrokerError) -> bool:
        status = getattr(err, "http_status", err.status)
        return isinstance(err, ServerUnavailable) or status in (429, 500, 502, 503, 504)

    def feed(self, line: str) -> Event | None:
        msg = self.decoder.feed(line)
        if msg is None:
            return None
        if msg.retry is not None:
            self.backoff_initial = max(0.01, msg.retry / 1000)
        if msg.id is not None:
            self.last_event_id = msg.id
        if not msg.data:
            return None
        try:
            data = json.loads(msg.data)
            ev = Event.from_dict(data)
        except (ValueError, KeyError, TypeError):
            return None
        self.core.apply_event(ev)
        return ev

    def next_delay(self) -> float:
        delay = min(self.backoff_max, self.backoff_initial * (2**self.attempt))
        self.attempt += 1
        return float(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto


# ---------------------------------------------------------------------------- the core
def _seg(s: str) -> str:
    return quote(s, safe="")


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()


def tls_verify(verify: Any) -> Any:
    """``verify=True`` becomes one SSL context shared by every client of the process: loading
    the CA bundle costs ~60 ms, once rather than per client."""
    return _default_ssl_context() if verify is True else verify


def env_var_name(prefix: str, name: str) -> str:
    """The environment variable that may stand in for a secret: ``db/main`` -> ``DB_MAIN``."""
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


class ClientCore:
    """Configuration, cache and flows shared by the sync and async clients. No I/O."""

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
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.addr = (addr or environ.get("KEYBROKER_ADDR") or DEFAULT_ADDR).rstrip("/")
        self._token = token if token is not None else environ.get("KEYBROKER_TOKEN")
        self.project = project
        self.environment = environment
        self.stale_if_error = max_stale is not None and max_stale > 0
        self.cache = SecretCache(clock or _SystemClock(), cache_ttl, max_stale or 0.0)
        self.env_override = env_override
        self.env_prefix = env_prefix
        self.env_override_environments = frozenset(env_override_environments)
        self.environ = environ
        self.listeners: list[Callable[[Event], None]] = []
        self.last_event_id: str | None = None

    def __repr__(self) -> str:
        return f"ClientCore(addr={self.addr!r}, project={self.project!r}, environment={self.environment!r})"

    # -------------------------------------------------------------- helpers
    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "keybroker-python"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def scope(self, project: str | None, environment: str | None) -> tuple[str, str]:
        return project or self.project, environment or self.environment

    def _req(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> Request:
        h = self.headers()
        if body is not None:
            h["Content-Type"] = "application/json"
        return Request(method, path, dict(params or {}), body, h)

    def _from_env(self, name: str, environment: str) -> SecretValue | None:
        if not self.env_override or environment not in self.env_override_environments:
            return None
        raw = self.environ.get(env_var_name(self.env_prefix, name))
        if raw is None:
            return None
        log.debug("secret %r taken from the environment (env_override, %s)", name, environment)
        return SecretValue(raw)

    @staticmethod
    def _may_fall_back(exc: KeybrokerError) -> bool:
        return isinstance(exc, ServerUnavailable) or getattr(exc, "http_status", None) in _FALLBACK_STATUSES

    def _stale(self, key: CacheKey, exc: KeybrokerError) -> SecretValue:
        """The last known value when the server cannot answer, or the reason there is none."""
        entry = self.cache.last_known(key) if self.stale_if_error else None
        if entry is None:
            raise exc
        age = self.cache.age(entry)
        if age > self.cache.max_stale:
            raise ServerUnavailable(
                f"the keybroker server is unreachable and the last known value of {key[2]!r} is "
                f"{age:.0f}s old, past the maximum stale age of {self.cache.max_stale:.0f}s",
                name=key[2],
                stale_age_s=round(age, 3),
                max_stale_s=self.cache.max_stale,
            ) from exc
        msg = (
            f"keybroker server unavailable ({exc.code}); serving the last known value of "
            f"{key[2]!r} (version {entry.version}, {age:.0f}s old, max {self.cache.max_stale:.0f}s)"
        )
        log.warning(msg)
        warnings.warn(StaleValueWarning(msg), stacklevel=4)
        return entry.value

    def _forget_on(self, exc: KeybrokerError, project: str, environment: str, name: str) -> None:
        """After a definite no (gone, forbidden, unauthenticated) the cache keeps nothing."""
        if isinstance(exc, NotFound | PermissionDenied | AuthenticationError | Conflict):
            self.cache.invalidate(project, environment, name, drop=True)

    # -------------------------------------------------------------- change events
    def apply_event(self, ev: Event) -> None:
        """Invalidate what an event makes outdated, then tell listeners."""
        self.cache.invalidate(ev.project, ev.environment, ev.name, drop=ev.kind in _DROP_KINDS)
        self.last_event_id = str(ev.id)
        for fn in list(self.listeners):
            try:
                fn(ev)
            except Exception:  # a broken listener must not stop invalidation
                log.exception("change listener failed")

    def watch_state(
        self,
        project: str | None,
        environment: str | None,
        name: str | None,
        last_event_id: int | str | None = None,
        *,
        backoff_max: float = 5.0,
    ) -> WatchState:
        return WatchState(self, project, environment, name, last_event_id, backoff_max=backoff_max)

    # -------------------------------------------------------------- flows
    def get_flow(
        self,
        name: str,
        project: str | None = None,
        environment: str | None = None,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
    ) -> Flow[SecretValue]:
        p, e = self.scope(project, environment)
        env_value = self._from_env(name, e)
        if env_value is not None and version is None and label in (None, "current"):
            return env_value
        key: CacheKey = (p, e, name, version, label)
        hit = self.cache.fresh(key) if resolve else None
        if hit is not None:
            return hit.value
        params: dict[str, str] = {}
        if version is not None:
            params["version"] = str(version)
        if label is not None:
            params["label"] = label
        if not resolve:
            params["resolve"] = "false"
        gen = self.cache.generation(key)
        try:
            resp = yield self._req(
                "GET", f"/v1/secrets/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}", params=params
            )
            body = check(resp)
        except KeybrokerError as exc:
            if self._may_fall_back(exc) and resolve:
                return self._stale(key, exc)
            self._forget_on(exc, p, e, name)
            raise
        value = SecretValue(str(body["value"]))
        if resolve:
            self.cache.put(key, value, int(body.get("version") or 0), gen)
        return value

    def get_many_flow(
        self,
        names: Iterable[str],
        project: str | None = None,
        environment: str | None = None,
        *,
        ignore_missing: bool = False,
    ) -> Flow[dict[str, SecretValue]]:
        p, e = self.scope(project, environment)
        wanted = list(dict.fromkeys(names))
        out: dict[str, SecretValue] = {}
        todo: list[str] = []
        for n in wanted:
            v = self._from_env(n, e)
            hit = None if v is not None else self.cache.fresh((p, e, n, None, None))
            if v is not None:
                out[n] = v
            elif hit is not None:
                out[n] = hit.value
            else:
                todo.append(n)
        if not todo:
            return out
        gens = {n: self.cache.generation((p, e, n, None, None)) for n in todo}
        try:
            resp = yield self._req(
                "POST", "/v1/batch/read", body={"project": p, "environment": e, "names": todo}
            )
            body = check(resp)
        except KeybrokerError as exc:
            if not self._may_fall_back(exc):
                raise
            for n in todo:
                out[n] = self._stale((p, e, n, None, None), exc)
            return {n: out[n] for n in wanted if n in out}
        for n, item in (body.get("secrets") or {}).items():
            value = SecretValue(str(item["value"]))
            self.cache.put((p, e, n, None, None), value, int(item.get("version") or 0), gens.get(n, (0, 0)))
            out[n] = value
        for n, err in (body.get("errors") or {}).items():
            item_err = from_code(str(err.get("code", "error")), str(err.get("message", "")), name=n)
            self._forget_on(item_err, p, e, n)
            if ignore_missing and isinstance(item_err, NotFound | Conflict):
                continue
            raise item_err
        return {n: out[n] for n in wanted if n in out}

    def _write_done(self, p: str, e: str, name: str, body: Any) -> dict[str, Any]:
        self.cache.invalidate(p, e, name)
        md = body.get("metadata") if isinstance(body, dict) else None
        return dict(md) if isinstance(md, dict) else {}

    def set_flow(
        self,
        name: str,
        value: SecretValue | str,
        project: str | None = None,
        environment: str | None = None,
        cas: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Flow[dict[str, Any]]:
        p, e = self.scope(project, environment)
        raw = value.reveal() if isinstance(value, SecretValue) else value
        if not isinstance(raw, str):
            raise InvalidInput("a secret value must be text")
        body: dict[str, Any] = {"value": raw, **(metadata or {})}
        if cas is not None:
            body["cas"] = cas
        resp = yield self._req("PUT", f"/v1/secrets/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}", body=body)
        return self._write_done(p, e, name, check(resp))

    def rotate_flow(
        self, name: str, value: SecretValue | str, project: str | None = None, environment: str | None = None
    ) -> Flow[dict[str, Any]]:
        p, e = self.scope(project, environment)
        raw = value.reveal() if isinstance(value, SecretValue) else value
        resp = yield self._req(
            "POST", f"/v1/rotate/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}", body={"value": raw}
        )
        return self._write_done(p, e, name, check(resp))

    def promote_flow(
        self, name: str, project: str | None = None, environment: str | None = None
    ) -> Flow[dict[str, Any]]:
        p, e = self.scope(project, environment)
        resp = yield self._req("POST", f"/v1/promote/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}", body={})
        return self._write_done(p, e, name, check(resp))

    def delete_flow(
        self,
        name: str,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> Flow[None]:
        p, e = self.scope(project, environment)
        params = {"versions": ",".join(str(int(v)) for v in versions)} if versions else {}
        resp = yield self._req(
            "DELETE", f"/v1/secrets/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}", params=params
        )
        check(resp)
        self.cache.invalidate(p, e, name, drop=not versions)
        return None

    def list_flow(
        self,
        project: str | None = None,
        environment: str | None = None,
        prefix: str = "",
        deleted: bool = False,
    ) -> Flow[list[dict[str, Any]]]:
        p, e = self.scope(project, environment)
        params = {"prefix": prefix} if prefix else {}
        if deleted:
            params["deleted"] = "true"
        resp = yield self._req("GET", f"/v1/secrets/{_seg(p)}/{_seg(e)}", params=params)
        body = check(resp)
        return [dict(m) for m in (body or {}).get("secrets", [])]

    # -------------------------------------------------------------- admin flows (no cache)
    def _path(self, kind: str, p: str, e: str, name: str) -> str:
        return f"/v1/{kind}/{_seg(p)}/{_seg(e)}/{quote(name, safe='/')}"

    def read_flow(
        self,
        name: str,
        project: str | None = None,
        environment: str | None = None,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
    ) -> Flow[dict[str, Any]]:
        """The whole answer of a read, straight from the server (no cache, no fallback):
        ``{"name","version","value": SecretValue,"metadata","references"}``."""
        p, e = self.scope(project, environment)
        params: dict[str, str] = {}
        if version is not None:
            params["version"] = str(version)
        if label is not None:
            params["label"] = label
        if not resolve:
            params["resolve"] = "false"
        resp = yield self._req("GET", self._path("secrets", p, e, name), params=params)
        try:
            body = check(resp)
        except KeybrokerError as exc:
            self._forget_on(exc, p, e, name)
            raise
        out = dict(body)
        out["value"] = SecretValue(str(body["value"]))
        return out

    def describe_flow(
        self, name: str, project: str | None = None, environment: str | None = None
    ) -> Flow[dict[str, Any]]:
        p, e = self.scope(project, environment)
        resp = yield self._req("GET", self._path("metadata", p, e, name))
        body = check(resp)
        return dict(body.get("metadata") or {})

    def history_flow(
        self, name: str, project: str | None = None, environment: str | None = None
    ) -> Flow[list[dict[str, Any]]]:
        p, e = self.scope(project, environment)
        resp = yield self._req("GET", self._path("history", p, e, name))
        body = check(resp)
        return [dict(v) for v in (body or {}).get("versions", [])]

    def rollback_flow(
        self, name: str, version: int, project: str | None = None, environment: str | None = None
    ) -> Flow[dict[str, Any]]:
        p, e = self.scope(project, environment)
        resp = yield self._req("POST", self._path("rollback", p, e, name), body={"version": int(version)})
        return self._write_done(p, e, name, check(resp))

    def undelete_flow(
        self,
        name: str,
        project: str | None = None,
        environment: str | None = None,
        versions: Iterable[int] | None = None,
    ) -> Flow[None]:
        p, e = self.scope(project, environment)
        body: dict[str, Any] = {"versions": [int(v) for v in versions]} if versions else {}
        resp = yield self._req("POST", self._path("undelete", p, e, name), body=body)
        check(resp)
        self.cache.invalidate(p, e, name)
        return None

    def destroy_flow(
        self, name: str, versions: Iterable[int], project: str | None = None, environment: str | None = None
    ) -> Flow[None]:
        p, e = self.scope(project, environment)
        resp = yield self._req(
            "POST", self._path("destroy", p, e, name), body={"versions": [int(v) for v in versions]}
        )
        check(resp)
        self.cache.invalidate(p, e, name, drop=True)
        return None

    def export_flow(
        self, project: str | None = None, environment: str | None = None
    ) -> Flow[dict[str, SecretValue]]:
        """Every current value of a project/environment the caller may read."""
        p, e = self.scope(project, environment)
        resp = yield self._req("GET", f"/v1/export/{_seg(p)}/{_seg(e)}", params={"format": "json"})
        body = check(resp)
        return {str(k): SecretValue(str(v)) for k, v in ((body or {}).get("secrets") or {}).items()}

    def proxy_env_flow(
        self,
        names: Iterable[str],
        project: str | None = None,
        environment: str | None = None,
        ttl_s: int | None = None,
    ) -> Flow[dict[str, Any]]:
        """Proxy tokens for proxy-only secrets (``POST /v1/proxy-env``): ``{"tokens": {name:
        token}, "env": {VAR: value}, "session": {...}}``. The tokens are shown once."""
        p, e = self.scope(project, environment)
        body: dict[str, Any] = {"project": p, "environment": e, "names": [str(n) for n in names]}
        if ttl_s is not None:
            body["ttl_s"] = int(ttl_s)
        resp = yield self._req("POST", "/v1/proxy-env", body=body)
        out = check(resp)
        return dict(out or {})

    def health_flow(self) -> Flow[dict[str, Any]]:
        resp = yield self._req("GET", "/v1/sys/health")
        body = resp.json()
        if not isinstance(body, dict):
            raise error_from_response(resp)
        return body

    def inject_flow(
        self,
        names: Iterable[str] | None,
        project: str | None,
        environment: str | None,
        environ: dict[str, str] | Any,
        overwrite: bool,
        prefix: str,
    ) -> Flow[list[str]]:
        """Put secrets into ``environ`` (``os.environ``); returns the variable names set."""
        if names is None:
            listed = yield from self.list_flow(project, environment)
            names = [
                m["name"]
                for m in listed
                if m.get("current_version") is not None and m.get("kind") != "keypair"
            ]
        values = yield from self.get_many_flow(names, project, environment)
        done: list[str] = []
        for n, v in values.items():
            var = env_var_name(prefix, n)
            if not overwrite and var in environ:
                continue
            environ[var] = v.reveal()
            done.append(var)
        return done
