"""kb_secrets.current_since: when the current version became current (rotation due dates).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import keybroker.store._schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kb_secrets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("current_since", keybroker.store._schema.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("kb_secrets", schema=None) as batch_op:
        batch_op.drop_column("current_since")
