"""Table definitions (SQLAlchemy Core). The Alembic migrations create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = [
    "UTCDateTime",
    "audit_head",
    "audit_log",
    "environments",
    "events",
    "keks",
    "meta",
    "metadata",
    "orgs",
    "projects",
    "secret_versions",
    "secrets",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

meta = sa.Table(
    "kb_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

keks = sa.Table(
    "kb_keks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("retired_at", UTCDateTime, nullable=True),
)

orgs = sa.Table(
    "kb_orgs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

projects = sa.Table(
    "kb_projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("org_id", sa.Integer, sa.ForeignKey("kb_orgs.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("org_id", "name", name="uq_kb_projects_org_name"),
)

environments = sa.Table(
    "kb_environments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("kb_projects.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_kb_environments_project_name"),
)

secrets = sa.Table(
    "kb_secrets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("environment_id", sa.Integer, sa.ForeignKey("kb_environments.id"), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default="generic"),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("custom_metadata", sa.JSON, nullable=False),
    sa.Column("owner", sa.String(128), nullable=False, server_default=""),
    sa.Column("risk", sa.String(8), nullable=False, server_default="low"),
    sa.Column("provider", sa.String(32), nullable=False, server_default="generic"),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("rotation_period_s", sa.Integer, nullable=True),
    sa.Column("proxy_only", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_versions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cas_required", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("latest_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("current_version", sa.Integer, nullable=True),
    sa.Column("previous_version", sa.Integer, nullable=True),
    sa.Column("pending_version", sa.Integer, nullable=True),
    sa.Column("deleted_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("environment_id", "name", name="uq_kb_secrets_env_name"),
)

secret_versions = sa.Table(
    "kb_secret_versions",
    metadata,
    sa.Column("secret_id", sa.Integer, sa.ForeignKey("kb_secrets.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=True),
    sa.Column("wrapped_dek", sa.LargeBinary, nullable=True),
    sa.Column("kek_id", sa.Integer, nullable=True, index=True),
    sa.Column("public_key", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("deleted_at", UTCDateTime, nullable=True),
    sa.Column("destroyed_at", UTCDateTime, nullable=True),
)

audit_log = sa.Table(
    "kb_audit_log",
    metadata,
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("result", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("client", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("value_hmac", sa.String(96), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Index("ix_kb_audit_log_hmac", audit_log.c.value_hmac)
sa.Index("ix_kb_audit_log_ts", audit_log.c.ts)

audit_head = sa.Table(
    "kb_audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

events = sa.Table(
    "kb_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("environment", sa.String(64), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
)
