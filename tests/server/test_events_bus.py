"""EventBus: in-process fan-out, filters, Last-Event-ID replay, PostgreSQL LISTEN/NOTIFY
between replicas, SQLite polling. Runs on SQLite and PostgreSQL (the ``secrets`` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from keybroker.core import Event, EventBus, EventFilter, Scope, SecretService, SubscriptionLagged
from keybroker.errors import InvalidInput
from keybroker.store import Store

VALUE = "sk-never-in-an-event-0123456789"
WIRE_FIELDS = ("id", "kind", "org", "project", "environment", "name", "version", "ts")


async def _take(sub: Any, n: int, timeout: float = 5.0) -> list[Event]:
    out: list[Event] = []

    async def go() -> None:
        async for ev in sub:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


def _setup(secrets: SecretService, me: Any) -> None:
    secrets.create_project(me, "app")
    secrets.create_project(me, "other")


def test_local_fanout_with_filters(secrets: SecretService, me: Any) -> None:
    _setup(secrets, me)
    bus = EventBus(secrets.store)
    bus.attach(secrets)

    async def main() -> None:
        all_ = bus.subscribe(EventFilter("default"))
        app_dev = bus.subscribe(EventFilter("default", "app", "dev"))
        one = bus.subscribe(EventFilter("default", "app", "dev", "DB_PASSWORD"))
        glob = bus.subscribe(EventFilter("default", name="db/*"))
        other_org = bus.subscribe(EventFilter("acme"))

        def writes() -> None:
            secrets.put(me, Scope("app", "dev"), "API_KEY", VALUE)
            secrets.put(me, Scope("app", "prod"), "API_KEY", VALUE)
            secrets.put(me, Scope("app", "dev"), "DB_PASSWORD", VALUE)
            secrets.put(me, Scope("other", "dev"), "db/main", VALUE)
            secrets.rotate(me, Scope("app", "dev"), "DB_PASSWORD", VALUE + "2")
            secrets.promote(me, Scope("app", "dev"), "DB_PASSWORD")
            secrets.delete(me, Scope("app", "dev"), "API_KEY")

        await asyncio.to_thread(writes)
        got_all = await _take(all_, 7)
        assert [e.kind for e in got_all] == [
            "created",
            "created",
            "created",
            "created",
            "rotated",
            "promoted",
            "deleted",
        ]
        assert [(e.name, e.version) for e in await _take(app_dev, 4)] == [
            ("API_KEY", 1),
            ("DB_PASSWORD", 1),
            ("DB_PASSWORD", 2),
            ("DB_PASSWORD", 2),
        ]
        assert [e.kind for e in await _take(one, 3)] == ["created", "rotated", "promoted"]
        assert [e.name for e in await _take(glob, 1)] == ["db/main"]
        with pytest.raises(TimeoutError):
            await _take(other_org, 1, timeout=0.2)
        ids = [e.id for e in got_all]
        assert ids == sorted(ids) and len(set(ids)) == 7
        for e in got_all:
            assert VALUE not in json.dumps(e.to_dict())
            assert set(e.to_dict()) == set(WIRE_FIELDS)
        for s in (all_, app_dev, one, glob, other_org):
            s.close()
        assert bus.subscriber_count == 0

    asyncio.run(main())


def test_replay_after_last_event_id_then_live_without_duplicates(secrets: SecretService, me: Any) -> None:
    _setup(secrets, me)
    bus = EventBus(secrets.store)
    bus.attach(secrets)
    for i in range(5):
        secrets.put(me, Scope("app", "dev"), "K", f"{VALUE}{i}")
    secrets.put(me, Scope("app", "prod"), "K", VALUE)
    first = bus.replay(EventFilter("default", "app", "dev"), 0)
    assert [e.version for e in first] == [1, 2, 3, 4, 5]

    async def main() -> None:
        sub = bus.subscribe(EventFilter("default", "app", "dev"), last_event_id=first[1].id)
        # a write between subscribe and the replay query is delivered once, not twice
        await asyncio.to_thread(secrets.put, me, Scope("app", "dev"), "K", VALUE)
        got = await _take(sub, 4)
        assert [e.version for e in got] == [3, 4, 5, 6]
        with pytest.raises(TimeoutError):
            await _take(sub, 1, timeout=0.2)
        sub.close()

    asyncio.run(main())
    # the replay honours the same filters and the org
    assert bus.replay(EventFilter("acme"), 0) == []
    assert [e.environment for e in bus.replay(EventFilter("default", environment="prod"), 0)] == ["prod"]


def test_slow_subscriber_is_dropped_with_lagged(secrets: SecretService, me: Any) -> None:
    _setup(secrets, me)
    bus = EventBus(secrets.store, max_queue=3)
    bus.attach(secrets)

    async def main() -> None:
        sub = bus.subscribe(EventFilter("default"))
        await asyncio.to_thread(lambda: [secrets.put(me, Scope("app", "dev"), "K", VALUE) for _ in range(5)])
        await asyncio.sleep(0.05)
        with pytest.raises(SubscriptionLagged):
            await sub.__anext__()
        assert bus.subscriber_count == 0

    asyncio.run(main())


def test_callbacks_and_a_broken_callback(secrets: SecretService, me: Any) -> None:
    _setup(secrets, me)
    bus = EventBus(secrets.store)
    bus.attach(secrets)
    bus.attach(secrets)  # idempotent
    got: list[Event] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("boom")

    bus.add_callback(broken)
    bus.add_callback(got.append)
    secrets.put(me, Scope("app", "dev"), "K", VALUE)
    assert [e.kind for e in got] == ["created"]
    bus.detach(secrets)
    secrets.put(me, Scope("app", "dev"), "K", VALUE)
    assert len(got) == 1


def _wait(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_other_writer_reaches_subscribers(secrets: SecretService, me: Any, store_url: str) -> None:
    """A second bus on its own Store (another replica / process) hears writes made through the
    first: by LISTEN/NOTIFY on PostgreSQL, by polling kb_events on SQLite."""
    _setup(secrets, me)
    writer = EventBus(secrets.store)
    writer.attach(secrets)
    other_store = Store(store_url)
    pg = other_store.dialect == "postgresql"
    reader = EventBus(other_store, poll_interval=None if pg else 0.05)
    got: list[Event] = []
    reader.add_callback(got.append)
    writer.start()
    reader.start()
    try:
        if pg:
            assert reader.listening.wait(5) and writer.listening.wait(5)
        secrets.put(me, Scope("app", "dev"), "K", VALUE)
        _wait(lambda: len(got) == 1)
        assert got[0].name == "K" and got[0].kind == "created"
        # the writer does not hear its own event twice
        time.sleep(0.1)
        assert writer.stats["remote"] == 0 and len(got) == 1
        if pg:
            assert reader.stats["remote"] == 1
        # a bus closed and started again (an app restarted) still tells the other replica
        writer.close()
        writer.start()
        if pg:
            assert writer.listening.wait(5)
        secrets.put(me, Scope("app", "dev"), "K", VALUE)
        _wait(lambda: len(got) == 2)
        assert got[1].version == 2
    finally:
        writer.close()
        reader.close()
        other_store.dispose()


def test_pg_listener_reconnects_and_catches_up(secrets: SecretService, me: Any) -> None:
    if secrets.store.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    _setup(secrets, me)
    writer = EventBus(secrets.store)
    writer.attach(secrets)
    other_store = Store(secrets.store.url)
    reader = EventBus(other_store, reconnect_max=0.2)
    got: list[Event] = []
    reader.add_callback(got.append)
    writer.start()
    reader.start()
    try:
        assert reader.listening.wait(5)
        secrets.put(me, Scope("app", "dev"), "K", VALUE)
        _wait(lambda: len(got) == 1)
        # kill the reader's LISTEN backend; a write happens while it is gone
        import sqlalchemy as sa

        with secrets.store.begin() as c:
            c.execute(
                sa.text(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where query like 'LISTEN kb_events_%' and pid <> pg_backend_pid()"
                )
            )
        _wait(lambda: not reader.listening.is_set(), 5)
        secrets.put(me, Scope("app", "dev"), "K", VALUE + "2")
        _wait(lambda: len(got) == 2, 10)
        assert [e.version for e in got] == [1, 2]
        assert reader.stats["reconnects"] >= 1
    finally:
        writer.close()
        reader.close()
        other_store.dispose()


def test_bus_close_ends_subscriptions(secrets: SecretService) -> None:
    bus = EventBus(secrets.store)

    async def main() -> None:
        sub = bus.subscribe(EventFilter("default"))
        done = threading.Event()

        async def consume() -> None:
            async for _ in sub:
                pass
            done.set()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        await asyncio.to_thread(bus.close)
        await asyncio.wait_for(task, 2)
        assert done.is_set()

    asyncio.run(main())


def test_filter_needs_org() -> None:
    with pytest.raises(InvalidInput):
        EventFilter("")


def test_sse_frames_keepalives_and_lag(secrets: SecretService, me: Any) -> None:
    """The /v1/events body generator: retry + connected first, keep-alive comments when idle,
    one frame per event (id, event, data), an error frame and the end when the subscriber lags."""
    from keybroker.core import LocalOwnerAuthorizer
    from keybroker.server._events import _last_event_id, _stream

    _setup(secrets, me)
    bus = EventBus(secrets.store, max_queue=2)
    bus.attach(secrets)

    async def main() -> None:
        sub = bus.subscribe(EventFilter("default", "app"))
        gen = _stream(sub, me, LocalOwnerAuthorizer(), 0.05, 250)
        assert await gen.__anext__() == b"retry: 250\n: connected\n\n"
        assert await gen.__anext__() == b": keep-alive\n\n"
        await asyncio.to_thread(secrets.put, me, Scope("app", "dev"), "K", VALUE)
        frame = (await gen.__anext__()).decode()
        lines = frame.split("\n")
        assert lines[0].startswith("id: ") and lines[1] == "event: created" and lines[2].startswith("data: ")
        assert json.loads(lines[2][6:])["name"] == "K" and VALUE not in frame and frame.endswith("\n\n")
        await asyncio.to_thread(lambda: [secrets.put(me, Scope("app", "dev"), "K", VALUE) for _ in range(3)])
        await asyncio.sleep(0.05)
        rest = [chunk async for chunk in gen]
        assert rest[-1].startswith(b"event: error") and b"subscription_lagged" in rest[-1]
        assert bus.subscriber_count == 0

    asyncio.run(main())
    assert (
        _last_event_id("12", "3") == 12
        and _last_event_id(None, "3") == 3
        and _last_event_id("", None) is None
    )
    for bad in ("-1", "x", "1" * 20):
        with pytest.raises(InvalidInput):
            _last_event_id(bad, None)
