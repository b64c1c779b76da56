"""The agent tool registry: which secrets each tool an agent runs may ask for, and within what.

Agents themselves are identities (kind ``agent``, see :mod:`keybroker.core._identity`): they log
in by signed challenge or client secret and get a short-lived token. What this module adds is
the per-tool policy access requests are judged against:

* ``allowed_secrets``: globs over ``project/NAME`` (``default/OPENAI_*``, ``*/STRIPE_KEY``);
* ``environments``: environment names (``*`` for any);
* ``max_risk``: the highest secret risk the tool may get without a human (``low|medium|high``);
* ``max_session_s``: the longest session it may get without a human;
* ``budget``: limits every proxy token of its sessions inherits.

Deny by default: an empty allow-list or environment list means nothing, never everything; an
agent with no tool may ask for nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from keybroker.core._access_errors import ToolNotFound
from keybroker.core._names import RISK_LEVELS, check_risk
from keybroker.core._principal import Principal
from keybroker.core._sessions import Budget, Revocation, SessionService, principal_org
from keybroker.errors import InvalidInput, NotFound
from keybroker.store import tables

__all__ = ["ToolInfo", "ToolRegistry", "risk_rank"]

_TOOL_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_GLOB = re.compile(r"[A-Za-z0-9_/*?.\-\[\]!]{1,300}")
_ENV = re.compile(r"\*|[a-z0-9][a-z0-9_-]{0,62}")


def risk_rank(risk: str) -> int:
    return RISK_LEVELS.index(risk)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass(frozen=True, slots=True)
class ToolInfo:
    org: str
    agent_id: str
    tool_id: str
    name: str
    description: str
    allowed_secrets: tuple[str, ...]
    environments: tuple[str, ...]
    max_risk: str
    max_session_s: int
    budget: Budget
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def allows(self, project: str, environment: str, name: str) -> bool:
        """Deny by default: both lists must name the secret."""
        if self.revoked_at is not None:
            return False
        if "*" not in self.environments and environment not in self.environments:
            return False
        path = f"{project}/{name}"
        return any(fnmatch.fnmatchcase(path, g) for g in self.allowed_secrets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "agent_id": self.agent_id,
            "tool_id": self.tool_id,
            "name": self.name,
            "description": self.description,
            "allowed_secrets": list(self.allowed_secrets),
            "environments": list(self.environments),
            "max_risk": self.max_risk,
            "max_session_s": self.max_session_s,
            "budget": self.budget.to_dict(),
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "revoked_at": _iso(self.revoked_at),
        }


def _info(row: Row[Any]) -> ToolInfo:
    return ToolInfo(
        org=row.org,
        agent_id=row.agent_id,
        tool_id=row.tool_id,
        name=row.name,
        description=row.description,
        allowed_secrets=tuple(row.allowed_secrets or ()),
        environments=tuple(row.environments or ()),
        max_risk=row.max_risk,
        max_session_s=int(row.max_session_s),
        budget=Budget.from_dict(row.budget),
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
    )


class ToolRegistry:
    """Register, list and revoke agent tools. Managing tools needs ``admin`` in the organization;
    an agent may read its own."""

    def __init__(self, sessions: SessionService, *, max_session_s: int = 24 * 3600) -> None:
        self.sessions = sessions
        self.secrets = sessions.secrets
        self.store = sessions.store
        self.audit = sessions.audit
        self.clock = sessions.clock
        self.max_session_s = max_session_s

    # ------------------------------------------------------------------ helpers
    def resolve_agent(self, conn: Connection, org: str, agent: str, *, allow_disabled: bool = False) -> str:
        """The identity id of an agent named by name or id in ``org``. Raises NotFound."""
        i, o = tables.identities, tables.orgs
        row = conn.execute(
            sa.select(i.c.id, i.c.kind, i.c.disabled_at)
            .join(o, o.c.id == i.c.org_id)
            .where(o.c.name == org, sa.or_(i.c.name == agent, i.c.id == agent))
        ).first()
        if row is None or row.kind != "agent":
            raise NotFound(f"no agent {agent[:64]!r} in this organization")
        if row.disabled_at is not None and not allow_disabled:
            raise InvalidInput(f"agent {agent[:64]!r} is disabled")
        return str(row.id)

    @staticmethod
    def _validate(
        allowed_secrets: Iterable[str],
        environments: Iterable[str],
        max_risk: str,
        max_session_s: int,
        max_allowed: int,
    ) -> tuple[list[str], list[str]]:
        globs = list(dict.fromkeys(allowed_secrets))
        envs = list(dict.fromkeys(environments))
        for g in globs:
            if not isinstance(g, str) or not _GLOB.fullmatch(g):
                raise InvalidInput(f"bad secret glob {str(g)[:40]!r}: use project/NAME patterns with * and ?")
        for e in envs:
            if not isinstance(e, str) or not _ENV.fullmatch(e):
                raise InvalidInput(f"bad environment {str(e)[:40]!r}")
        check_risk(max_risk)
        if (
            not isinstance(max_session_s, int)
            or isinstance(max_session_s, bool)
            or not 0 < max_session_s <= max_allowed
        ):
            raise InvalidInput(f"max_session_s must be 1..{max_allowed} seconds")
        return globs, envs

    # ------------------------------------------------------------------ registry
    def register(
        self,
        principal: Principal,
        agent: str,
        tool_id: str,
        *,
        name: str | None = None,
        description: str = "",
        allowed_secrets: Iterable[str] = (),
        environments: Iterable[str] = (),
        max_risk: str = "low",
        max_session_s: int = 3600,
        budget: Mapping[str, Any] | Budget | None = None,
        org: str | None = None,
    ) -> ToolInfo:
        """Register (or re-register, replacing its policy) a tool of an agent. Raises
        InvalidInput, NotFound (no such agent), PermissionDenied."""
        org = org or principal_org(principal)
        if not isinstance(tool_id, str) or not _TOOL_ID.fullmatch(tool_id):
            raise InvalidInput("a tool id is lowercase letters, digits, '_', '.' and '-', at most 64")
        globs, envs = self._validate(
            allowed_secrets, environments, max_risk, max_session_s, self.max_session_s
        )
        b = budget if isinstance(budget, Budget) else Budget.from_dict(budget)
        self.secrets._authorize(principal, "admin", None, None, "tool.register")
        t = tables.agent_tools
        now = self.clock.now()
        values = {
            "name": (name or tool_id)[:128],
            "description": str(description)[:2000],
            "allowed_secrets": globs,
            "environments": envs,
            "max_risk": max_risk,
            "max_session_s": max_session_s,
            "budget": b.to_dict(),
            "created_at": now,
            "created_by": principal.label[:256],
            "revoked_at": None,
        }
        with self.store.begin() as conn:
            agent_id = self.resolve_agent(conn, org, agent)
            where = sa.and_(t.c.org == org, t.c.agent_id == agent_id, t.c.tool_id == tool_id)
            if conn.execute(sa.select(t.c.id).where(where)).first():
                conn.execute(sa.update(t).where(where).values(**values))
            else:
                conn.execute(sa.insert(t).values(org=org, agent_id=agent_id, tool_id=tool_id, **values))
            self.audit.append(
                conn,
                principal,
                "tool.register",
                f"{org}/_agents/{agent_id}/tools/{tool_id}",
                detail={
                    "allowed_secrets": globs,
                    "environments": envs,
                    "max_risk": max_risk,
                    "max_session_s": max_session_s,
                    "budget": b.to_dict(),
                },
            )
            row = conn.execute(sa.select(t).where(where)).one()
        return _info(row)

    def _get(self, conn: Connection, org: str, agent_id: str, tool_id: str) -> ToolInfo:
        t = tables.agent_tools
        row = conn.execute(
            sa.select(t).where(t.c.org == org, t.c.agent_id == agent_id, t.c.tool_id == tool_id)
        ).first()
        if row is None:
            raise ToolNotFound(f"no tool {tool_id[:64]!r} for this agent")
        return _info(row)

    def _visible(self, principal: Principal, agent_id: str) -> bool:
        if principal.attrs.get("identity_id") == agent_id:
            return True
        if principal.kind == "agent":
            return False
        try:
            self.secrets.authorizer.authorize(principal, "list", None, None)
        except Exception:  # noqa: BLE001 - any refusal means "not visible"
            return False
        return True

    def get(self, principal: Principal, agent: str, tool_id: str, *, org: str | None = None) -> ToolInfo:
        org = org or principal_org(principal)
        with self.store.connect() as conn:
            agent_id = self.resolve_agent(conn, org, agent, allow_disabled=True)
            if not self._visible(principal, agent_id):
                raise ToolNotFound(f"no tool {tool_id[:64]!r} for this agent")
            return self._get(conn, org, agent_id, tool_id)

    def list_tools(
        self,
        principal: Principal,
        agent: str | None = None,
        *,
        include_revoked: bool = False,
        org: str | None = None,
    ) -> list[ToolInfo]:
        org = org or principal_org(principal)
        t = tables.agent_tools
        q = sa.select(t).where(t.c.org == org).order_by(t.c.agent_id, t.c.tool_id)
        if not include_revoked:
            q = q.where(t.c.revoked_at.is_(None))
        with self.store.connect() as conn:
            if agent is not None:
                q = q.where(t.c.agent_id == self.resolve_agent(conn, org, agent, allow_disabled=True))
            rows = conn.execute(q).all()
        return [i for i in (_info(r) for r in rows) if self._visible(principal, i.agent_id)]

    def revoke(
        self, principal: Principal, agent: str, tool_id: str, *, org: str | None = None
    ) -> tuple[ToolInfo, Revocation]:
        """Revoke a tool and end its live sessions at once."""
        org = org or principal_org(principal)
        self.secrets._authorize(principal, "admin", None, None, "tool.revoke")
        t = tables.agent_tools
        with self.store.begin() as conn:
            agent_id = self.resolve_agent(conn, org, agent, allow_disabled=True)
            self._get(conn, org, agent_id, tool_id)  # NotFound before any change
            conn.execute(
                sa.update(t)
                .where(t.c.org == org, t.c.agent_id == agent_id, t.c.tool_id == tool_id)
                .values(revoked_at=self.clock.now())
            )
            self.audit.append(conn, principal, "tool.revoke", f"{org}/_agents/{agent_id}/tools/{tool_id}")
            rev = self.sessions.end_for_tool(
                principal, agent_id, tool_id, org=org, reason="tool revoked", conn=conn
            )
            final = self._get(conn, org, agent_id, tool_id)
        self.sessions._notify(rev)
        return final, rev

    def revoke_agent(self, principal: Principal, agent: str, *, org: str | None = None) -> Revocation:
        """Revoke every tool of an agent and end all its sessions at once. (Disabling the
        agent's identity, which stops it logging in, is the identity service's.)"""
        org = org or principal_org(principal)
        self.secrets._authorize(principal, "admin", None, None, "agent.revoke")
        t = tables.agent_tools
        with self.store.connect() as conn:
            i = tables.identities
            row = conn.execute(
                sa.select(i.c.id)
                .join(tables.orgs, tables.orgs.c.id == i.c.org_id)
                .where(
                    tables.orgs.c.name == org, sa.or_(i.c.name == agent, i.c.id == agent), i.c.kind == "agent"
                )
            ).first()
        if row is None:
            raise NotFound(f"no agent {agent[:64]!r} in this organization")
        agent_id = str(row.id)
        with self.store.begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.org == org, t.c.agent_id == agent_id, t.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            self.audit.append(conn, principal, "agent.revoke", f"{org}/_agents/{agent_id}")
        return self.sessions.end_for_agent(principal, agent_id, org=org, reason="agent revoked")

    def active_tool(self, conn: Connection, org: str, agent_id: str, tool_id: str) -> ToolInfo:
        """The tool an access request is judged against. Raises ToolNotFound (also if revoked)."""
        info = self._get(conn, org, agent_id, tool_id)
        if info.revoked_at is not None:
            raise ToolNotFound(f"tool {tool_id[:64]!r} is revoked")
        return info
