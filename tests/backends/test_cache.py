"""CachedStore: TTL by the injected clock, batch fetch, invalidation (one, all, change events)."""

from __future__ import annotations

import pytest

from keybroker.backends import CachedStore, MemoryStore
from keybroker.core import ManualClock, Scope, SecretService
from keybroker.errors import InvalidInput, SecretNotFound


def gets(m: MemoryStore) -> int:
    return sum(1 for op, _ in m.calls if op in ("get", "get_many"))


def test_ttl(memory_store: MemoryStore, clock: ManualClock) -> None:
    memory_store.put("K", "v1")
    c = CachedStore(memory_store, ttl=60, clock=clock)
    assert c.get("K").reveal() == "v1"
    memory_store.put("K", "v2")  # behind the cache's back
    clock.advance(59)
    assert c.get("K").reveal() == "v1"
    assert c.stats.hits == 1
    clock.advance(1)
    assert c.get("K").reveal() == "v2"
    assert c.stats.misses == 2


def test_versions_and_labels_bypass_cache(memory_store: MemoryStore, clock: ManualClock) -> None:
    memory_store.put("K", "v1")
    memory_store.put("K", "v2")
    c = CachedStore(memory_store, ttl=60, clock=clock)
    c.get("K")
    assert c.get("K", label="previous").reveal() == "v1"
    assert c.get("K", version="1").reveal() == "v1"
    assert c.cached_names() == ["K"]


def test_get_many_one_round_trip(memory_store: MemoryStore, clock: ManualClock) -> None:
    for n in ("A", "B", "C"):
        memory_store.put(n, n.lower())
    c = CachedStore(memory_store, ttl=60, clock=clock)
    c.get("A")
    before = gets(memory_store)
    out = c.get_many(["A", "B", "C", "MISSING"])
    assert {k: v.reveal() for k, v in out.items()} == {"A": "a", "B": "b", "C": "c"}
    assert gets(memory_store) == before + 1  # B, C and MISSING in one batch
    assert [op for op, _ in memory_store.calls][-1] == "get_many"
    again = c.get_many(["A", "B", "C"])
    assert len(again) == 3
    assert gets(memory_store) == before + 1


def test_invalidate_one_and_all(memory_store: MemoryStore, clock: ManualClock) -> None:
    memory_store.put("A", "a1")
    memory_store.put("B", "b1")
    c = CachedStore(memory_store, ttl=600, clock=clock)
    c.get_many(["A", "B"])
    memory_store.put("A", "a2")
    memory_store.put("B", "b2")
    c.invalidate("A")
    assert c.get("A").reveal() == "a2"
    assert c.get("B").reveal() == "b1"
    c.invalidate()
    assert c.get("B").reveal() == "b2"


def test_writes_through_the_cache_invalidate(memory_store: MemoryStore, clock: ManualClock) -> None:
    c = CachedStore(memory_store, ttl=600, clock=clock)
    c.put("A", "1")
    assert c.get("A").reveal() == "1"
    c.put("A", "2")
    assert c.get("A").reveal() == "2"
    c.put("A", "3", label="pending")
    c.promote("A")
    assert c.get("A").reveal() == "3"
    c.delete("A")
    with pytest.raises(Exception) as e:
        c.get("A")
    assert getattr(e.value, "code", "") == "secret_deleted"


def test_negative_cache(memory_store: MemoryStore, clock: ManualClock) -> None:
    c = CachedStore(memory_store, ttl=600, clock=clock, negative_ttl=5)
    with pytest.raises(SecretNotFound):
        c.get("LATER")
    memory_store.put("LATER", "now")
    with pytest.raises(SecretNotFound):
        c.get("LATER")  # remembered miss
    clock.advance(5)
    assert c.get("LATER").reveal() == "now"


def test_change_stream_invalidates(secrets: SecretService, me: object, clock: ManualClock) -> None:
    """Wired to the core's change events, a write elsewhere drops the stale entry at once."""
    from keybroker.backends import NativeStore

    scope = Scope("default", "dev")
    native = NativeStore(secrets, me, scope)  # type: ignore[arg-type]
    c = CachedStore(native, ttl=3600, clock=clock)
    secrets.listeners.append(c.on_change)
    secrets.put(me, scope, "K", "one")  # type: ignore[arg-type]
    assert c.get("K").reveal() == "one"
    secrets.put(me, scope, "K", "two")  # type: ignore[arg-type]
    assert c.get("K").reveal() == "two"
    c.on_change({"kind": "reset"})  # an event naming nothing clears everything
    assert c.cached_names() == []


def test_bad_ttl(memory_store: MemoryStore) -> None:
    with pytest.raises(InvalidInput):
        CachedStore(memory_store, ttl=0)


def test_bounded(memory_store: MemoryStore, clock: ManualClock) -> None:
    c = CachedStore(memory_store, ttl=600, clock=clock, max_entries=10)
    for i in range(30):
        memory_store.put(f"K{i}", "v")
        c.get(f"K{i}")
    assert len(c.cached_names()) <= 10
