"""Sessions: time-boxed permission to *use* (never read) some secrets, through the gateway.

A session opens when an access request is approved (agents) or when a person or service with the
``use`` permission asks for one (``keybroker run`` with proxy-only secrets). It names its secrets
and has a hard expiry. Proxy tokens hang off a session; ending the session ends them all.

Sessions end at once when revoked by hand, when their agent or tool is revoked, when one of their
secrets is deleted or destroyed, or when a secret is rotated under an incident
(:meth:`SessionService.incident_rotate`). In-process listeners (the gateway's caches) hear of it
immediately; every check against the store sees it too.

The one access rule sessions add lives in :class:`SessionAuthorizer`: a principal acting *through
a session* may ``use`` exactly the session's secrets while it is live, and nothing else.
"""

from __future__ import annotations

import logging
import secrets as _random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from keybroker.core._access import Authorizer
from keybroker.core._access_errors import SessionEnded, SessionNotFound
from keybroker.core._models import Scope, SecretMeta
from keybroker.core._principal import Principal
from keybroker.core._secrets import ChangeEvent, SecretService
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, KeybrokerError, PermissionDenied
from keybroker.store import tables

__all__ = [
    "SESSION_ATTR",
    "SYSTEM_PRINCIPAL",
    "Budget",
    "Revocation",
    "SessionAuthorizer",
    "SessionInfo",
    "SessionService",
    "principal_identity",
    "principal_org",
]

log = logging.getLogger("keybroker.sessions")

#: ``Principal.attrs`` key naming the session a principal acts through (set only by the gateway
#: after verifying a proxy token; never taken from client input).
SESSION_ATTR = "kb_session"
SYSTEM_PRINCIPAL = Principal(id="keybroker", kind="system", client="keybroker")
_ENDING_EVENTS = ("deleted", "destroyed", "revoked")


def principal_org(principal: Principal) -> str:
    return principal.attrs.get("org") or "default"


def principal_identity(principal: Principal) -> str | None:
    return principal.attrs.get("identity_id") or None


def _new_id(prefix: str) -> str:
    return prefix + _random.token_hex(12)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one proxy token: requests in total, requests per minute, and model tokens
    (from the usage the upstream reports). ``None`` means no limit."""

    max_requests: int | None = None
    max_rpm: int | None = None
    max_tokens: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Budget:
        """Raises InvalidInput for unknown keys or values that are not positive integers."""
        d = dict(d or {})
        unknown = set(d) - {"max_requests", "max_rpm", "max_tokens"}
        if unknown:
            raise InvalidInput(f"unknown budget field(s): {', '.join(sorted(unknown))}")
        out: dict[str, int | None] = {}
        for k in ("max_requests", "max_rpm", "max_tokens"):
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidInput(f"budget {k} must be a positive integer")
            out[k] = v
        return cls(**out)

    def to_dict(self) -> dict[str, int | None]:
        return {"max_requests": self.max_requests, "max_rpm": self.max_rpm, "max_tokens": self.max_tokens}

    def narrow(self, other: Budget | None) -> Budget:
        """The tighter of the two, limit by limit."""
        if other is None:
            return self

        def pick(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)

        return Budget(
            pick(self.max_requests, other.max_requests),
            pick(self.max_rpm, other.max_rpm),
            pick(self.max_tokens, other.max_tokens),
        )


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    org: str
    principal_kind: str
    principal_id: str
    identity_id: str | None
    agent_id: str | None
    tool_id: str | None
    request_id: str | None
    secrets: tuple[tuple[str, str, str], ...]
    budget: Budget
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None

    def state(self, now: datetime) -> str:
        if self.ended_at is not None:
            return "ended"
        return "expired" if self.expires_at <= now else "active"

    def covers(self, scope: Scope, name: str) -> bool:
        return scope.org == self.org and (scope.project, scope.environment, name) in self.secrets

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "org": self.org,
            "principal": {"kind": self.principal_kind, "id": self.principal_id},
            "agent_id": self.agent_id,
            "tool_id": self.tool_id,
            "request_id": self.request_id,
            "secrets": [{"project": p, "environment": e, "name": n} for p, e, n in self.secrets],
            "budget": self.budget.to_dict(),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "ended_at": _iso(self.ended_at),
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
        }
        if now is not None:
            d["state"] = self.state(now)
        return d


@dataclass(frozen=True, slots=True)
class Revocation:
    """What just ended, for in-process caches (the gateway drops these at once)."""

    session_ids: tuple[str, ...]
    token_ids: tuple[str, ...] = ()
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SessionService:
    """Opens, lists and ends sessions; removes expired ones. Every change is audited."""

    def __init__(self, secrets: SecretService, *, max_ttl_s: int = 24 * 3600) -> None:
        self.secrets = secrets
        self.store = secrets.store
        self.audit = secrets.audit
        self.clock = secrets.clock
        self.max_ttl_s = max_ttl_s
        self.listeners: list[Callable[[Revocation], None]] = []
        secrets.listeners.append(self._on_secret_change)

    # ------------------------------------------------------------------ opening
    def _open(
        self,
        conn: Connection,
        principal: Principal,
        *,
        org: str,
        principal_kind: str,
        principal_id: str,
        identity_id: str | None,
        secrets: Sequence[tuple[str, str, str]],
        expires_at: datetime,
        budget: Budget,
        agent_id: str | None = None,
        tool_id: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Insert a session inside the caller's transaction (e.g. the approving one)."""
        sid = _new_id("ses_")
        conn.execute(
            sa.insert(tables.sessions).values(
                id=sid,
                org=org,
                principal_kind=principal_kind,
                principal_id=principal_id,
                identity_id=identity_id,
                agent_id=agent_id,
                tool_id=tool_id,
                request_id=request_id,
                budget=budget.to_dict(),
                created_at=self.clock.now(),
                expires_at=expires_at,
            )
        )
        unique = sorted(set(secrets))
        conn.execute(
            sa.insert(tables.session_secrets),
            [{"session_id": sid, "project": p, "environment": e, "name": n} for p, e, n in unique],
        )
        self.audit.append(
            conn,
            principal,
            "session.open",
            f"{org}/_sessions/{sid}",
            detail={
                "for": f"{principal_kind}:{principal_id}",
                "secrets": [f"{p}/{e}/{n}" for p, e, n in unique],
                "expires_at": expires_at.isoformat(),
                "request": request_id,
            },
        )
        return sid

    def open_use_session(
        self,
        principal: Principal,
        scope: Scope,
        names: Iterable[str],
        *,
        ttl_s: int = 900,
        budget: Budget | None = None,
    ) -> SessionInfo:
        """A session for a person or service allowed to ``use`` the secrets (``keybroker run``
        hands the child proxy tokens instead of proxy-only values). Agents ask through access
        requests instead. Raises PermissionDenied, SecretNotFound, SecretDeleted, InvalidInput."""
        names = list(dict.fromkeys(names))
        if not names:
            raise InvalidInput("name at least one secret")
        if principal.kind == "agent":
            raise PermissionDenied("agents ask for secrets through access requests")
        if not isinstance(ttl_s, int) or not 0 < ttl_s <= self.max_ttl_s:
            raise InvalidInput(f"the session length must be 1..{self.max_ttl_s} seconds")
        for n in names:
            self.secrets._authorize(principal, "use", scope, n, "session.open")
        with self.store.begin() as conn:
            for n in names:
                self.secrets._secret_row(conn, scope, n)
            sid = self._open(
                conn,
                principal,
                org=scope.org,
                principal_kind=principal.kind,
                principal_id=principal.id,
                identity_id=principal_identity(principal),
                secrets=[(scope.project, scope.environment, n) for n in names],
                expires_at=self.clock.now() + timedelta(seconds=ttl_s),
                budget=budget or Budget(),
            )
            info = self._load(conn, sid)
        assert info is not None
        return info

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _info(row: Row[Any], secrets: Iterable[Row[Any]]) -> SessionInfo:
        return SessionInfo(
            id=row.id,
            org=row.org,
            principal_kind=row.principal_kind,
            principal_id=row.principal_id,
            identity_id=row.identity_id,
            agent_id=row.agent_id,
            tool_id=row.tool_id,
            request_id=row.request_id,
            secrets=tuple(sorted((s.project, s.environment, s.name) for s in secrets)),
            budget=Budget.from_dict(row.budget),
            created_at=row.created_at,
            expires_at=row.expires_at,
            ended_at=row.ended_at,
            ended_by=row.ended_by,
            end_reason=row.end_reason,
        )

    def _load(self, conn: Connection, session_id: str) -> SessionInfo | None:
        row = conn.execute(sa.select(tables.sessions).where(tables.sessions.c.id == session_id)).first()
        if row is None:
            return None
        ss = tables.session_secrets
        secrets = conn.execute(sa.select(ss).where(ss.c.session_id == session_id)).all()
        return self._info(row, secrets)

    def _is_own(self, principal: Principal, info: SessionInfo) -> bool:
        return (
            principal.kind == info.principal_kind
            and principal.id == info.principal_id
            and principal_org(principal) == info.org
        )

    def _may_manage(self, principal: Principal, info: SessionInfo) -> bool:
        """Its own principal, or whoever may administer every one of its secrets."""
        if self._is_own(principal, info):
            return True
        if principal.kind == "agent":
            return False
        try:
            for p, e, n in info.secrets:
                self.secrets.authorizer.authorize(principal, "admin", Scope(p, e, info.org), n)
        except KeybrokerError:
            return False
        return True

    def get(self, principal: Principal, session_id: str) -> SessionInfo:
        """Raises SessionNotFound (also for a session the principal may not see)."""
        with self.store.connect() as conn:
            info = self._load(conn, str(session_id)[:40])
        if info is None or not self._may_manage(principal, info):
            raise SessionNotFound("no such session")
        return info

    def list_sessions(
        self,
        principal: Principal,
        *,
        active_only: bool = True,
        agent_id: str | None = None,
        limit: int = 500,
    ) -> list[SessionInfo]:
        """Sessions the principal may see (its own, or those it could administer)."""
        s, ss = tables.sessions, tables.session_secrets
        now = self.clock.now()
        q = sa.select(s).where(s.c.org == principal_org(principal)).order_by(s.c.created_at.desc())
        if active_only:
            q = q.where(s.c.ended_at.is_(None), s.c.expires_at > now)
        if agent_id:
            q = q.where(s.c.agent_id == agent_id)
        if principal.kind == "agent":
            q = q.where(s.c.principal_kind == principal.kind, s.c.principal_id == principal.id)
        with self.store.connect() as conn:
            rows = conn.execute(q.limit(limit)).all()
            by_id: dict[str, list[Row[Any]]] = {r.id: [] for r in rows}
            if by_id:
                for sec in conn.execute(sa.select(ss).where(ss.c.session_id.in_(list(by_id)))).all():
                    by_id[sec.session_id].append(sec)
        infos = [self._info(r, by_id[r.id]) for r in rows]
        return [i for i in infos if self._may_manage(principal, i)]

    def covers(self, principal: Principal, scope: Scope, name: str) -> bool:
        """Whether ``principal`` acts through a live session that holds this secret (and, for an
        identity, one that is not disabled). The rule :class:`SessionAuthorizer` applies."""
        sid = principal.attrs.get(SESSION_ATTR)
        if not sid:
            return False
        s, ss, i = tables.sessions, tables.session_secrets, tables.identities
        now = self.clock.now()
        q = (
            sa.select(s.c.id, i.c.disabled_at)
            .select_from(s.join(ss, ss.c.session_id == s.c.id).outerjoin(i, i.c.id == s.c.identity_id))
            .where(
                s.c.id == sid,
                s.c.org == scope.org,
                s.c.principal_kind == principal.kind,
                s.c.principal_id == principal.id,
                s.c.ended_at.is_(None),
                s.c.expires_at > now,
                ss.c.project == scope.project,
                ss.c.environment == scope.environment,
                ss.c.name == name,
            )
        )
        with self.store.connect() as conn:
            row = conn.execute(q).first()
        return row is not None and row.disabled_at is None

    # ------------------------------------------------------------------ ending
    def _end(self, conn: Connection, principal: Principal, ids: Sequence[str], reason: str) -> Revocation:
        if not ids:
            return Revocation((), (), reason)
        now = self.clock.now()
        s, pt = tables.sessions, tables.proxy_tokens
        conn.execute(
            sa.update(s)
            .where(s.c.id.in_(list(ids)), s.c.ended_at.is_(None))
            .values(ended_at=now, ended_by=principal.label[:256], end_reason=reason[:256])
        )
        token_ids = [
            str(t) for t in conn.execute(sa.select(pt.c.id).where(pt.c.session_id.in_(list(ids)))).scalars()
        ]
        if token_ids:
            conn.execute(
                sa.update(pt)
                .where(pt.c.session_id.in_(list(ids)), pt.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        orgs = {
            str(r.id): str(r.org)
            for r in conn.execute(sa.select(s.c.id, s.c.org).where(s.c.id.in_(list(ids))))
        }
        for sid in ids:
            self.audit.append(
                conn,
                principal,
                "session.end",
                f"{orgs.get(sid, '?')}/_sessions/{sid}",
                detail={"reason": reason, "tokens": len(token_ids)},
            )
        return Revocation(tuple(ids), tuple(token_ids), reason)

    def _notify(self, rev: Revocation) -> None:
        if not rev.session_ids and not rev.token_ids:
            return
        for fn in list(self.listeners):
            try:
                fn(rev)
            except Exception:  # a broken listener must not undo the revocation
                log.exception("a session revocation listener failed")

    def _live_ids(self, conn: Connection, where: Any) -> list[str]:
        s = tables.sessions
        now = self.clock.now()
        q = sa.select(s.c.id).where(where, s.c.ended_at.is_(None), s.c.expires_at > now).with_for_update()
        return [str(x) for x in conn.execute(q).scalars()]

    def revoke(self, principal: Principal, session_id: str, reason: str = "revoked by hand") -> SessionInfo:
        """End one session now. Its principal may end it, or whoever administers its secrets.
        Raises SessionNotFound, SessionEnded."""
        info = self.get(principal, session_id)
        if info.ended_at is not None:
            raise SessionEnded("the session has already ended")
        with self.store.begin() as conn:
            rev = self._end(conn, principal, [info.id], reason)
            final = self._load(conn, info.id)
        self._notify(rev)
        assert final is not None
        return final

    def _admin_org(self, principal: Principal, org: str | None) -> str:
        org = org or principal_org(principal)
        if principal.kind == "agent":
            raise PermissionDenied("an agent may not revoke other sessions")
        self.secrets._authorize(principal, "admin", None, None, "session.revoke")
        return org

    def end_for_agent(
        self, principal: Principal, agent_id: str, *, org: str | None = None, reason: str = "agent revoked"
    ) -> Revocation:
        """End every live session of an agent (called when the agent is revoked or disabled)."""
        org = self._admin_org(principal, org)
        s = tables.sessions
        with self.store.begin() as conn:
            ids = self._live_ids(conn, sa.and_(s.c.org == org, s.c.agent_id == agent_id))
            rev = self._end(conn, principal, ids, reason)
        self._notify(rev)
        return rev

    def end_for_identity(self, identity_id: str, *, reason: str = "identity disabled") -> Revocation:
        """End every live session opened by or for an identity. For the identity service to
        call from ``disable`` (no authorization here: disabling was the authorized act)."""
        s = tables.sessions
        with self.store.begin() as conn:
            ids = self._live_ids(conn, sa.or_(s.c.identity_id == identity_id, s.c.agent_id == identity_id))
            rev = self._end(conn, SYSTEM_PRINCIPAL, ids, reason)
        self._notify(rev)
        return rev

    def end_for_tool(
        self,
        principal: Principal,
        agent_id: str,
        tool_id: str,
        *,
        org: str | None = None,
        reason: str = "tool revoked",
        conn: Connection | None = None,
    ) -> Revocation:
        s = tables.sessions
        if conn is not None:
            org = org or principal_org(principal)
            ids = self._live_ids(
                conn, sa.and_(s.c.org == org, s.c.agent_id == agent_id, s.c.tool_id == tool_id)
            )
            return self._end(conn, principal, ids, reason)
        org = self._admin_org(principal, org)
        with self.store.begin() as c:
            rev = self.end_for_tool(principal, agent_id, tool_id, org=org, reason=reason, conn=c)
        self._notify(rev)
        return rev

    def end_for_secret(
        self, principal: Principal, scope: Scope, name: str, reason: str = "secret revoked"
    ) -> Revocation:
        """End every live session holding this secret (needs ``write`` on it)."""
        self.secrets._authorize(principal, "write", scope, name, "session.revoke")
        return self._end_for_secret(principal, scope, name, reason)

    def _end_for_secret(self, principal: Principal, scope: Scope, name: str, reason: str) -> Revocation:
        s, ss = tables.sessions, tables.session_secrets
        holding = (
            sa.select(ss.c.session_id)
            .where(ss.c.project == scope.project, ss.c.environment == scope.environment, ss.c.name == name)
            .scalar_subquery()
        )
        with self.store.begin() as conn:
            ids = self._live_ids(conn, sa.and_(s.c.org == scope.org, s.c.id.in_(holding)))
            rev = self._end(conn, principal, ids, reason)
        self._notify(rev)
        return rev

    def _on_secret_change(self, ev: ChangeEvent) -> None:
        if ev.get("kind") in _ENDING_EVENTS:
            scope = Scope(ev["project"], ev["environment"], ev["org"])
            self._end_for_secret(SYSTEM_PRINCIPAL, scope, ev["name"], f"secret {ev['kind']}")

    def incident_rotate(
        self, principal: Principal, scope: Scope, name: str, value: SecretValue | str | bytes
    ) -> tuple[SecretMeta, Revocation]:
        """Rotate under an incident: the new value is current at once (no pending grace) and every
        session holding the secret ends now. Raises what ``SecretService.put`` raises."""
        meta = self.secrets.put(principal, scope, name, value, action="secret.incident-rotate")
        rev = self._end_for_secret(principal, scope, name, "secret rotated under an incident")
        return meta, rev

    # ------------------------------------------------------------------ clean-up
    def cleanup(self, principal: Principal = SYSTEM_PRINCIPAL, *, retain_s: int = 0) -> dict[str, int]:
        """Remove proxy tokens and sessions that expired or ended more than ``retain_s`` ago.
        The audit trail keeps their history. Returns counts."""
        cutoff = self.clock.now() - timedelta(seconds=retain_s)
        s, ss, pt = tables.sessions, tables.session_secrets, tables.proxy_tokens
        with self.store.begin() as conn:
            dead_sessions = sa.select(s.c.id).where(sa.or_(s.c.expires_at <= cutoff, s.c.ended_at <= cutoff))
            n_tokens = conn.execute(
                sa.delete(pt).where(
                    sa.or_(
                        pt.c.expires_at <= cutoff,
                        pt.c.revoked_at <= cutoff,
                        pt.c.session_id.in_(dead_sessions.scalar_subquery()),
                    )
                )
            ).rowcount
            ids = [str(x) for x in conn.execute(dead_sessions).scalars()]
            n_sessions = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                conn.execute(sa.delete(ss).where(ss.c.session_id.in_(chunk)))
                n_sessions += conn.execute(sa.delete(s).where(s.c.id.in_(chunk))).rowcount
            counts = {"sessions": int(n_sessions), "proxy_tokens": int(n_tokens)}
            if n_sessions or n_tokens:
                self.audit.append(conn, principal, "session.cleanup", "_sessions", detail=counts)
        return counts


class SessionAuthorizer:
    """:class:`~keybroker.core.Authorizer` that adds the session rule in front of another one.

    A principal carrying :data:`SESSION_ATTR` acts *only* through that session: it may ``use`` the
    session's secrets while the session is live, and is denied everything else. Every other
    principal is decided by ``base``."""

    def __init__(self, sessions: SessionService, base: Authorizer) -> None:
        self.sessions = sessions
        self.base = base

    def authorize(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> None:
        if not principal.attrs.get(SESSION_ATTR):
            self.base.authorize(principal, action, scope, name)
            return
        if action == "use" and scope is not None and name is not None:
            if self.sessions.covers(principal, scope, name):
                return
        where = scope.path(name) if scope is not None else "this organization"
        raise PermissionDenied(f"the session does not allow {action} of {where}")
