"""Alembic environment: runs against the engine handed in by keybroker (or a URL option)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from keybroker.store._schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()
