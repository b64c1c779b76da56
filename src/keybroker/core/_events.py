"""The live change stream: secret changes fanned out to subscribers, within and between replicas.

Why it exists: an application caching a secret must learn of a rotation at once, not when its
cache expires. :class:`SecretService` writes every change into ``kb_events`` in the same
transaction as the change and calls its listeners after the commit; :class:`EventBus` is such a
listener and delivers the event to

* in-process subscribers (async iterators, e.g. one per ``/v1/events`` SSE connection, and plain
  callbacks), filtered by organization, project, environment and name;
* other replicas on PostgreSQL, by ``NOTIFY`` on a channel private to the database schema. The
  payload carries the event's id, kind, scope names and version (never a value). Each replica
  keeps one ``LISTEN`` connection in a thread of its own, reconnects with back-off and, after a
  reconnect, reads what it missed from ``kb_events``;
* other processes writing the same SQLite file, by an optional poll of ``kb_events``.

A subscriber that reconnects with the id of the last event it saw (SSE ``Last-Event-ID``) gets
the events after it from ``kb_events`` first, then the live ones, without duplicates.

Known limit: event ids come from a sequence, and two transactions may commit out of id order; a
replay after id N misses an event with a smaller id that committed later. The gap is one
concurrent-commit wide; the NOTIFY and polling paths dedupe by id and look back a little
(``_LOOKBACK``) to cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from keybroker.errors import InvalidInput, KeybrokerError
from keybroker.store import Store, tables

__all__ = ["Event", "EventBus", "EventFilter", "Subscription", "SubscriptionLagged"]

log = logging.getLogger("keybroker.events")

#: The kinds of change the stream carries.
EVENT_KINDS = (
    "created",
    "updated",
    "rotated",
    "promoted",
    "deleted",
    "undeleted",
    "destroyed",
    "revoked",
)

_SEEN_MAX = 20_000  # ids remembered for de-duplication
_LOOKBACK = 200  # ids re-read behind the high-water mark when catching up
_REPLAY_PAGE = 500


def _iso(ts: Any) -> str:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return str(ts.astimezone(UTC).isoformat())
    return str(ts)


@dataclass(frozen=True, slots=True)
class Event:
    """One change: which secret, what happened, which version. Never a value."""

    id: int
    kind: str
    org: str
    project: str
    environment: str
    name: str
    version: int | None
    ts: str

    @classmethod
    def from_change(cls, ev: dict[str, Any]) -> Event:
        """From a :data:`keybroker.core.ChangeEvent` (or a row/NOTIFY payload of ``kb_events``)."""
        return cls(
            id=int(ev["id"]),
            kind=str(ev["kind"]),
            org=str(ev["org"]),
            project=str(ev["project"]),
            environment=str(ev["environment"]),
            name=str(ev["name"]),
            version=None if ev.get("version") is None else int(ev["version"]),
            ts=_iso(ev["ts"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Wire form (docs/http-api.md): id, kind, org, project, environment, name, version, ts."""
        return {
            "id": self.id,
            "kind": self.kind,
            "org": self.org,
            "project": self.project,
            "environment": self.environment,
            "name": self.name,
            "version": self.version,
            "ts": self.ts,
        }


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber gets. ``org`` is mandatory, so a subscriber never sees another
    organization's events; ``None`` for the others means any. ``name`` is an exact name or a
    glob (``db/*``)."""

    org: str
    project: str | None = None
    environment: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.org:
            raise InvalidInput("an event filter needs an organization")

    def matches(self, ev: Event) -> bool:
        if ev.org != self.org:
            return False
        if self.project is not None and ev.project != self.project:
            return False
        if self.environment is not None and ev.environment != self.environment:
            return False
        if self.name is not None:
            if _is_glob(self.name):
                return fnmatch.fnmatchcase(ev.name, self.name)
            return ev.name == self.name
        return True


class SubscriptionLagged(Exception):
    """A subscriber fell too far behind and was dropped; reconnect with the last event id."""


_CLOSED = object()


class Subscription:
    """An async iterator of :class:`Event`. Replays from ``kb_events`` after ``last_event_id``
    first (if given), then yields live events. Raises :class:`SubscriptionLagged` from
    ``__anext__`` if more than ``max_queue`` events piled up unread."""

    def __init__(
        self,
        bus: EventBus,
        flt: EventFilter,
        loop: asyncio.AbstractEventLoop,
        last_event_id: int | None,
        max_queue: int,
    ) -> None:
        self.bus = bus
        self.filter = flt
        self.loop = loop
        self.last_event_id = last_event_id
        self.max_queue = max_queue
        self._queue: deque[Event | object] = deque()
        self._waiter: asyncio.Future[bool] | None = None
        self._closed = False
        self._lagged = False
        self._replayed: set[int] | None = None
        self._replay_buffer: deque[Event] | None = None if last_event_id is None else deque()

    # called on the subscription's loop
    def _put(self, ev: Event) -> None:
        if self._closed or not self.filter.matches(ev):
            return
        if len(self._queue) >= self.max_queue:
            self._lagged = True
            self._queue.clear()
            self._queue.append(_CLOSED)
            self.bus._unsubscribe(self)
        else:
            self._queue.append(ev)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    async def _wait(self, timeout: float | None) -> bool:
        """Sleep until woken (True) or ``timeout`` passes (False). A bare future and one timer
        rather than ``wait_for`` (which makes a task per call): this runs once per event per
        subscriber, and a server holds thousands of subscribers."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = fut
        timer = None if timeout is None else self.loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return fut.result()

    def close(self) -> None:
        """Stop receiving events (safe to call twice, from the subscription's loop)."""
        if not self._closed:
            self._closed = True
            self.bus._unsubscribe(self)
            self._queue.append(_CLOSED)
            self._wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        ev = await self.next_event(None)
        assert ev is not None
        return ev

    async def next_event(self, timeout: float | None) -> Event | None:
        """The next event, or ``None`` if none came within ``timeout`` seconds (for keep-alives).
        Raises StopAsyncIteration once closed, SubscriptionLagged if dropped for lagging."""
        if self._replay_buffer is not None and self._replayed is None:
            await self._load_replay()
        if self._replay_buffer:
            return self._replay_buffer.popleft()
        while True:
            while not self._queue:
                if self._closed and not self._lagged:
                    raise StopAsyncIteration
                if not await self._wait(timeout):
                    return None
            item = self._queue.popleft()
            if item is _CLOSED:
                self._queue.appendleft(_CLOSED)
                if self._lagged:
                    raise SubscriptionLagged(
                        "this subscriber fell behind; reconnect with the last event id to catch up"
                    )
                raise StopAsyncIteration
            assert isinstance(item, Event)
            if self._replayed is not None and item.id in self._replayed:
                continue
            return item

    async def _load_replay(self) -> None:
        assert self.last_event_id is not None
        events = await asyncio.to_thread(self.bus.replay, self.filter, self.last_event_id)
        self._replayed = {e.id for e in events}
        self._replay_buffer = deque(events)


class EventBus:
    """Fan-out of secret change events (see the module docstring).

    ``store``: the store whose ``kb_events`` table replays come from. ``poll_interval``: seconds
    between reads of ``kb_events`` for events written by other processes (SQLite; on PostgreSQL a
    safety net beside LISTEN/NOTIFY); ``None`` turns polling off. ``replica_id`` names this
    replica in NOTIFY payloads so it skips its own.
    """

    def __init__(
        self,
        store: Store,
        *,
        poll_interval: float | None = None,
        pg_notify: bool = True,
        max_queue: int = 10_000,
        replica_id: str | None = None,
        reconnect_max: float = 5.0,
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.pg = store.dialect == "postgresql" and pg_notify
        self.max_queue = max_queue
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        self.reconnect_max = reconnect_max
        self.channel: str | None = None
        self._lock = threading.Lock()
        self._subs: dict[asyncio.AbstractEventLoop, set[Subscription]] = {}
        self._callbacks: list[Callable[[Event], None]] = []
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._high = 0
        self._floor = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outbox: queue.Queue[Event | None] = queue.Queue()
        self._started = False
        #: set while the PostgreSQL LISTEN connection is up (tests and health checks wait on it)
        self.listening = threading.Event()
        self.stats = {"local": 0, "remote": 0, "polled": 0, "notify_errors": 0, "reconnects": 0}

    # ------------------------------------------------------------------ wiring
    def attach(self, service: Any) -> None:
        """Register as a listener of a :class:`keybroker.core.SecretService`."""
        if self.publish_change not in service.listeners:
            service.listeners.append(self.publish_change)

    def detach(self, service: Any) -> None:
        with contextlib.suppress(ValueError):
            service.listeners.remove(self.publish_change)

    def start(self) -> None:
        """Start the PostgreSQL LISTEN/NOTIFY threads and the poller (whichever apply).
        Raises StoreError if the database cannot be reached for the initial high-water mark."""
        if self._started:
            return
        self._started = True
        self._stop.clear()
        self._outbox = queue.Queue()  # a stop marker left by an earlier close() must not linger
        self._high = max(self._high, self.last_id())
        self._floor = self._high  # events up to here predate this bus: never delivered as news
        if self.pg:
            self.channel = self._channel_name()
            self._spawn(self._listen_loop, "kb-events-listen")
            self._spawn(self._notify_loop, "kb-events-notify")
        if self.poll_interval:
            self._spawn(self._poll_loop, "kb-events-poll")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads and end every subscription."""
        self._stop.set()
        self._outbox.put(None)
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        self._started = False
        self.listening.clear()
        with self._lock:
            subs = [(loop, set(s)) for loop, s in self._subs.items()]
        for loop, ss in subs:
            for s in ss:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(s.close)

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ subscribing
    def subscribe(self, flt: EventFilter, *, last_event_id: int | None = None) -> Subscription:
        """A new async subscription on the running event loop. It is registered at once, so no
        event committed after this call is missed; with ``last_event_id`` the events after that
        id are replayed from ``kb_events`` first."""
        loop = asyncio.get_running_loop()
        sub = Subscription(self, flt, loop, last_event_id, self.max_queue)
        with self._lock:
            self._subs.setdefault(loop, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            ss = self._subs.get(sub.loop)
            if ss is not None:
                ss.discard(sub)
                if not ss:
                    del self._subs[sub.loop]

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        """A plain callback for every event (called on the publishing thread; keep it quick)."""
        self._callbacks.append(fn)

    def remove_callback(self, fn: Callable[[Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(fn)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    # ------------------------------------------------------------------ publishing
    def publish_change(self, change: dict[str, Any]) -> None:
        """The :class:`SecretService` listener: deliver locally, and NOTIFY other replicas."""
        ev = Event.from_change(change)
        if self._deliver(ev):
            self.stats["local"] += 1
            if self.pg and self._started:
                self._outbox.put(ev)

    def _deliver(self, ev: Event) -> bool:
        """Deliver once per event id; False if this id was delivered before."""
        with self._lock:
            if ev.id in self._seen:
                return False
            self._seen.add(ev.id)
            self._seen_order.append(ev.id)
            if len(self._seen_order) > _SEEN_MAX:
                self._seen.discard(self._seen_order.popleft())
            self._high = max(self._high, ev.id)
            targets = list(self._subs.items())
        for loop, subs in targets:
            batch = list(subs)
            try:
                loop.call_soon_threadsafe(_dispatch, batch, ev)
            except RuntimeError:  # that loop is closed: its subscriptions are gone
                with self._lock:
                    self._subs.pop(loop, None)
        for fn in list(self._callbacks):
            try:
                fn(ev)
            except Exception:  # a broken callback must not stop the others
                log.exception("event callback failed")
        return True

    # ------------------------------------------------------------------ the table
    def last_id(self) -> int:
        """The highest event id stored (0 if none)."""
        ev = tables.events
        with self.store.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(ev.c.id))).scalar() or 0)

    def replay(self, flt: EventFilter, after_id: int, limit: int | None = None) -> list[Event]:
        """Stored events with id > ``after_id`` that match ``flt``, oldest first."""
        ev = tables.events
        out: list[Event] = []
        cursor = after_id
        while True:
            q = sa.select(ev).where(ev.c.id > cursor, ev.c.org == flt.org)
            if flt.project is not None:
                q = q.where(ev.c.project == flt.project)
            if flt.environment is not None:
                q = q.where(ev.c.environment == flt.environment)
            if flt.name is not None and not _is_glob(flt.name):
                q = q.where(ev.c.name == flt.name)
            with self.store.connect() as conn:
                rows = conn.execute(q.order_by(ev.c.id).limit(_REPLAY_PAGE)).all()
            for r in rows:
                e = Event.from_change(dict(r._mapping))
                if flt.matches(e):
                    out.append(e)
                    if limit is not None and len(out) >= limit:
                        return out
            if len(rows) < _REPLAY_PAGE:
                return out
            cursor = int(rows[-1].id)

    def _catch_up(self) -> int:
        """Deliver stored events this bus has not delivered (other writers); returns how many."""
        ev = tables.events
        with self._lock:
            after = max(self._floor, self._high - _LOOKBACK)
        n = 0
        while True:
            with self.store.connect() as conn:
                rows = conn.execute(
                    sa.select(ev).where(ev.c.id > after).order_by(ev.c.id).limit(_REPLAY_PAGE)
                ).all()
            for r in rows:
                if self._deliver(Event.from_change(dict(r._mapping))):
                    n += 1
            if len(rows) < _REPLAY_PAGE:
                return n
            after = int(rows[-1].id)

    def _poll_loop(self) -> None:
        assert self.poll_interval
        while not self._stop.wait(self.poll_interval):
            try:
                self.stats["polled"] += self._catch_up()
            except KeybrokerError as exc:
                log.warning("event poll failed: %s", exc.code)

    # ------------------------------------------------------------------ PostgreSQL
    def _connect_args(self) -> tuple[list[Any], dict[str, Any]]:
        eng = self.store.engine
        cargs, cparams = eng.dialect.create_connect_args(eng.url)
        return list(cargs), dict(cparams)

    def _pg_connect(self) -> Any:
        import psycopg

        cargs, cparams = self._connect_args()
        cparams.pop("autocommit", None)
        return psycopg.connect(*cargs, autocommit=True, connect_timeout=5, **cparams)

    def _channel_name(self) -> str:
        """One channel per database schema, so deployments (and tests) sharing a database but
        not a schema never hear each other."""
        with self.store.connect() as conn:
            db, schema = conn.execute(sa.text("select current_database(), current_schema()")).one()
        digest = hashlib.sha256(f"{db}/{schema}".encode()).hexdigest()[:24]
        return f"kb_events_{digest}"

    def _listen_loop(self) -> None:
        import psycopg

        backoff = 0.05
        first = True
        while not self._stop.is_set():
            try:
                with self._pg_connect() as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    if not first:
                        self.stats["reconnects"] += 1
                    first = False
                    # what was committed while not listening (before the first LISTEN, or
                    # during a reconnect) comes from the table; duplicates are dropped by id
                    self._catch_up()
                    self.listening.set()
                    backoff = 0.05
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.25):
                            self._on_notify(n.payload)
            except (psycopg.Error, OSError, KeybrokerError) as exc:
                self.listening.clear()
                log.warning("event LISTEN connection lost (%s); reconnecting", type(exc).__name__)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.reconnect_max)
            finally:
                self.listening.clear()

    def _on_notify(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            if data.get("replica") == self.replica_id:
                return
            ev = Event.from_change(data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed event notification")
            return
        if self._deliver(ev):
            self.stats["remote"] += 1

    def _notify_loop(self) -> None:
        import psycopg

        conn: Any = None
        pending: list[Event] = []
        while True:
            if not pending:
                item = self._outbox.get()
                if item is None:
                    break
                pending.append(item)
                while len(pending) < 256:
                    try:
                        more = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._stop.set()
                        break
                    pending.append(more)
            try:
                if conn is None or conn.closed:
                    conn = self._pg_connect()
                self._send(conn, pending)
                pending = []
            except (psycopg.Error, OSError) as exc:
                self.stats["notify_errors"] += 1
                log.warning("event NOTIFY failed (%s); retrying", type(exc).__name__)
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                if self._stop.wait(0.1):
                    break
            if self._stop.is_set() and self._outbox.empty() and not pending:
                break
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _send(self, conn: Any, events: Iterable[Event]) -> None:
        with conn.transaction():
            for ev in events:
                payload = json.dumps({**ev.to_dict(), "replica": self.replica_id}, separators=(",", ":"))
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _dispatch(subs: list[Subscription], ev: Event) -> None:
    for s in subs:
        s._put(ev)
