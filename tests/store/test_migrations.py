"""The Alembic migrations create exactly the tables the code defines, on both stores."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from keybroker.store import Store
from keybroker.store._schema import metadata


def test_migrations_match_the_schema(store: Store) -> None:
    store.migrate()
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_migrate_is_idempotent(store: Store) -> None:
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0004"
