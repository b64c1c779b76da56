"""The KeyStore protocol every backend implements, its plain data types and shared helpers.

A key store holds named secrets, each with versions. Version identifiers are strings because the
stores disagree on their shape (integers in keybroker, Vault and Google; UUIDs in AWS; hex ids in
Azure). Labels are keybroker's three rotation labels, ``current``, ``previous`` and ``pending``;
each adapter maps its own notion onto them (AWS staging labels, Vault's latest version, ...).

Adapters translate every foreign error into the :mod:`keybroker.errors` tree at the boundary
(``raise ... from exc``) and never put a value into a message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, InvalidName, KeybrokerError, SecretNotFound, StoreError

__all__ = [
    "LABELS",
    "KeyStore",
    "Names",
    "RetryPolicy",
    "RotatingStore",
    "SecretInfo",
    "StoreCapabilities",
    "VersionInfo",
    "Versions",
    "as_secret",
    "check_label",
    "get_many",
    "is_throttled",
    "throttled",
]

LABELS = ("current", "previous", "pending")

#: ``list`` is a method name on the protocol, so its result type gets an alias mypy can see.
Names = list[str]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a secret, as the store reports it. Never holds the value."""

    version: str
    created_at: datetime | None = None
    labels: tuple[str, ...] = ()
    state: str = "active"  # active | deleted | destroyed

    @property
    def readable(self) -> bool:
        return self.state == "active"


#: Versions of one secret, oldest first (an alias for the same reason as :data:`Names`).
Versions = list[VersionInfo]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """Metadata of one secret in one store. Never holds the value."""

    name: str
    store: str
    current_version: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a store can do, so callers (migration, chain) need not probe by failing.

    ``versions``: old versions stay readable with ``get(version=...)``.
    ``labels``: the labels ``put`` accepts (``current`` always; ``pending`` where rotation staging
    exists). ``writable``: ``put``/``delete`` work at all."""

    writable: bool = True
    versions: bool = True
    labels: frozenset[str] = frozenset({"current"})


@runtime_checkable
class KeyStore(Protocol):
    """A place secrets live. Every implementation raises only :mod:`keybroker.errors` classes:

    - ``SecretNotFound`` (no such name), ``VersionNotFound`` (no such version or label),
      ``SecretDeleted`` (exists but deleted);
    - ``AuthenticationError`` (bad or expired credentials), ``PermissionDenied`` (authenticated
      but not allowed);
    - ``StoreError`` (unreachable, throttled after retries, failed); ``details["throttled"]`` is
      true when the store asked us to slow down;
    - ``InvalidInput`` / ``InvalidName`` (a request the store can never satisfy).
    """

    @property
    def kind(self) -> str:
        """Short type name: vault, aws-sm, file, env, keybroker, ..."""
        ...

    @property
    def capabilities(self) -> StoreCapabilities: ...

    def location(self) -> str:
        """Where this store is, for reports and state files: no credentials, no values."""
        ...

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        """The value of ``version``, or of ``label`` (default ``current``)."""
        ...

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        """Write a new version (``label`` current or, where supported, pending); returns its id."""
        ...

    def delete(self, name: str) -> None:
        """Make the secret stop resolving (recoverably, where the store supports it)."""
        ...

    def list(self, prefix: str = "") -> Names:
        """Names of the live secrets, sorted, optionally only those starting with ``prefix``."""
        ...

    def versions(self, name: str) -> Versions:
        """Every version the store still knows, oldest first."""
        ...

    def metadata(self, name: str) -> SecretInfo: ...

    def close(self) -> None: ...


@runtime_checkable
class RotatingStore(KeyStore, Protocol):
    """A store with a pending stage: ``put(label="pending")`` then ``promote``."""

    def promote(self, name: str) -> None:
        """``pending`` becomes ``current``; the old current becomes ``previous``."""
        ...


def get_many(store: KeyStore, names: Iterable[str]) -> dict[str, SecretValue]:
    """Current values of ``names``; names the store does not hold are left out.

    Uses the store's own ``get_many`` (one round trip where the store offers a batch API)."""
    fn = getattr(store, "get_many", None)
    if callable(fn):
        out: dict[str, SecretValue] = fn(list(names))
        return out
    found: dict[str, SecretValue] = {}
    for n in names:
        try:
            found[n] = store.get(n)
        except SecretNotFound:
            continue
    return found


def as_secret(value: SecretValue | str | bytes) -> SecretValue:
    if isinstance(value, SecretValue):
        return value
    if isinstance(value, str | bytes | bytearray):
        return SecretValue(bytes(value) if isinstance(value, bytearray) else value)
    raise InvalidInput("a secret value must be text or bytes")


def check_label(label: str | None, allowed: Iterable[str] = LABELS) -> str:
    lab = label or "current"
    if lab not in tuple(allowed):
        raise InvalidInput(f"unknown or unsupported label {lab!r} (use {', '.join(allowed)})")
    return lab


def check_store_name(name: str) -> str:
    """Names that can travel into any store's path or URL: no empty or dot segments, no
    characters that URLs or shells treat specially. (Stricter rules: keybroker's own.)"""
    if not isinstance(name, str) or not name:
        raise InvalidName("a secret name must not be empty")
    if len(name) > 512:
        raise InvalidName("a secret name must be at most 512 characters")
    if any(c in name for c in "?#%\\\0\n\r\t ") or name.startswith("/") or name.endswith("/"):
        raise InvalidName(f"invalid secret name {_preview(name)} for this store")
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        raise InvalidName(f"invalid secret name {_preview(name)}: empty or dot path segment")
    return name


def _preview(s: object) -> str:
    text = repr(s)
    return text if len(text) <= 40 else text[:37] + "...'"


# ---------------------------------------------------------------- throttling and retries
def throttled(message: str, **details: Any) -> StoreError:
    """The error a store raises when it asked us to slow down (and retries ran out)."""
    return StoreError(message, throttled=True, **details)


def is_throttled(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and bool(exc.details.get("throttled"))


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with full jitter, for idempotent reads only.

    A write is never retried: a timeout or a dropped connection may hide a write that was
    applied, and writing again would add a duplicate version."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn``; on a throttled :class:`StoreError` wait and try again."""
        attempt = 0
        while True:
            try:
                return fn()
            except KeybrokerError as exc:
                attempt += 1
                if not is_throttled(exc) or attempt >= self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
                self.sleep(delay * self.rng())


NO_RETRY = RetryPolicy(attempts=1)


def redact_url_params(params: Mapping[str, str]) -> dict[str, str]:
    """Query parameters safe to show: credentials never travel in URLs, but be sure."""
    bad = ("token", "secret", "password", "passphrase", "key", "credential")
    return {k: ("[redacted]" if any(b in k.lower() for b in bad) else v) for k, v in params.items()}
