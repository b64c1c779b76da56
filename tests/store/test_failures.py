"""Store failures become stable errors and lose nothing: a locked database, a full disk, an
unreachable server, an unusable path."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from keybroker.core import ManualClock, PassphraseRoot, Scope, SecretService, Vault, local_principal
from keybroker.errors import AuditUnavailable, StoreError, StoreFull, StoreLocked
from keybroker.store import Store, tables

S = Scope()
ME = local_principal("test")


def _db_path(url: str) -> str:
    return sa.engine.make_url(url).database or ""


@pytest.fixture
def sqlite_vault(tmp_path: Path, fast_passphrase: PassphraseRoot) -> Iterator[tuple[str, Vault]]:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    store = Store(url)
    v = Vault(store, ManualClock())
    v.initialize(fast_passphrase, ME)
    yield url, v
    store.dispose()


def _open(url: str, passphrase: PassphraseRoot, **store_kw: Any) -> tuple[Store, SecretService]:
    store = Store(url, **store_kw)
    v = Vault(store, ManualClock())
    v.unseal(passphrase, ME)
    return store, SecretService(v)


# ---------------------------------------------------------------- locked
def test_database_locked(sqlite_vault: tuple[str, Vault], fast_passphrase: PassphraseRoot) -> None:
    url, vault = sqlite_vault
    SecretService(vault).put(ME, S, "KEY", "v1")
    store, secrets = _open(url, fast_passphrase, busy_timeout_ms=200)
    try:
        blocker = sqlite3.connect(_db_path(url), isolation_level=None, timeout=0.1)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StoreLocked) as info:
                secrets.put(ME, S, "KEY", "v2")
            assert info.value.code == "store_locked" and info.value.status == 503
            assert "\n" not in info.value.message
            with pytest.raises(StoreLocked):
                secrets.put(ME, S, "NEW", "new")
            # a read needs its audit record, which needs the lock: fail closed, no value
            with pytest.raises(AuditUnavailable) as read_info:
                secrets.get(ME, S, "KEY")
            assert isinstance(read_info.value.__cause__, StoreLocked)
            # metadata reads take no write lock (WAL readers never wait)
            assert secrets.vault.audit.verify().ok
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # nothing lost, nothing half-written, and the same write now succeeds
        assert secrets.get(ME, S, "KEY").value.reveal() == "v1"
        assert secrets.describe(ME, S, "KEY").latest_version == 1
        assert secrets.put(ME, S, "KEY", "v2", cas=1).latest_version == 2
        assert secrets.get(ME, S, "KEY").value.reveal() == "v2"
        assert secrets.vault.audit.verify().ok
    finally:
        store.dispose()


def test_locked_during_unseal_is_not_a_wrong_passphrase(
    sqlite_vault: tuple[str, Vault], fast_passphrase: PassphraseRoot
) -> None:
    url, vault = sqlite_vault
    vault.seal(ME)
    store = Store(url, busy_timeout_ms=200)
    blocker = sqlite3.connect(_db_path(url), isolation_level=None, timeout=0.1)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        v = Vault(store, ManualClock())
        with pytest.raises(StoreLocked):
            v.unseal(fast_passphrase, ME)
        assert v.sealed
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.dispose()


# ---------------------------------------------------------------- disk full
def test_disk_full(sqlite_vault: tuple[str, Vault], fast_passphrase: PassphraseRoot) -> None:
    url, vault = sqlite_vault
    first = SecretService(vault)
    earlier = {f"K{i}": f"value-{i}-" + os.urandom(8).hex() for i in range(5)}
    for k, v in earlier.items():
        first.put(ME, S, k, v)
    with vault.store.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())

    store = Store(url)

    @event.listens_for(store.engine, "connect")
    def _small_disk(dbapi_conn: Any, _rec: Any) -> None:
        # this connection may grow the file by a few pages only: a disk that fills up
        dbapi_conn.execute(f"PRAGMA max_page_count={pages + 12}")

    try:
        v = Vault(store, ManualClock())
        v.unseal(fast_passphrase, ME)
        secrets = SecretService(v)
        big = os.urandom(4 * 1024).hex()  # 8 KiB: a few fit, then the disk is full
        stored = []
        with pytest.raises(StoreFull) as info:
            for i in range(50):
                secrets.put(ME, S, f"BIG{i}", big)
                stored.append(f"BIG{i}")
        assert info.value.code == "store_full" and info.value.status == 507
        assert big[:32] not in str(info.value)
        assert stored, "some writes should fit before the disk fills"
        full_at = f"BIG{len(stored)}"
        with pytest.raises(StoreFull):
            secrets.put(ME, S, "K0", big)  # a new version of an old secret: refused whole
        # a read on the full disk either works or fails closed: never a value without a record
        try:
            assert secrets.get(ME, S, "K1").value.reveal() == earlier["K1"]
        except (AuditUnavailable, StoreFull):
            pass
    finally:
        store.dispose()

    # space comes back: everything written before is intact, the failed writes left nothing
    store2, again = _open(url, fast_passphrase)
    try:
        for k, value in earlier.items():
            assert again.get(ME, S, k).value.reveal() == value
            assert again.describe(ME, S, k).latest_version == 1
        for name in stored:
            assert again.get(ME, S, name).value.reveal() == big
        names = {m.name for m in again.list_secrets(ME, S)}
        assert full_at not in names
        assert again.vault.audit.verify().ok
        with store2.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
            n_versions = conn.execute(
                sa.select(sa.func.count()).select_from(tables.secret_versions)
            ).scalar_one()
        assert n_versions == len(earlier) + len(stored)
    finally:
        store2.dispose()


def test_enospc_is_store_full(sqlite_vault: tuple[str, Vault]) -> None:
    """An OSError(ENOSPC) from the driver is translated too, not only SQLite's own message."""
    import errno

    from keybroker.store import translate_db_error

    err = sa.exc.OperationalError("INSERT", {}, OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(translate_db_error(err), StoreFull)


# ---------------------------------------------------------------- unreachable
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_postgres_unreachable(fast_passphrase: PassphraseRoot) -> None:
    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test?connect_timeout=2")
    try:
        v = Vault(store, ManualClock())
        for op in (
            lambda: v.initialize(fast_passphrase, ME),
            lambda: v.unseal(fast_passphrase, ME),
            lambda: v.status(),
            lambda: v.audit.verify(),
        ):
            with pytest.raises(StoreError) as info:
                op()
            assert info.value.code == "store_unavailable" and info.value.status == 503
            msg = str(info.value)
            assert msg and "\n" not in msg and len(msg) < 300
    finally:
        store.dispose()


def test_is_initialized_does_not_hide_an_unreachable_store() -> None:
    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test?connect_timeout=2")
    try:
        with pytest.raises(StoreError):
            Vault(store, ManualClock()).is_initialized()
    finally:
        store.dispose()


def test_sqlite_path_unusable(tmp_path: Path, fast_passphrase: PassphraseRoot) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for url in (f"sqlite:///{blocker}/sub/vault.db", f"sqlite:///{tmp_path}"):
        with pytest.raises(StoreError) as info:
            store = Store(url)
            try:
                Vault(store, ManualClock()).initialize(fast_passphrase, ME)
            finally:
                store.dispose()
        assert "\n" not in str(info.value)


def test_sqlite_file_is_not_a_database(tmp_path: Path, fast_passphrase: PassphraseRoot) -> None:
    path = tmp_path / "vault.db"
    path.write_bytes(os.urandom(8192))
    before = path.read_bytes()
    store = Store(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreError):
            Vault(store, ManualClock()).initialize(fast_passphrase, ME)
    finally:
        store.dispose()
    assert path.read_bytes() == before


def test_postgres_lock_wait_is_bounded(pg_url: str, fast_passphrase: PassphraseRoot) -> None:
    """A stuck transaction holding the audit chain's head must not hang every writer forever."""
    setup = Store(pg_url)
    v = Vault(setup, ManualClock())
    v.initialize(fast_passphrase, ME)
    SecretService(v).put(ME, S, "KEY", "v1")
    setup.dispose()
    store, secrets = _open(pg_url, fast_passphrase, busy_timeout_ms=300)
    blocker = sa.create_engine(pg_url)
    try:
        with blocker.connect() as conn:
            conn.execute(sa.select(tables.audit_head).with_for_update()).all()  # holds the row lock
            with pytest.raises(StoreLocked):
                secrets.put(ME, S, "KEY", "v2")
            # the read is blocked at its audit record: it fails closed (no value either way)
            with pytest.raises((StoreLocked, AuditUnavailable)):
                secrets.get(ME, S, "KEY")
            conn.rollback()
        assert secrets.get(ME, S, "KEY").value.reveal() == "v1"
        assert secrets.put(ME, S, "KEY", "v2", cas=1).latest_version == 2
        assert secrets.vault.audit.verify().ok
    finally:
        blocker.dispose()
        store.dispose()
