"""A resolution chain: several stores asked in order, first hit wins.

The seed designs' hybrid key manager: for example environment (dev only) -> local encrypted file
-> keybroker server -> Vault. Every hop (each store asked, hit or miss or error) goes to the
``audit`` callback, and the chain remembers which store answered each name so ``keybroker
status`` and the health endpoint can say where a secret came from.

A store that is down is an error by default (``on_error="raise"``): falling through to a later
store could silently hand out an older or a development value. ``on_error="skip"`` falls through
and still audits the failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from keybroker.backends._base import (
    KeyStore,
    Names,
    SecretInfo,
    StoreCapabilities,
    Versions,
)
from keybroker.core import AuditLog, Clock, Principal, SystemClock
from keybroker.crypto import SecretValue
from keybroker.errors import (
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
)

__all__ = ["Hop", "ResolutionChain", "audit_log_callback"]


@dataclass(frozen=True, slots=True)
class Hop:
    """One store asked about one name. ``outcome``: hit, miss or error; ``code`` the error code."""

    name: str
    store: str  # location (no credentials)
    kind: str
    outcome: str
    at: datetime
    code: str | None = None
    position: int = 0


AuditCallback = Callable[[Hop], None]


def audit_log_callback(audit: AuditLog, principal: Principal) -> AuditCallback:
    """Hops into keybroker's hash-chained audit log (action ``chain.resolve``). The audit
    record names the store and the outcome, never a value."""

    def record(hop: Hop) -> None:
        audit.record(
            principal,
            "chain.resolve",
            hop.name,
            result=hop.outcome if hop.code is None else f"{hop.outcome}:{hop.code}",
            detail={"store": hop.store, "kind": hop.kind, "position": hop.position},
        )

    return record


class ResolutionChain:
    """Read-only KeyStore over ``stores`` (first hit wins). ``where(name)`` says who answered."""

    kind = "chain"
    capabilities = StoreCapabilities(writable=False, versions=True, labels=frozenset())

    def __init__(
        self,
        stores: Sequence[KeyStore],
        *,
        audit: AuditCallback | None = None,
        on_error: str = "raise",
        clock: Clock | None = None,
    ) -> None:
        if not stores:
            raise InvalidInput("a resolution chain needs at least one store")
        if on_error not in ("raise", "skip"):
            raise InvalidInput("on_error is raise or skip")
        self.stores = list(stores)
        self.audit = audit
        self.on_error = on_error
        self.clock: Clock = clock or SystemClock()
        self._where: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResolutionChain({[s.location() for s in self.stores]!r})"

    def location(self) -> str:
        return "chain:" + ",".join(s.location() for s in self.stores)

    def _hop(self, name: str, i: int, outcome: str, code: str | None = None) -> None:
        if self.audit is None:
            return
        s = self.stores[i]
        self.audit(Hop(name, s.location(), s.kind, outcome, self.clock.now(), code, i))

    def where(self, name: str) -> str | None:
        """Location of the store that answered ``name`` last, or None if none has yet."""
        with self._lock:
            i = self._where.get(name)
        return self.stores[i].location() if i is not None else None

    def sources(self) -> dict[str, str]:
        """Every name resolved so far and where it was found (for status and health)."""
        with self._lock:
            return {n: self.stores[i].location() for n, i in sorted(self._where.items())}

    def _first(self, name: str) -> tuple[int, SecretValue]:
        errors: list[KeybrokerError] = []
        for i, store in enumerate(self.stores):
            try:
                value = store.get(name)
            except (SecretNotFound, SecretDeleted) as exc:
                self._hop(name, i, "miss", exc.code if isinstance(exc, SecretDeleted) else None)
                continue
            except KeybrokerError as exc:
                self._hop(name, i, "error", exc.code)
                if self.on_error == "raise":
                    raise
                errors.append(exc)
                continue
            self._hop(name, i, "hit")
            with self._lock:
                self._where[name] = i
            return i, value
        with self._lock:
            self._where.pop(name, None)
        if errors:
            raise errors[0]
        raise SecretNotFound(f"no store in the chain holds {name!r}")

    def resolve(self, name: str) -> tuple[SecretValue, str]:
        """The value and the location of the store that had it."""
        i, value = self._first(name)
        return value, self.stores[i].location()

    # ------------------------------------------------------------------ protocol
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        if version is None and label in (None, "current"):
            return self._first(name)[1]
        # a specific version means the store that holds the secret now
        i, _ = self._first(name)
        return self.stores[i].get(name, version=version, label=label)

    def get_many(self, names: Iterable[str]) -> dict[str, SecretValue]:
        out: dict[str, SecretValue] = {}
        for n in names:
            try:
                out[n] = self._first(n)[1]
            except SecretNotFound:
                continue
        return out

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        raise PermissionDenied("a resolution chain is read-only: write to one of its stores")

    def delete(self, name: str) -> None:
        raise PermissionDenied("a resolution chain is read-only: delete in one of its stores")

    def list(self, prefix: str = "") -> Names:
        names: set[str] = set()
        for store in self.stores:
            try:
                names.update(store.list(prefix))
            except KeybrokerError:
                if self.on_error == "raise":
                    raise
        return sorted(names)

    def versions(self, name: str) -> Versions:
        i, _ = self._first(name)
        return self.stores[i].versions(name)

    def metadata(self, name: str) -> SecretInfo:
        i, _ = self._first(name)
        return self.stores[i].metadata(name)

    def close(self) -> None:
        for s in self.stores:
            s.close()
