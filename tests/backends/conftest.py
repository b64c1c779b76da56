"""Fixtures for key-store tests: every store in this process, fast roots, a fault injector."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keybroker.backends import EncryptedFileStore, KeyStore, MemoryStore, NativeStore
from keybroker.core import ManualClock, RawRoot, Scope, SecretService
from keybroker.crypto import SecretValue
from keybroker.errors import KeybrokerError


@pytest.fixture
def raw_root() -> RawRoot:
    return RawRoot(os.urandom(32), kind="key")


@pytest.fixture
def file_store(tmp_path: Path, raw_root: RawRoot, clock: ManualClock) -> EncryptedFileStore:
    return EncryptedFileStore(tmp_path / "secrets.kbf", raw_root, clock=clock)


@pytest.fixture
def native_store(secrets: SecretService, me: Any) -> NativeStore:
    return NativeStore(secrets, me, Scope("default", "dev"))


@pytest.fixture
def memory_store(clock: ManualClock) -> MemoryStore:
    return MemoryStore("mem", clock)


class Faulty:
    """Wraps a store; ``fail_put_after(n, exc, applied=True)`` makes the (n+1)-th put raise
    ``exc`` -- after the write was applied when ``applied`` (a timeout that hid a success)."""

    def __init__(self, inner: KeyStore) -> None:
        self.inner = inner
        self.puts = 0
        self._fail_at: int | None = None
        self._exc: KeybrokerError | None = None
        self._applied = True
        self.on_put: Callable[[int], None] | None = None

    def fail_put_after(self, n: int, exc: KeybrokerError, *, applied: bool = True) -> None:
        self._fail_at, self._exc, self._applied = n, exc, applied

    def heal(self) -> None:
        self._fail_at = None

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        if self._fail_at is not None and self.puts >= self._fail_at:
            assert self._exc is not None
            if self._applied:
                self.inner.put(name, value, label=label)
            raise self._exc
        self.puts += 1
        return self.inner.put(name, value, label=label)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


@pytest.fixture
def faulty() -> Callable[[KeyStore], Faulty]:
    return Faulty
