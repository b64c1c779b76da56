"""Shared fixtures. Every store-backed test runs on SQLite and on PostgreSQL.

PostgreSQL: 127.0.0.1:5432, user postgres, database test (override with KEYBROKER_TEST_PG).
Each test gets a schema of its own, dropped afterwards. Under CI=true an unreachable
PostgreSQL fails the run; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from keybroker.core import ManualClock, PassphraseRoot, SecretService, Vault, local_principal
from keybroker.crypto import Argon2Params
from keybroker.store import Store

PG_BASE = os.environ.get("KEYBROKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_PASSPHRASE = "correct horse battery staple"
# The cheapest Argon2id cost keybroker accepts (OWASP minimum), to keep the suite fast.
FAST_KDF = {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}

_pg_checked: tuple[bool, str] | None = None


def pg_available() -> tuple[bool, str]:
    global _pg_checked
    if _pg_checked is None:
        try:
            eng = sa.create_engine(PG_BASE)
            with eng.connect() as c:
                c.execute(sa.text("select 1"))
            eng.dispose()
            _pg_checked = (True, "")
        except Exception as exc:
            _pg_checked = (False, f"PostgreSQL at {PG_BASE} is not reachable: {type(exc).__name__}")
    return _pg_checked


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema (dropped afterwards)."""
    ok, why = pg_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {why}")
        pytest.skip(why)
    schema = "kbt_" + uuid.uuid4().hex[:12]
    eng = sa.create_engine(PG_BASE)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_BASE else "?"
    yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fast_passphrase() -> PassphraseRoot:
    return PassphraseRoot(TEST_PASSPHRASE, Argon2Params(os.urandom(16), **FAST_KDF))


@pytest.fixture
def vault(store: Store, clock: ManualClock, fast_passphrase: PassphraseRoot) -> Vault:
    v = Vault(store, clock)
    v.initialize(fast_passphrase, local_principal("test"))
    return v


@pytest.fixture
def secrets(vault: Vault) -> SecretService:
    return SecretService(vault)


@pytest.fixture
def me():  # type: ignore[no-untyped-def]
    return local_principal("test")
