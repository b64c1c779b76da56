"""An in-memory key store: the reference implementation of the protocol, for tests and demos."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from keybroker.backends._base import (
    LABELS,
    Names,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    as_secret,
    check_label,
    check_store_name,
)
from keybroker.core import Clock, SystemClock
from keybroker.crypto import SecretValue
from keybroker.errors import SecretDeleted, SecretNotFound, VersionNotFound

__all__ = ["MemoryStore"]


@dataclass
class _Entry:
    created_at: datetime
    updated_at: datetime
    values: dict[int, tuple[bytes, datetime]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    deleted: bool = False


class MemoryStore:
    """Keeps everything in a dict, with keybroker's own version and label rules."""

    kind = "memory"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current", "pending"}))

    def __init__(self, name: str = "memory", clock: Clock | None = None) -> None:
        self._name = name
        self._clock: Clock = clock or SystemClock()
        self._data: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        #: every call, for tests that count round trips: (operation, name)
        self.calls: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"MemoryStore({self._name!r}, {len(self._data)} secrets)"

    def location(self) -> str:
        return f"memory://{self._name}"

    def _entry(self, name: str, *, allow_deleted: bool = False) -> _Entry:
        e = self._data.get(name)
        if e is None:
            raise SecretNotFound(f"no secret {name!r} in {self.location()}")
        if e.deleted and not allow_deleted:
            raise SecretDeleted(f"secret {name!r} in {self.location()} is deleted")
        return e

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        with self._lock:
            self.calls.append(("get", name))
            e = self._entry(name)
            if version is not None:
                try:
                    n = int(version)
                except ValueError:
                    raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
            else:
                lab = check_label(label)
                if lab not in e.labels:
                    raise VersionNotFound(f"secret {name!r} has no {lab} version")
                n = e.labels[lab]
            if n not in e.values:
                raise VersionNotFound(f"secret {name!r} has no version {n}")
            return SecretValue(e.values[n][0])

    def get_many(self, names: list[str]) -> dict[str, SecretValue]:
        """One "round trip" for many names (what batch APIs give the cache)."""
        with self._lock:
            self.calls.append(("get_many", ",".join(names)))
            out: dict[str, SecretValue] = {}
            for n in names:
                e = self._data.get(n)
                if e is None or e.deleted or "current" not in e.labels:
                    continue
                out[n] = SecretValue(e.values[e.labels["current"]][0])
            return out

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        check_store_name(name)
        lab = check_label(label, ("current", "pending"))
        raw = as_secret(value).reveal_bytes()
        now = self._clock.now()
        with self._lock:
            self.calls.append(("put", name))
            e = self._data.get(name)
            if e is None:
                if lab == "pending":
                    raise SecretNotFound(f"no secret {name!r} to stage a pending version for")
                e = self._data[name] = _Entry(now, now)
            elif e.deleted:
                raise SecretDeleted(f"secret {name!r} is deleted")
            n = max(e.values, default=0) + 1
            e.values[n] = (raw, now)
            e.updated_at = now
            if lab == "current":
                if "current" in e.labels:
                    e.labels["previous"] = e.labels["current"]
                e.labels["current"] = n
                e.labels.pop("pending", None)
            else:
                e.labels["pending"] = n
            return str(n)

    def promote(self, name: str) -> None:
        with self._lock:
            e = self._entry(name)
            if "pending" not in e.labels:
                raise VersionNotFound(f"secret {name!r} has no pending version to promote")
            if "current" in e.labels:
                e.labels["previous"] = e.labels["current"]
            e.labels["current"] = e.labels.pop("pending")

    def delete(self, name: str) -> None:
        with self._lock:
            self.calls.append(("delete", name))
            e = self._entry(name)
            e.deleted = True

    def list(self, prefix: str = "") -> Names:
        with self._lock:
            self.calls.append(("list", prefix))
            return sorted(n for n, e in self._data.items() if not e.deleted and n.startswith(prefix))

    def versions(self, name: str) -> Versions:
        with self._lock:
            e = self._entry(name, allow_deleted=True)
            return [
                VersionInfo(str(n), created, tuple(lab for lab in LABELS if e.labels.get(lab) == n))
                for n, (_, created) in sorted(e.values.items())
            ]

    def metadata(self, name: str) -> SecretInfo:
        with self._lock:
            e = self._entry(name, allow_deleted=True)
            cur = e.labels.get("current")
            return SecretInfo(
                name,
                self.kind,
                str(cur) if cur is not None else None,
                e.created_at,
                e.updated_at,
                deleted=e.deleted,
            )

    def close(self) -> None:
        return None
