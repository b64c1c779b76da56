"""Table definitions (SQLAlchemy Core). The Alembic migrations create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = [
    "UTCDateTime",
    "access_approvals",
    "access_requests",
    "agent_tools",
    "audit_head",
    "audit_log",
    "environments",
    "events",
    "identities",
    "keks",
    "kv_config",
    "login_challenges",
    "login_lockouts",
    "meta",
    "metadata",
    "orgs",
    "projects",
    "proxy_tokens",
    "role_bindings",
    "secret_versions",
    "secrets",
    "session_secrets",
    "sessions",
    "tokens",
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
    sa.Column("current_since", UTCDateTime, nullable=True),
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

# -- identities, roles, tokens (migration 0002) ------------------------------------------------

identities = sa.Table(
    "kb_identities",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("org_id", sa.Integer, sa.ForeignKey("kb_orgs.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("sys_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("client_id", sa.String(64), nullable=True, unique=True),
    sa.Column("secret_salt", sa.LargeBinary, nullable=True),
    sa.Column("secret_hash", sa.String(64), nullable=True),
    sa.Column("public_key", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("org_id", "name", name="uq_kb_identities_org_name"),
)

role_bindings = sa.Table(
    "kb_role_bindings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("identity_id", sa.String(32), sa.ForeignKey("kb_identities.id"), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("identity_id", "project", name="uq_kb_role_bindings_identity_project"),
)

tokens = sa.Table(
    "kb_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("org_id", sa.Integer, sa.ForeignKey("kb_orgs.id"), nullable=False),
    sa.Column("identity_id", sa.String(32), sa.ForeignKey("kb_identities.id"), nullable=False, index=True),
    sa.Column("parent_id", sa.String(40), sa.ForeignKey("kb_tokens.id"), nullable=True, index=True),
    sa.Column("display_name", sa.String(128), nullable=False, server_default=""),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("scope", sa.JSON, nullable=False),
    sa.Column("cidrs", sa.JSON, nullable=False),
    sa.Column("ttl_s", sa.Integer, nullable=True),
    sa.Column("num_uses", sa.Integer, nullable=True),
    sa.Column("uses_left", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("max_expires_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

login_challenges = sa.Table(
    "kb_login_challenges",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("identity_id", sa.String(32), sa.ForeignKey("kb_identities.id"), nullable=False),
    sa.Column("nonce", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=True),
)

login_lockouts = sa.Table(
    "kb_login_lockouts",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failure_at", UTCDateTime, nullable=False),
    sa.Column("locked_until", UTCDateTime, nullable=True),
)

kv_config = sa.Table(
    "kb_kv_config",
    metadata,
    sa.Column(
        "project_id", sa.Integer, sa.ForeignKey("kb_projects.id"), primary_key=True, autoincrement=False
    ),
    sa.Column("max_versions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cas_required", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("delete_version_after_s", sa.Integer, nullable=False, server_default="0"),
)

# -- agent access: tools, access requests, sessions, proxy tokens (migration 0003) -------------

agent_tools = sa.Table(
    "kb_agent_tools",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("tool_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("allowed_secrets", sa.JSON, nullable=False),
    sa.Column("environments", sa.JSON, nullable=False),
    sa.Column("max_risk", sa.String(8), nullable=False),
    sa.Column("max_session_s", sa.Integer, nullable=False),
    sa.Column("budget", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("org", "agent_id", "tool_id", name="uq_kb_agent_tools_org_agent_tool"),
)

access_requests = sa.Table(
    "kb_access_requests",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("tool_id", sa.String(64), nullable=False),
    sa.Column("requested_by", sa.String(256), nullable=False),
    sa.Column("principal_kind", sa.String(16), nullable=False),
    sa.Column("principal_id", sa.String(160), nullable=False),
    sa.Column("secrets", sa.JSON, nullable=False),
    sa.Column("justification", sa.Text, nullable=False),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("policy", sa.String(128), nullable=False),
    sa.Column("required_approvals", sa.Integer, nullable=False),
    sa.Column("granted_duration_s", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    sa.Column("decided_by", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("session_id", sa.String(40), nullable=True),
)
sa.Index("ix_kb_access_requests_org_status", access_requests.c.org, access_requests.c.status)

access_approvals = sa.Table(
    "kb_access_approvals",
    metadata,
    sa.Column("request_id", sa.String(40), sa.ForeignKey("kb_access_requests.id"), primary_key=True),
    sa.Column("approver", sa.String(256), primary_key=True),
    sa.Column("duration_s", sa.Integer, nullable=True),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

sessions = sa.Table(
    "kb_sessions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("principal_kind", sa.String(16), nullable=False),
    sa.Column("principal_id", sa.String(160), nullable=False),
    sa.Column("identity_id", sa.String(64), nullable=True),
    sa.Column("agent_id", sa.String(64), nullable=True),
    sa.Column("tool_id", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(40), nullable=True),
    sa.Column("budget", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("ended_by", sa.String(256), nullable=True),
    sa.Column("end_reason", sa.String(256), nullable=True),
)
sa.Index("ix_kb_sessions_agent", sessions.c.org, sessions.c.agent_id, sessions.c.tool_id)
sa.Index("ix_kb_sessions_expires_at", sessions.c.expires_at)

session_secrets = sa.Table(
    "kb_session_secrets",
    metadata,
    sa.Column("session_id", sa.String(40), sa.ForeignKey("kb_sessions.id"), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("environment", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
)
sa.Index(
    "ix_kb_session_secrets_secret",
    session_secrets.c.project,
    session_secrets.c.environment,
    session_secrets.c.name,
)

proxy_tokens = sa.Table(
    "kb_proxy_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("session_id", sa.String(40), sa.ForeignKey("kb_sessions.id"), nullable=False, index=True),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("environment", sa.String(64), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("hosts", sa.JSON, nullable=False),
    sa.Column("max_requests", sa.BigInteger, nullable=True),
    sa.Column("max_rpm", sa.Integer, nullable=True),
    sa.Column("max_tokens", sa.BigInteger, nullable=True),
    sa.Column("used_requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("used_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
)
