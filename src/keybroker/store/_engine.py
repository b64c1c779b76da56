"""Engine set-up and error translation. SQLite (WAL, durable commits) or PostgreSQL by URL."""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from keybroker.errors import KeybrokerError, StoreError, StoreFull, StoreLocked

__all__ = ["Store", "translate_db_error"]


def translate_db_error(err: BaseException) -> KeybrokerError:
    """Map a database driver error onto the keybroker tree. Messages name no value."""
    text = str(getattr(err, "orig", err)).lower()
    sqlstate = getattr(getattr(err, "orig", None), "sqlstate", None)
    if (
        "locked" in text
        or "busy" in text
        or "could not obtain lock" in text
        or "deadlock" in text
        or sqlstate in ("55P03", "40P01")  # PostgreSQL lock_not_available, deadlock_detected
    ):
        return StoreLocked("the database is locked by another writer; try again")
    if "disk is full" in text or "no space" in text or "disk full" in text:
        return StoreFull("the disk is full; the write was not stored and nothing else changed")
    orig = getattr(err, "orig", None)
    if isinstance(orig, OSError) and orig.errno == errno.ENOSPC:
        return StoreFull("the disk is full; the write was not stored and nothing else changed")
    if isinstance(err, exc.OperationalError | exc.InterfaceError):
        first = text.strip().splitlines()[0] if text.strip() else "unknown error"
        return StoreError(f"the database is unreachable or failed: {first[:200]}")
    return StoreError(f"database error: {type(err).__name__}")


class Store:
    """Owns the engine. ``begin()`` yields a connection in a transaction that commits durably
    on exit; on SQLite every transaction is ``BEGIN IMMEDIATE`` so the audit chain has one
    writer at a time. Database errors leave as :class:`StoreError` subclasses."""

    def __init__(self, url: str, *, engine: Engine | None = None, busy_timeout_ms: int = 10000) -> None:
        self.url = url
        self.engine = engine or self._make_engine(url, busy_timeout_ms)
        self.dialect = self.engine.dialect.name
        self._busy_timeout_s = busy_timeout_ms / 1000
        # SQLite has one writer at a time. Threads of this process queue on a lock (FIFO-ish,
        # no sleeping) instead of SQLite's busy handler, whose back-off sleeps make tail
        # latency explode under concurrent writers; other processes still meet busy_timeout.
        self._write_lock: threading.RLock | None = threading.RLock() if self.dialect == "sqlite" else None

    @staticmethod
    def for_path(path: Path) -> Store:
        return Store(f"sqlite:///{path}")

    def _make_engine(self, url: str, busy_timeout_ms: int) -> Engine:
        u = sa.engine.make_url(url)
        if u.get_backend_name() == "sqlite":
            if u.database and u.database != ":memory:":
                try:
                    Path(u.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the directory for {u.database}: {exc.strerror or exc}"
                    ) from exc
            engine = sa.create_engine(u, connect_args={"timeout": busy_timeout_ms / 1000})

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # read-only work (Store.connect) takes no write lock: WAL readers never block
                read_only = conn.get_execution_options().get("kb_read_only", False)
                conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

            return engine
        if u.get_backend_name() == "postgresql" and u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(u, pool_pre_ping=True, pool_size=10, max_overflow=20)
        if u.get_backend_name() == "postgresql":

            @event.listens_for(engine, "connect")
            def _on_pg_connect(dbapi_conn: Any, _rec: Any) -> None:
                # wait for a row lock (the audit head) as long as SQLite waits, then StoreLocked
                cur = dbapi_conn.cursor()
                cur.execute(f"SET lock_timeout = {int(busy_timeout_ms)}")
                cur.close()
                dbapi_conn.commit()

        return engine

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        lock = self._write_lock
        if lock is not None and not lock.acquire(timeout=self._busy_timeout_s):
            raise StoreLocked("the database is locked by another writer; try again")
        try:
            with self.engine.begin() as conn:
                yield conn
        except exc.SQLAlchemyError as err:
            raise translate_db_error(err) from err
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise StoreFull("the disk is full; the write was not stored") from err
            raise
        finally:
            if lock is not None:
                lock.release()

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for read-only work (no IMMEDIATE lock on SQLite)."""
        try:
            if self.dialect == "sqlite":
                with self.engine.connect() as conn:
                    # SQLAlchemy autobegins: mark it so _on_begin issues a plain (deferred) BEGIN
                    conn.execution_options(kb_read_only=True)
                    yield conn
            else:
                with self.engine.connect() as conn:
                    yield conn
        except exc.SQLAlchemyError as err:
            raise translate_db_error(err) from err

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from keybroker.store._migrate import upgrade

        try:
            upgrade(self.engine)
        except exc.SQLAlchemyError as err:
            raise translate_db_error(err) from err

    def dispose(self) -> None:
        self.engine.dispose()
