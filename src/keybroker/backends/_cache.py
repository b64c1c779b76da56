"""A read-through cache in front of any key store.

Only current values are cached (reads of a given version or label go straight through). Entries
live ``ttl`` seconds by the injected clock; writes and deletes through the cache invalidate their
name; :meth:`CachedStore.on_change` takes keybroker change events (the change stream) and drops
the name they concern. Misses are cached too, for ``negative_ttl`` seconds (0: never), so a
missing name does not hammer a remote store.

Values stay wrapped in :class:`SecretValue` in memory; nothing is written to disk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keybroker.backends._base import (
    KeyStore,
    Names,
    SecretInfo,
    StoreCapabilities,
    Versions,
    get_many,
)
from keybroker.core import Clock, SystemClock
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, SecretNotFound

__all__ = ["CacheStats", "CachedStore"]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    invalidations: int = 0


class CachedStore:
    """``CachedStore(inner, ttl=300, clock=...)``: the KeyStore protocol, with a cache."""

    def __init__(
        self,
        inner: KeyStore,
        ttl: float = 300.0,
        clock: Clock | None = None,
        *,
        negative_ttl: float = 0.0,
        max_entries: int = 10_000,
    ) -> None:
        if ttl <= 0:
            raise InvalidInput("a cache TTL must be positive (seconds)")
        self.inner = inner
        self.ttl = timedelta(seconds=ttl)
        self.negative_ttl = timedelta(seconds=negative_ttl)
        self.max_entries = max_entries
        self.clock: Clock = clock or SystemClock()
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._values: dict[str, tuple[datetime, SecretValue | None]] = {}

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, ttl={self.ttl.total_seconds():g}s)"

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities

    def location(self) -> str:
        return self.inner.location()

    # ------------------------------------------------------------------ cache
    def _fresh(self, name: str, now: datetime) -> tuple[bool, SecretValue | None]:
        entry = self._values.get(name)
        if entry is None:
            return False, None
        expires, value = entry
        if expires <= now:
            del self._values[name]
            return False, None
        return True, value

    def _remember(self, name: str, value: SecretValue | None, now: datetime) -> None:
        life = self.ttl if value is not None else self.negative_ttl
        if life <= timedelta(0):
            return
        if len(self._values) >= self.max_entries:
            # drop the entries closest to expiry (a cheap approximation of LRU)
            for k, _ in sorted(self._values.items(), key=lambda kv: kv[1][0])[: self.max_entries // 10 + 1]:
                del self._values[k]
        self._values[name] = (now + life, value)

    def invalidate(self, name: str | None = None) -> None:
        """Forget one name, or everything when ``name`` is None."""
        with self._lock:
            if name is None:
                self._values.clear()
            else:
                self._values.pop(name, None)
            self.stats.invalidations += 1

    def on_change(self, event: Mapping[str, Any]) -> None:
        """A listener for keybroker change events (``SecretService.listeners``, the SSE stream):
        drops the name the event is about, or everything if it names none."""
        name = event.get("name")
        self.invalidate(str(name) if name else None)

    def cached_names(self) -> Names:
        now = self.clock.now()
        with self._lock:
            return sorted(n for n, (exp, v) in self._values.items() if exp > now and v is not None)

    # ------------------------------------------------------------------ protocol
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        if version is not None or (label not in (None, "current")):
            return self.inner.get(name, version=version, label=label)
        now = self.clock.now()
        with self._lock:
            hit, value = self._fresh(name, now)
            if hit:
                self.stats.hits += 1
                if value is None:
                    raise SecretNotFound(f"no secret {name!r} in {self.location()} (cached)")
                return value
            self.stats.misses += 1
        try:
            value = self.inner.get(name)
        except SecretNotFound:
            with self._lock:
                self._remember(name, None, now)
            raise
        with self._lock:
            self._remember(name, value, now)
        return value

    def get_many(self, names: Iterable[str]) -> dict[str, SecretValue]:
        """Current values of ``names``, fetching all misses in one batch from the inner store.
        Names neither cached nor held by the store are left out."""
        wanted = list(dict.fromkeys(names))
        now = self.clock.now()
        out: dict[str, SecretValue] = {}
        missing: list[str] = []
        with self._lock:
            for n in wanted:
                hit, value = self._fresh(n, now)
                if hit:
                    self.stats.hits += 1
                    if value is not None:
                        out[n] = value
                else:
                    self.stats.misses += 1
                    missing.append(n)
        if missing:
            fetched = get_many(self.inner, missing)
            with self._lock:
                for n in missing:
                    v = fetched.get(n)
                    self._remember(n, v, now)
                    if v is not None:
                        out[n] = v
        return out

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        try:
            return self.inner.put(name, value, label=label)
        finally:
            self.invalidate(name)

    def promote(self, name: str) -> None:
        fn = getattr(self.inner, "promote", None)
        if not callable(fn):
            raise InvalidInput(f"{self.location()} has no pending stage to promote")
        try:
            fn(name)
        finally:
            self.invalidate(name)

    def delete(self, name: str) -> None:
        try:
            self.inner.delete(name)
        finally:
            self.invalidate(name)

    def list(self, prefix: str = "") -> Names:
        return self.inner.list(prefix)

    def versions(self, name: str) -> Versions:
        return self.inner.versions(name)

    def metadata(self, name: str) -> SecretInfo:
        return self.inner.metadata(name)

    def close(self) -> None:
        self.invalidate()
        self.inner.close()
