"""Proxy tokens: what an agent holds instead of a key.

Format, as for access tokens (so secret scanners spot a leaked one)::

    kbp_<43 base62 chars: 256 random bits><6 base62 chars: CRC32 of the body>

A proxy token is bound to one session, one secret and the upstream host(s) that secret belongs
to, with a short TTL (never past its session) and a budget. Only its SHA-256 is stored; it is
looked up by hash and compared in constant time. It cannot read anything: the gateway exchanges
it for the key on the way to the upstream, and only there.
"""

from __future__ import annotations

import hmac
import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from keybroker.core._access_errors import (
    ProxyTokenExpired,
    ProxyTokenInvalid,
    ProxyTokenRevoked,
    SessionEnded,
)
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.core._providers import PROVIDERS, upstream_for
from keybroker.core._sessions import SESSION_ATTR, Budget, Revocation, SessionInfo, SessionService
from keybroker.core._tokens import check_token_format, hash_token, new_opaque
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, NotFound, PermissionDenied
from keybroker.store import tables

__all__ = [
    "PROXY_TOKEN_PREFIX",
    "IssuedProxyToken",
    "ProxyEnv",
    "ProxyGrant",
    "ProxyTokenService",
    "UsageDelta",
    "is_proxy_token",
]

PROXY_TOKEN_PREFIX = "kbp_"


def is_proxy_token(text: str) -> bool:
    """Prefix, length, alphabet and checksum: no database needed."""
    return check_token_format(text, PROXY_TOKEN_PREFIX)


@dataclass(frozen=True, slots=True)
class ProxyGrant:
    """What a verified proxy token allows. Holds no key and not the token itself."""

    token_id: str
    session_id: str
    org: str
    project: str
    environment: str
    name: str
    route: str
    hosts: tuple[str, ...]
    principal_kind: str
    principal_id: str
    expires_at: datetime
    budget: Budget
    used_requests: int
    used_tokens: int

    @property
    def scope(self) -> Scope:
        return Scope(self.project, self.environment, self.org)

    @property
    def target(self) -> str:
        return self.scope.path(self.name)

    def principal(self, request_id: str | None = None) -> Principal:
        """The principal the gateway acts as: the session's own, acting through the session."""
        return Principal(
            id=self.principal_id,
            kind=self.principal_kind,
            client="gateway",
            request_id=request_id,
            attrs={SESSION_ATTR: self.session_id, "org": self.org, "proxy_token": self.token_id},
        )


@dataclass(frozen=True, slots=True)
class IssuedProxyToken:
    """A new proxy token. ``token`` is shown once and never stored."""

    token: SecretValue
    id: str
    session_id: str
    scope: Scope
    name: str
    route: str
    hosts: tuple[str, ...]
    expires_at: datetime
    budget: Budget

    def __repr__(self) -> str:
        return f"IssuedProxyToken(id={self.id!r}, route={self.route!r}, token=[secret])"

    def base_url(self, gateway_url: str) -> str:
        """What to give the provider SDK as its base URL (e.g. ``.../gw/openai/v1``)."""
        provider = PROVIDERS.get(self.route)
        return f"{gateway_url.rstrip('/')}/{self.route}{provider.sdk_suffix if provider else ''}"

    def to_dict(self, gateway_url: str | None = None) -> dict[str, Any]:
        """Wire form for the agent: includes the token itself (only ever at issue)."""
        d: dict[str, Any] = {
            "id": self.id,
            "token": self.token.reveal(),
            "session_id": self.session_id,
            "secret": {
                "project": self.scope.project,
                "environment": self.scope.environment,
                "name": self.name,
            },
            "route": self.route,
            "hosts": list(self.hosts),
            "expires_at": self.expires_at.isoformat(),
            "budget": self.budget.to_dict(),
        }
        if gateway_url:
            d["base_url"] = self.base_url(gateway_url)
        return d


@dataclass(frozen=True, slots=True)
class ProxyEnv:
    """What ``keybroker run`` gives a child instead of proxy-only values: per secret name a
    proxy token, and the variables that point the providers' SDKs at the gateway."""

    tokens: dict[str, SecretValue]
    extra: dict[str, str]
    session: SessionInfo

    def __repr__(self) -> str:
        return f"ProxyEnv(names={sorted(self.tokens)}, extra={sorted(self.extra)}, tokens=[secret])"


@dataclass(frozen=True, slots=True)
class UsageDelta:
    token_id: str
    requests: int
    tokens: int
    last_used_at: datetime


class ProxyTokenService:
    """Issues, verifies and revokes proxy tokens."""

    def __init__(self, sessions: SessionService, *, default_ttl_s: int = 900, max_ttl_s: int = 24 * 3600):
        self.sessions = sessions
        self.secrets = sessions.secrets
        self.store = sessions.store
        self.audit = sessions.audit
        self.clock = sessions.clock
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s

    def issue(
        self,
        principal: Principal,
        session_id: str,
        scope: Scope,
        name: str,
        *,
        ttl_s: int | None = None,
        budget: Budget | None = None,
    ) -> IssuedProxyToken:
        """A token for one secret of the principal's own live session. The budget may only
        narrow the session's. Raises SessionNotFound, SessionEnded, PermissionDenied,
        SecretNotFound, SecretDeleted, InvalidInput (no upstream, bad TTL)."""
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not isinstance(ttl, int) or not 0 < ttl <= self.max_ttl_s:
            raise InvalidInput(f"the token TTL must be 1..{self.max_ttl_s} seconds")
        info = self.sessions.get(principal, session_id)
        if not self.sessions._is_own(principal, info):
            raise PermissionDenied("only the session's own principal may take proxy tokens from it")
        now = self.clock.now()
        if info.state(now) != "active":
            raise SessionEnded(f"the session has {info.state(now)}")
        if not info.covers(scope, name):
            self.audit.record(
                principal, "proxy_token.issue", scope.path(name), result="denied:not_in_session"
            )
            raise PermissionDenied(f"the session does not hold {scope.path(name)}")
        with self.store.connect() as conn:
            meta = self.secrets._meta(scope, self.secrets._secret_row(conn, scope, name))
        upstream = upstream_for(meta)
        expires = min(now + timedelta(seconds=ttl), info.expires_at)
        final_budget = info.budget.narrow(budget)
        token = new_opaque(PROXY_TOKEN_PREFIX)
        tid = "pxt_" + _random.token_hex(10)
        with self.store.begin() as conn:
            conn.execute(
                sa.insert(tables.proxy_tokens).values(
                    id=tid,
                    token_hash=hash_token(token),
                    session_id=info.id,
                    org=scope.org,
                    project=scope.project,
                    environment=scope.environment,
                    name=name,
                    route=upstream.route,
                    hosts=list(upstream.hosts),
                    max_requests=final_budget.max_requests,
                    max_rpm=final_budget.max_rpm,
                    max_tokens=final_budget.max_tokens,
                    created_at=now,
                    expires_at=expires,
                )
            )
            self.audit.append(
                conn,
                principal,
                "proxy_token.issue",
                scope.path(name),
                detail={
                    "token": tid,
                    "session": info.id,
                    "hosts": list(upstream.hosts),
                    "expires_at": expires.isoformat(),
                    "budget": final_budget.to_dict(),
                },
            )
        return IssuedProxyToken(
            SecretValue(token),
            tid,
            info.id,
            scope,
            name,
            upstream.route,
            upstream.hosts,
            expires,
            final_budget,
        )

    def verify(self, token: str) -> ProxyGrant:
        """Turn a presented token into a grant. Raises ProxyTokenInvalid (malformed or unknown),
        ProxyTokenExpired (token or session ran out), ProxyTokenRevoked (token revoked, session
        ended, identity disabled). Does not audit: the gateway records every outcome."""
        if not is_proxy_token(token):
            raise ProxyTokenInvalid("invalid proxy token")
        h = hash_token(token)
        pt, s, i = tables.proxy_tokens, tables.sessions, tables.identities
        q = (
            sa.select(
                pt,
                s.c.principal_kind,
                s.c.principal_id,
                s.c.expires_at.label("session_expires_at"),
                s.c.ended_at,
                i.c.disabled_at,
            )
            .select_from(pt.join(s, s.c.id == pt.c.session_id).outerjoin(i, i.c.id == s.c.identity_id))
            .where(pt.c.token_hash == h)
        )
        with self.store.connect() as conn:
            row = conn.execute(q).first()
        if row is None or not hmac.compare_digest(str(row.token_hash), h):
            raise ProxyTokenInvalid("invalid proxy token")
        now = self.clock.now()
        if row.revoked_at is not None or row.ended_at is not None or row.disabled_at is not None:
            raise ProxyTokenRevoked("the proxy token was revoked or its session has ended", token=row.id)
        expires = min(row.expires_at, row.session_expires_at)
        if expires <= now:
            raise ProxyTokenExpired("the proxy token has expired", token=row.id)
        return ProxyGrant(
            token_id=row.id,
            session_id=row.session_id,
            org=row.org,
            project=row.project,
            environment=row.environment,
            name=row.name,
            route=row.route,
            hosts=tuple(row.hosts or ()),
            principal_kind=row.principal_kind,
            principal_id=row.principal_id,
            expires_at=expires,
            budget=Budget(row.max_requests, row.max_rpm, row.max_tokens),
            used_requests=int(row.used_requests),
            used_tokens=int(row.used_tokens),
        )

    def proxy_env(
        self,
        principal: Principal,
        scope: Scope,
        names: Iterable[str],
        *,
        gateway_url: str,
        ttl_s: int = 900,
        budget: Budget | None = None,
    ) -> ProxyEnv:
        """For ``keybroker run`` with proxy-only secrets: a use-only session over ``names`` (the
        principal needs ``use`` on each) and a proxy token per secret, plus the SDK base-URL
        variables of their providers (``OPENAI_BASE_URL=<gateway>/openai/v1``,
        ``ANTHROPIC_BASE_URL=<gateway>/anthropic``) and ``KEYBROKER_GATEWAY_URL``. The child
        never sees a real key. Raises what :meth:`SessionService.open_use_session` and
        :meth:`issue` raise."""
        names = list(dict.fromkeys(names))
        info = self.sessions.open_use_session(principal, scope, names, ttl_s=ttl_s, budget=budget)
        tokens: dict[str, SecretValue] = {}
        extra: dict[str, str] = {"KEYBROKER_GATEWAY_URL": gateway_url.rstrip("/")}
        for n in names:
            issued = self.issue(principal, info.id, scope, n, ttl_s=ttl_s)
            tokens[n] = issued.token
            provider = PROVIDERS.get(issued.route)
            if provider is not None and provider.env_base_url:
                extra.setdefault(provider.env_base_url, issued.base_url(gateway_url))
        return ProxyEnv(tokens, extra, info)

    def revoke(self, principal: Principal, token_id: str) -> None:
        """Revoke one proxy token (its session's principal, or whoever manages the session)."""
        pt = tables.proxy_tokens
        with self.store.connect() as conn:
            sid = conn.execute(sa.select(pt.c.session_id).where(pt.c.id == str(token_id)[:40])).scalar()
        if sid is None:
            raise NotFound("no such proxy token")
        info = self.sessions.get(principal, str(sid))
        with self.store.begin() as conn:
            conn.execute(
                sa.update(pt)
                .where(pt.c.id == token_id, pt.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            self.audit.append(
                conn,
                principal,
                "proxy_token.revoke",
                f"{info.org}/_sessions/{info.id}",
                detail={"token": token_id},
            )
        self.sessions._notify(Revocation((), (str(token_id),), "proxy token revoked"))

    def list_tokens(self, principal: Principal, session_id: str) -> list[dict[str, Any]]:
        """The tokens of a session (never the tokens themselves)."""
        info = self.sessions.get(principal, session_id)
        pt = tables.proxy_tokens
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.select(pt).where(pt.c.session_id == info.id).order_by(pt.c.created_at)
            ).all()
        return [
            {
                "id": r.id,
                "secret": {"project": r.project, "environment": r.environment, "name": r.name},
                "route": r.route,
                "hosts": list(r.hosts or ()),
                "created_at": r.created_at.isoformat(),
                "expires_at": r.expires_at.isoformat(),
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                "used_requests": int(r.used_requests),
                "used_tokens": int(r.used_tokens),
                "budget": Budget(r.max_requests, r.max_rpm, r.max_tokens).to_dict(),
            }
            for r in rows
        ]

    def add_usage(self, conn: Any, deltas: Iterable[UsageDelta]) -> None:
        """Add counted use inside the caller's transaction (the gateway's audit flush)."""
        pt = tables.proxy_tokens
        for d in deltas:
            conn.execute(
                sa.update(pt)
                .where(pt.c.id == d.token_id)
                .values(
                    used_requests=pt.c.used_requests + d.requests,
                    used_tokens=pt.c.used_tokens + d.tokens,
                    last_used_at=d.last_used_at,
                )
            )
