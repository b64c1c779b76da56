"""Access tokens: issue, authenticate, narrow, renew, revoke.

Format (GitHub style, so secret scanners recognise a leaked one)::

    kbt_<43 base62 chars: 256 random bits><6 base62 chars: CRC32 of the body>

The checksum lets a malformed or mistyped token be refused without touching the database. Only
the SHA-256 of a token is stored; it is looked up by that hash and compared in constant time.
A token's ``accessor`` (``kba_...``) names it for management (lookup, revoke) without being
able to authenticate.

Delegation only narrows: a child token's scope, lifetime, use count and CIDR allow-list must lie
within its parent's, and revoking a token revokes all its descendants at once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from keybroker.core._clock import Clock
from keybroker.core._principal import Principal
from keybroker.core._rbac import AuthPrincipal, Grant, RbacAuthorizer, TokenScope, org_scope, scope_widening
from keybroker.core._vault import Vault
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AuthenticationError,
    InvalidInput,
    KeybrokerError,
    LoginLockedOut,
    NotFound,
    PermissionDenied,
    RateLimited,
    TokenNotFound,
    TokenWidening,
)
from keybroker.store import tables

__all__ = [
    "CLIENT_ID_PREFIX",
    "CLIENT_SECRET_PREFIX",
    "TOKEN_PREFIX",
    "IssuedToken",
    "LoginLockedOut",
    "RateLimited",
    "RateLimiter",
    "TokenInfo",
    "TokenNotFound",
    "TokenService",
    "TokenWidening",
    "check_token_format",
    "hash_token",
    "new_opaque",
]

TOKEN_PREFIX = "kbt_"
CLIENT_SECRET_PREFIX = "kbs_"
CLIENT_ID_PREFIX = "kbc_"
ACCESSOR_PREFIX = "kba_"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_SET = frozenset(_B62)
_BODY_LEN = 43  # 62**43 > 2**256
_CRC_LEN = 6  # 62**6 > 2**32
DEFAULT_CHILD_TTL = 24 * 3600


# -- format --------------------------------------------------------------------------------------
def _b62(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_B62[r])
    s = "".join(reversed(out))
    if len(s) > width:
        raise ValueError("number too large")
    return s.rjust(width, "0")


def new_opaque(prefix: str) -> str:
    """``prefix`` + 256 random bits in base62 + a base62 CRC32 of those characters."""
    body = _b62(int.from_bytes(os.urandom(32), "big"), _BODY_LEN)
    return f"{prefix}{body}{_b62(zlib.crc32(body.encode()), _CRC_LEN)}"


def check_token_format(token: str, prefix: str = TOKEN_PREFIX) -> bool:
    """Prefix, length, alphabet and checksum (no database needed)."""
    if not isinstance(token, str) or len(token) != len(prefix) + _BODY_LEN + _CRC_LEN:
        return False
    if not token.startswith(prefix):
        return False
    rest = token[len(prefix) :]
    if not set(rest) <= _B62_SET:
        return False
    body, crc = rest[:_BODY_LEN], rest[_BODY_LEN:]
    return hmac.compare_digest(_b62(zlib.crc32(body.encode()), _CRC_LEN), crc)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _accessor() -> str:
    return ACCESSOR_PREFIX + _b62(int.from_bytes(os.urandom(16), "big"), 22)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _parse_cidrs(cidrs: Iterable[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for c in cidrs or ():
        if not isinstance(c, str):
            raise InvalidInput("cidrs must be a list of strings such as 10.0.0.0/8")
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError:
            raise InvalidInput(f"invalid CIDR {c[:50]!r}") from None
    return tuple(dict.fromkeys(out))


def _cidrs_within(child: Sequence[str], parent: Sequence[str]) -> bool:
    if not parent:
        return True
    pn = [ipaddress.ip_network(p) for p in parent]
    for c in child:
        cn = ipaddress.ip_network(c)
        if not any(cn.version == p.version and cn.subnet_of(p) for p in pn):  # type: ignore[arg-type]
            return False
    return True


def address_allowed(address: str | None, cidrs: Sequence[str]) -> bool:
    if not cidrs:
        return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(c) for c in cidrs)


# -- models ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TokenInfo:
    """Everything about a token except the token itself."""

    accessor: str
    org: str
    identity_id: str
    identity: str
    identity_kind: str
    parent: str | None
    display_name: str
    source: str
    scope: TokenScope
    cidrs: tuple[str, ...]
    ttl_s: int | None
    num_uses: int | None
    uses_left: int | None
    created_at: datetime
    expires_at: datetime | None
    max_expires_at: datetime | None
    revoked_at: datetime | None
    roles: dict[str, str]

    def ttl_remaining(self, now: datetime) -> int | None:
        if self.expires_at is None:
            return None
        return max(0, int((self.expires_at - now).total_seconds()))

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "accessor": self.accessor,
            "org": self.org,
            "identity": {"id": self.identity_id, "name": self.identity, "kind": self.identity_kind},
            "parent": self.parent,
            "display_name": self.display_name,
            "source": self.source,
            "scope": self.scope.to_dict(),
            "cidrs": list(self.cidrs),
            "ttl_s": self.ttl_s,
            "num_uses": self.num_uses,
            "uses_left": self.uses_left,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "max_expires_at": _iso(self.max_expires_at),
            "revoked_at": _iso(self.revoked_at),
            "roles": dict(self.roles),
        }
        if now is not None:
            d["ttl_remaining_s"] = self.ttl_remaining(now)
        return d


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token. ``token`` is shown once and never stored."""

    token: SecretValue
    info: TokenInfo

    def __repr__(self) -> str:
        return f"IssuedToken(accessor={self.info.accessor!r}, token=[secret])"


# -- rate limiting -------------------------------------------------------------------------------
class RateLimiter:
    """Token bucket per key (a token accessor or a client address), on the injected clock.
    ``rate`` <= 0 turns it off. Per process: replicas each count their own share."""

    def __init__(self, clock: Clock, rate: float, burst: float | None = None, max_keys: int = 100_000):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate * 2))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket. Raises :class:`RateLimited`."""
        if self.rate <= 0:
            return
        now = self.clock.now()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + max(0.0, (now - last).total_seconds()) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                retry = (1.0 - level) / self.rate
                raise RateLimited(f"too many requests; retry in {retry:.1f}s", retry_after=round(retry, 3))
            self._buckets[key] = (level - 1.0, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)


# -- the service -----------------------------------------------------------------------------------
class TokenService:
    """Issues and checks tokens. Every change is audited in the same transaction."""

    def __init__(
        self,
        vault: Vault,
        authorizer: RbacAuthorizer | None = None,
        *,
        token_rate: float = 0.0,
        token_burst: float | None = None,
        address_rate: float = 0.0,
        address_burst: float | None = None,
        login_ttl_s: int = 3600,
        login_max_ttl_s: int = 24 * 3600,
    ) -> None:
        self.vault = vault
        self.store = vault.store
        self.audit = vault.audit
        self.clock = vault.clock
        self.authorizer = authorizer or RbacAuthorizer()
        self.token_limiter = RateLimiter(self.clock, token_rate, token_burst)
        self.address_limiter = RateLimiter(self.clock, address_rate, address_burst)
        self.login_ttl_s = login_ttl_s
        self.login_max_ttl_s = login_max_ttl_s

    # ------------------------------------------------------------------ queries
    def _select(self) -> sa.Select[Any]:
        t, i, o, rb = tables.tokens, tables.identities, tables.orgs, tables.role_bindings
        return (
            sa.select(
                t,
                i.c.name.label("identity_name"),
                i.c.kind.label("identity_kind"),
                i.c.sys_admin,
                i.c.disabled_at,
                o.c.name.label("org_name"),
                rb.c.project.label("rb_project"),
                rb.c.role.label("rb_role"),
            )
            .select_from(
                t.join(i, i.c.id == t.c.identity_id)
                .join(o, o.c.id == t.c.org_id)
                .outerjoin(rb, rb.c.identity_id == t.c.identity_id)
            )
            .order_by(t.c.created_at, t.c.id)
        )

    @staticmethod
    def _infos(rows: Iterable[Row[Any]]) -> list[tuple[TokenInfo, Row[Any]]]:
        seen: dict[str, tuple[TokenInfo, Row[Any]]] = {}
        for r in rows:
            if r.id not in seen:
                info = TokenInfo(
                    accessor=r.id,
                    org=r.org_name,
                    identity_id=r.identity_id,
                    identity=r.identity_name,
                    identity_kind=r.identity_kind,
                    parent=r.parent_id,
                    display_name=r.display_name,
                    source=r.source,
                    scope=TokenScope.from_dict(r.scope),
                    cidrs=tuple(r.cidrs or ()),
                    ttl_s=r.ttl_s,
                    num_uses=r.num_uses,
                    uses_left=r.uses_left,
                    created_at=r.created_at,
                    expires_at=r.expires_at,
                    max_expires_at=r.max_expires_at,
                    revoked_at=r.revoked_at,
                    roles={},
                )
                seen[r.id] = (info, r)
            if r.rb_project is not None:
                seen[r.id][0].roles[r.rb_project] = r.rb_role
        return list(seen.values())

    def _principal(
        self, info: TokenInfo, row: Row[Any], *, client: str, request_id: str | None
    ) -> AuthPrincipal:
        grant = Grant(
            org=info.org,
            identity_id=info.identity_id,
            token_id=info.accessor,
            scope=info.scope,
            roles=tuple(sorted(info.roles.items())),
            sys=bool(row.sys_admin),
        )
        return AuthPrincipal(
            id=f"{info.org}/{info.identity}",
            kind=info.identity_kind,
            client=client,
            request_id=request_id,
            attrs={"token": info.accessor, "org": info.org, "identity_id": info.identity_id},
            grant=grant,
        )

    # ------------------------------------------------------------------ authenticate
    def check_address(self, address: str | None) -> None:
        """Per-address rate limit (also for unauthenticated calls such as logins)."""
        if address:
            self.address_limiter.check(f"addr:{address}")

    def authenticate(
        self,
        token: str,
        *,
        address: str | None = None,
        client: str = "http",
        request_id: str | None = None,
    ) -> AuthPrincipal:
        """Turn a presented token into a principal. Raises AuthenticationError (bad, unknown,
        expired, revoked or used-up token), PermissionDenied (address not allowed), RateLimited."""
        self.check_address(address)
        anon = Principal(id="anonymous", kind="anonymous", client=client, request_id=request_id)
        if not check_token_format(token):
            self._audit_denied(anon, "_auth/token", "malformed")
            raise AuthenticationError("invalid token")
        h = hash_token(token)
        with self.store.connect() as conn:
            rows = conn.execute(self._select().where(tables.tokens.c.token_hash == h)).all()
        found = self._infos(rows)
        if not found or not hmac.compare_digest(str(found[0][1].token_hash), h):
            self._audit_denied(anon, "_auth/token", "unknown")
            raise AuthenticationError("invalid token")
        info, row = found[0]
        now = self.clock.now()
        target = f"{info.org}/_tokens/{info.accessor}"
        why = None
        if info.revoked_at is not None:
            why = "revoked"
        elif info.expires_at is not None and info.expires_at <= now:
            why = "expired"
        elif row.disabled_at is not None:
            why = "identity_disabled"
        elif info.uses_left is not None and info.uses_left <= 0:
            why = "uses_exhausted"
        if why:
            self._audit_denied(anon, target, why)
            raise AuthenticationError(f"the token is {why.replace('_', ' ')}", reason=why)
        if not address_allowed(address, info.cidrs):
            self._audit_denied(anon, target, "address_not_allowed")
            raise PermissionDenied("this token may not be used from this address")
        self.token_limiter.check(f"tok:{info.accessor}")
        if info.uses_left is not None:
            t = tables.tokens
            with self.store.begin() as conn:
                n = conn.execute(
                    sa.update(t)
                    .where(t.c.id == info.accessor, t.c.uses_left > 0)
                    .values(uses_left=t.c.uses_left - 1)
                ).rowcount
            if n != 1:
                self._audit_denied(anon, target, "uses_exhausted")
                raise AuthenticationError("the token is uses exhausted", reason="uses_exhausted")
        return self._principal(info, row, client=client, request_id=request_id)

    def _audit_denied(self, principal: Principal, target: str, why: str) -> None:
        try:
            self.audit.record(principal, "auth.token", target, result=f"denied:{why}")
        except KeybrokerError:
            pass

    # ------------------------------------------------------------------ issue
    def _insert(
        self,
        conn: Connection,
        *,
        org_id: int,
        identity_id: str,
        parent_id: str | None,
        scope: TokenScope,
        cidrs: Sequence[str],
        ttl_s: int | None,
        expires_at: datetime | None,
        max_expires_at: datetime | None,
        uses: int | None,
        display_name: str,
        source: str,
    ) -> tuple[str, str]:
        token = new_opaque(TOKEN_PREFIX)
        accessor = _accessor()
        conn.execute(
            sa.insert(tables.tokens).values(
                id=accessor,
                token_hash=hash_token(token),
                org_id=org_id,
                identity_id=identity_id,
                parent_id=parent_id,
                display_name=display_name[:128],
                source=source,
                scope=scope.to_dict(),
                cidrs=list(cidrs),
                ttl_s=ttl_s,
                num_uses=uses,
                uses_left=uses,
                created_at=self.clock.now(),
                expires_at=expires_at,
                max_expires_at=max_expires_at,
            )
        )
        return token, accessor

    def _load(self, conn: Connection, accessor: str) -> tuple[TokenInfo, Row[Any]]:
        found = self._infos(conn.execute(self._select().where(tables.tokens.c.id == accessor)).all())
        if not found:
            raise TokenNotFound("no such token")
        return found[0]

    def issue(
        self,
        conn: Connection,
        principal: Principal,
        *,
        org_id: int,
        identity_id: str,
        scope: TokenScope | None = None,
        ttl_s: int | None = None,
        max_ttl_s: int | None = None,
        uses: int | None = None,
        cidrs: Sequence[str] = (),
        display_name: str = "",
        source: str = "login",
        parent_id: str | None = None,
    ) -> IssuedToken:
        """Insert a token inside the caller's transaction (no narrowing check: for logins and
        bootstrap, whose callers decide). Audited."""
        now = self.clock.now()
        expires = now + timedelta(seconds=ttl_s) if ttl_s else None
        max_exp = now + timedelta(seconds=max_ttl_s) if max_ttl_s else None
        if expires is not None and max_exp is not None:
            expires = min(expires, max_exp)
        token, accessor = self._insert(
            conn,
            org_id=org_id,
            identity_id=identity_id,
            parent_id=parent_id,
            scope=scope or TokenScope(),
            cidrs=cidrs,
            ttl_s=ttl_s,
            expires_at=expires,
            max_expires_at=max_exp,
            uses=uses,
            display_name=display_name,
            source=source,
        )
        info, _ = self._load(conn, accessor)
        self.audit.append(
            conn,
            principal,
            "token.create",
            f"{info.org}/_tokens/{accessor}",
            detail={"identity": info.identity, "source": source, "parent": parent_id},
        )
        return IssuedToken(SecretValue(token), info)

    def create(
        self,
        principal: Principal,
        *,
        identity: str | None = None,
        scope: TokenScope | dict[str, Any] | None = None,
        ttl_s: int | None = None,
        max_ttl_s: int | None = None,
        uses: int | None = None,
        cidrs: Iterable[str] | None = None,
        display_name: str = "",
    ) -> IssuedToken:
        """A child of the caller's token, for the caller's identity or (org admins) another
        identity of the same organization. The child may only narrow the parent: raises
        TokenWidening naming the field, InvalidInput, PermissionDenied, NotFound."""
        g = _grant_of(principal)
        for k, v in (("ttl_s", ttl_s), ("max_ttl_s", max_ttl_s), ("uses", uses)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise InvalidInput(f"{k} must be a positive integer")
        want_cidrs = _parse_cidrs(cidrs)
        now = self.clock.now()
        i = tables.identities
        # checks first, on a read connection: a denial is audited in a transaction of its own
        with self.store.connect() as conn:
            parent, prow = self._load(conn, g.token_id)
            irow = None
            if identity is not None and identity != parent.identity:
                irow = conn.execute(
                    sa.select(i.c.id, i.c.disabled_at).where(i.c.org_id == prow.org_id, i.c.name == identity)
                ).first()
        if parent.revoked_at is not None:
            raise AuthenticationError("the token is revoked")
        child_scope = (
            scope if isinstance(scope, TokenScope) else TokenScope.from_dict(scope, base=parent.scope)
        )
        problem: tuple[str, str] | None = None
        widened = scope_widening(child_scope, parent.scope)
        if widened:
            problem = (widened.split(" ")[0], f"a child token cannot widen its parent: {widened}")
        ident_id = parent.identity_id
        if identity is not None and identity != parent.identity:
            if not self.authorizer.allows(principal, "admin", org_scope(g.org), None):
                self._deny(principal, parent, "permission_denied")
                raise PermissionDenied(f"{principal.label} may not create tokens for other identities")
            if irow is None or irow.disabled_at is not None:
                raise NotFound(f"no identity {identity[:64]!r} in this organization")
            ident_id = str(irow.id)
        # lifetime: never beyond the parent
        if ttl_s is None:
            ttl_s = DEFAULT_CHILD_TTL
            if parent.expires_at is not None:
                ttl_s = max(1, min(ttl_s, int((parent.expires_at - now).total_seconds())))
        expires = now + timedelta(seconds=ttl_s)
        max_exp = now + timedelta(seconds=max_ttl_s) if max_ttl_s else parent.max_expires_at
        if problem is None and parent.expires_at is not None and expires > parent.expires_at:
            left = max(0, int((parent.expires_at - now).total_seconds()))
            problem = ("ttl_s", f"a child token cannot outlive its parent: its remaining lifetime is {left}s")
        if (
            problem is None
            and parent.max_expires_at is not None
            and max_exp is not None
            and max_exp > parent.max_expires_at
        ):
            problem = ("max_ttl_s", "max_ttl_s is longer than the parent token's maximum lifetime")
        if max_exp is not None:
            expires = min(expires, max_exp)
        if problem is None and parent.uses_left is not None and (uses is None or uses > parent.uses_left):
            problem = ("uses", f"the parent token has {parent.uses_left} uses left: give uses <= that")
        if want_cidrs:
            if problem is None and not _cidrs_within(want_cidrs, parent.cidrs):
                problem = ("cidrs", "cidrs must lie within the parent token's CIDRs")
        else:
            want_cidrs = parent.cidrs
        if problem is not None:
            self._deny(principal, parent, f"widening:{problem[0]}")
            raise TokenWidening(problem[1], field=problem[0])
        with self.store.begin() as conn:
            token, accessor = self._insert(
                conn,
                org_id=int(prow.org_id),
                identity_id=ident_id,
                parent_id=parent.accessor,
                scope=child_scope,
                cidrs=want_cidrs,
                ttl_s=ttl_s,
                expires_at=expires,
                max_expires_at=max_exp,
                uses=uses,
                display_name=display_name,
                source="child",
            )
            info, _ = self._load(conn, accessor)
            self.audit.append(
                conn,
                principal,
                "token.create",
                f"{info.org}/_tokens/{accessor}",
                detail={"identity": info.identity, "source": "child", "parent": parent.accessor},
            )
        return IssuedToken(SecretValue(token), info)

    def _deny(self, principal: Principal, parent: TokenInfo, why: str) -> None:
        try:
            self.audit.record(principal, "token.create", f"{parent.org}/_tokens", result=f"denied:{why}")
        except KeybrokerError:
            pass

    # ------------------------------------------------------------------ inspect / manage
    def lookup_self(self, principal: Principal) -> TokenInfo:
        g = _grant_of(principal)
        with self.store.connect() as conn:
            return self._load(conn, g.token_id)[0]

    def _visible(self, conn: Connection, principal: Principal, accessor: str) -> tuple[TokenInfo, Row[Any]]:
        """A token the principal may manage: its own, one of its descendants, or (org admin)
        any of its organization. Anything else is 'not found' (nothing leaks across orgs)."""
        g = _grant_of(principal)
        try:
            info, row = self._load(conn, accessor)
        except TokenNotFound:
            raise TokenNotFound("no such token") from None
        if info.org != g.org and not self.authorizer.is_sys(principal):
            raise TokenNotFound("no such token")
        if info.identity_id == g.identity_id:
            return info, row
        if self.authorizer.allows(principal, "admin", org_scope(info.org), None):
            return info, row
        # a descendant of the caller's token?
        cur = info.parent
        t = tables.tokens
        for _ in range(64):
            if cur is None:
                break
            if cur == g.token_id:
                return info, row
            cur = conn.execute(sa.select(t.c.parent_id).where(t.c.id == cur)).scalar()
        raise TokenNotFound("no such token")

    def lookup(self, principal: Principal, accessor: str) -> TokenInfo:
        try:
            with self.store.connect() as conn:
                return self._visible(conn, principal, accessor)[0]
        except TokenNotFound:
            self._audit_not_visible(principal, "token.lookup", accessor)
            raise

    def list_tokens(
        self, principal: Principal, *, identity: str | None = None, include_revoked: bool = False
    ) -> list[TokenInfo]:
        """Org admins see every token of the organization; others their identity's own."""
        g = _grant_of(principal)
        t, i, o = tables.tokens, tables.identities, tables.orgs
        q = self._select().where(o.c.name == g.org)
        if not self.authorizer.allows(principal, "admin", org_scope(g.org), None):
            q = q.where(t.c.identity_id == g.identity_id)
        if identity:
            q = q.where(i.c.name == identity)
        if not include_revoked:
            q = q.where(t.c.revoked_at.is_(None))
        with self.store.connect() as conn:
            return [info for info, _ in self._infos(conn.execute(q).all())]

    def revoke(self, principal: Principal, accessor: str | None = None) -> int:
        """Revoke a token (default: the caller's own) and every descendant. Returns how many."""
        g = _grant_of(principal)
        try:
            with self.store.connect() as conn:
                self._visible(conn, principal, accessor or g.token_id)
        except TokenNotFound:
            self._audit_not_visible(principal, "token.revoke", accessor or g.token_id)
            raise
        with self.store.begin() as conn:
            info, _ = self._visible(conn, principal, accessor or g.token_id)
            n = self._revoke_tree(conn, [info.accessor])
            self.audit.append(
                conn, principal, "token.revoke", f"{info.org}/_tokens/{info.accessor}", detail={"revoked": n}
            )
        return n

    def _audit_not_visible(self, principal: Principal, action: str, accessor: str) -> None:
        """A refused (or absent) token lookup, recorded under the caller's own organization."""
        org = principal.grant.org if isinstance(principal, AuthPrincipal) and principal.grant else "_auth"
        try:
            self.audit.record(
                principal, action, f"{org}/_tokens/{accessor[:40]}", result="denied:token_not_found"
            )
        except KeybrokerError:
            pass

    def _revoke_tree(self, conn: Connection, roots: list[str]) -> int:
        t = tables.tokens
        ids: list[str] = []
        frontier = list(roots)
        while frontier:
            ids.extend(frontier)
            frontier = [
                str(x) for x in conn.execute(sa.select(t.c.id).where(t.c.parent_id.in_(frontier))).scalars()
            ]
        now = self.clock.now()
        for k in range(0, len(ids), 500):
            conn.execute(
                sa.update(t)
                .where(t.c.id.in_(ids[k : k + 500]), t.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return len(ids)

    def revoke_identity(self, conn: Connection, identity_id: str) -> int:
        """Revoke every token of an identity (and their descendants), in the caller's transaction."""
        t = tables.tokens
        roots = [
            str(x) for x in conn.execute(sa.select(t.c.id).where(t.c.identity_id == identity_id)).scalars()
        ]
        return self._revoke_tree(conn, roots) if roots else 0

    def renew_self(self, principal: Principal, increment_s: int | None = None) -> TokenInfo:
        """Push the expiry out by ``increment_s`` (default: the token's TTL), never beyond its
        maximum lifetime nor its parent's expiry."""
        g = _grant_of(principal)
        if increment_s is not None and (not isinstance(increment_s, int) or increment_s <= 0):
            raise InvalidInput("increment must be a positive number of seconds")
        t = tables.tokens
        now = self.clock.now()
        with self.store.begin() as conn:
            info, _ = self._load(conn, g.token_id)
            if info.expires_at is not None:
                new = now + timedelta(seconds=increment_s or info.ttl_s or self.login_ttl_s)
                if info.max_expires_at is not None:
                    new = min(new, info.max_expires_at)
                if info.parent is not None:
                    pexp = conn.execute(sa.select(t.c.expires_at).where(t.c.id == info.parent)).scalar()
                    if pexp is not None:
                        new = min(new, pexp)
                new = max(new, info.expires_at)
                conn.execute(sa.update(t).where(t.c.id == info.accessor).values(expires_at=new))
            self.audit.append(conn, principal, "token.renew", f"{info.org}/_tokens/{info.accessor}")
            return self._load(conn, g.token_id)[0]


def _grant_of(principal: Principal) -> Grant:
    g = principal.grant if isinstance(principal, AuthPrincipal) else None
    if g is None:
        raise AuthenticationError("this operation needs a token")
    return g
