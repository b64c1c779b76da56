"""Organizations, identities (users, services, agents), their roles and machine logins.

Machine login comes in two kinds, both exchanging a credential for a short-lived token:

* client id + client secret (like Vault AppRole / Infisical Universal Auth). The secret is
  ``kbs_...`` (same checksummed format as tokens), shown once, stored as HMAC-SHA256 under a
  random salt and compared in constant time;
* a signed challenge: the identity registers an Ed25519 public key; it asks for a challenge
  (single use, 60 s) and signs :func:`challenge_message` with its private key.

Failed logins count per client id and per client address; after ``threshold`` failures the key
is locked out for ``base_s * 2**(failures - threshold)`` seconds (capped at ``max_s``), on the
injected clock. A locked-out attempt is refused before the credential is even checked.

Tenant isolation: every lookup is filtered by organization, and something of another
organization answers exactly as something that does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Connection, Row

from keybroker.core._models import Scope
from keybroker.core._names import check_scope_name
from keybroker.core._principal import Principal
from keybroker.core._rbac import ROLES, AuthPrincipal, RbacAuthorizer, TokenScope, org_scope
from keybroker.core._tokens import (
    CLIENT_ID_PREFIX,
    CLIENT_SECRET_PREFIX,
    IssuedToken,
    LoginLockedOut,
    TokenService,
    _b62,
    check_token_format,
    new_opaque,
)
from keybroker.core._vault import Vault
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AlreadyExists,
    AuthenticationError,
    IdentityNotFound,
    InvalidInput,
    InvalidName,
    KeybrokerError,
    NotFound,
    PermissionDenied,
)
from keybroker.store import tables

__all__ = [
    "IDENTITY_KINDS",
    "Challenge",
    "ClientCredentials",
    "Identity",
    "IdentityNotFound",
    "IdentityService",
    "LockoutPolicy",
    "challenge_message",
]

IDENTITY_KINDS = ("user", "service", "agent")
_IDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
CHALLENGE_TTL_S = 60


def check_identity_name(name: str) -> str:
    if not isinstance(name, str) or not _IDENT_NAME.fullmatch(name):
        raise InvalidName(
            "invalid identity name: letters, digits, '_', '.', '@' and '-', starting with a letter or "
            "digit, at most 64 characters"
        )
    return name


def challenge_message(challenge_id: str, nonce: bytes) -> bytes:
    """The exact bytes an identity signs to log in with its key."""
    return b"keybroker-login-v1\n" + challenge_id.encode() + b"\n" + nonce


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    org: str
    name: str
    kind: str
    description: str
    created_at: datetime
    disabled_at: datetime | None
    client_id: str | None
    has_public_key: bool
    sys_admin: bool
    roles: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "disabled_at": _iso(self.disabled_at),
            "client_id": self.client_id,
            "has_public_key": self.has_public_key,
            "sys_admin": self.sys_admin,
            "roles": dict(self.roles),
        }


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    client_secret: SecretValue

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=[secret])"


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    nonce: bytes
    expires_at: datetime

    @property
    def message(self) -> bytes:
        return challenge_message(self.challenge_id, self.nonce)

    def to_dict(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "nonce": base64.b64encode(self.nonce).decode(),
            "message": base64.b64encode(self.message).decode(),
            "expires_at": _iso(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int = 5
    base_s: float = 5.0
    max_s: float = 900.0

    def lock_for(self, failures: int) -> float | None:
        if failures < self.threshold:
            return None
        return float(min(self.max_s, self.base_s * 2 ** (failures - self.threshold)))


def _hash_secret(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def _load_public_key(text: str) -> str:
    """Accept an Ed25519 public key as PEM or as base64 of its 32 raw bytes; return PEM."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("public_key must be an Ed25519 public key (PEM or base64 of 32 bytes)")
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            raw = base64.b64decode(text, validate=True)
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise InvalidInput("public_key is not a readable Ed25519 public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInput("public_key must be an Ed25519 key")
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class IdentityService:
    """Organizations, identities, role bindings, credentials and logins."""

    def __init__(
        self,
        vault: Vault,
        tokens: TokenService,
        authorizer: RbacAuthorizer | None = None,
        *,
        lockout: LockoutPolicy | None = None,
    ) -> None:
        self.vault = vault
        self.store = vault.store
        self.audit = vault.audit
        self.clock = vault.clock
        self.tokens = tokens
        self.authorizer = authorizer or tokens.authorizer
        self.lockout = lockout or LockoutPolicy()

    # ------------------------------------------------------------------ helpers
    def _org_of(self, principal: Principal, org: str | None) -> str:
        if org is not None:
            check_scope_name("organization", org)
            return org
        if isinstance(principal, AuthPrincipal) and principal.grant is not None:
            return principal.grant.org
        return "default"

    def _authorize(
        self, principal: Principal, action: str, scope: Scope, audit_action: str, target: str
    ) -> None:
        if not self.authorizer.allows(principal, action, scope, None):
            self._record(principal, audit_action, target, "denied:permission_denied")
            raise PermissionDenied(f"{principal.label} may not {audit_action.replace('.', ' ')} here")

    def _record(self, principal: Principal, action: str, target: str, result: str, **kw: Any) -> None:
        try:
            self.audit.record(principal, action, target, result=result, **kw)
        except KeybrokerError:
            pass

    @staticmethod
    def _org_id(conn: Connection, org: str) -> int:
        oid = conn.execute(sa.select(tables.orgs.c.id).where(tables.orgs.c.name == org)).scalar()
        if oid is None:
            # the same answer as "no such identity", so an org's existence does not leak
            raise IdentityNotFound("no such identity")
        return int(oid)

    def _row(self, conn: Connection, org: str, name: str) -> Row[Any]:
        i, o = tables.identities, tables.orgs
        row = conn.execute(
            sa.select(i, o.c.name.label("org_name"))
            .join(o, o.c.id == i.c.org_id)
            .where(o.c.name == org, i.c.name == name)
        ).first()
        if row is None:
            raise IdentityNotFound(f"no identity {name[:64]!r} in this organization")
        return row

    def _identity(self, conn: Connection, row: Row[Any]) -> Identity:
        rb = tables.role_bindings
        roles = {
            str(r.project): str(r.role)
            for r in conn.execute(sa.select(rb.c.project, rb.c.role).where(rb.c.identity_id == row.id))
        }
        return Identity(
            id=row.id,
            org=row.org_name,
            name=row.name,
            kind=row.kind,
            description=row.description,
            created_at=row.created_at,
            disabled_at=row.disabled_at,
            client_id=row.client_id,
            has_public_key=row.public_key is not None,
            sys_admin=bool(row.sys_admin),
            roles=roles,
        )

    # ------------------------------------------------------------------ organizations
    def create_org(self, principal: Principal, name: str) -> dict[str, Any]:
        """New organization (system operator only). Raises AlreadyExists, PermissionDenied."""
        check_scope_name("organization", name)
        if not self.authorizer.allows(principal, "admin", Scope("*", "*", "*"), None):
            self._record(principal, "org.create", "_sys/orgs", "denied:permission_denied")
            raise PermissionDenied("only the system operator may create organizations")
        now = self.clock.now()
        with self.store.begin() as conn:
            if conn.execute(sa.select(tables.orgs.c.id).where(tables.orgs.c.name == name)).first():
                raise AlreadyExists(f"organization {name!r} already exists")
            conn.execute(sa.insert(tables.orgs).values(name=name, created_at=now))
            self.audit.append(conn, principal, "org.create", f"_sys/orgs/{name}")
        return {"name": name, "created_at": _iso(now)}

    def list_orgs(self, principal: Principal) -> list[dict[str, Any]]:
        if not self.authorizer.allows(principal, "list", Scope("*", "*", "*"), None):
            self._record(principal, "org.list", "_sys/orgs", "denied:permission_denied")
            raise PermissionDenied("only the system operator may list organizations")
        o = tables.orgs
        with self.store.connect() as conn:
            rows = conn.execute(sa.select(o.c.name, o.c.created_at).order_by(o.c.name)).all()
        return [{"name": r.name, "created_at": _iso(r.created_at)} for r in rows]

    def list_projects(self, principal: Principal, *, org: str | None = None) -> list[dict[str, Any]]:
        """The projects of the organization the principal holds a role on (names of others stay
        hidden), with their environments."""
        org = self._org_of(principal, org)
        o, p, e = tables.orgs, tables.projects, tables.environments
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.select(p.c.name, p.c.description, e.c.name.label("env"))
                .select_from(o.join(p, p.c.org_id == o.c.id).outerjoin(e, e.c.project_id == p.c.id))
                .where(o.c.name == org)
                .order_by(p.c.name, e.c.id)
            ).all()
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            if not self.authorizer.can_see_project(principal, org, r.name):
                continue
            d = out.setdefault(r.name, {"name": r.name, "description": r.description, "environments": []})
            if r.env:
                d["environments"].append(r.env)
        return list(out.values())

    # ------------------------------------------------------------------ identities
    def create(
        self,
        principal: Principal,
        name: str,
        kind: str = "agent",
        *,
        description: str = "",
        org: str | None = None,
        sys_admin: bool = False,
    ) -> Identity:
        """Raises InvalidName, InvalidInput, AlreadyExists, PermissionDenied."""
        check_identity_name(name)
        if kind not in IDENTITY_KINDS:
            raise InvalidInput(f"identity kind must be one of {', '.join(IDENTITY_KINDS)}")
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        self._authorize(principal, "admin", org_scope(org), "identity.create", target)
        if sys_admin and not self.authorizer.is_sys(principal):
            self._record(principal, "identity.create", target, "denied:permission_denied")
            raise PermissionDenied("only the system operator may create system identities")
        i = tables.identities
        now = self.clock.now()
        with self.store.begin() as conn:
            org_id = self._org_id(conn, org)
            if conn.execute(sa.select(i.c.id).where(i.c.org_id == org_id, i.c.name == name)).first():
                raise AlreadyExists(f"identity {name!r} already exists")
            conn.execute(
                sa.insert(i).values(
                    id=uuid.uuid4().hex,
                    org_id=org_id,
                    name=name,
                    kind=kind,
                    description=str(description)[:1000],
                    sys_admin=sys_admin,
                    created_at=now,
                )
            )
            self.audit.append(conn, principal, "identity.create", target, detail={"kind": kind})
            return self._identity(conn, self._row(conn, org, name))

    def list_identities(self, principal: Principal, *, org: str | None = None) -> list[Identity]:
        org = self._org_of(principal, org)
        self._authorize(principal, "list", org_scope(org), "identity.list", f"{org}/_identities")
        i, o = tables.identities, tables.orgs
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.select(i, o.c.name.label("org_name"))
                .join(o, o.c.id == i.c.org_id)
                .where(o.c.name == org)
                .order_by(i.c.name)
            ).all()
            return [self._identity(conn, r) for r in rows]

    def get(self, principal: Principal, name: str, *, org: str | None = None) -> Identity:
        org = self._org_of(principal, org)
        own = isinstance(principal, AuthPrincipal) and principal.id == f"{org}/{name}"
        if not own:
            self._authorize(principal, "list", org_scope(org), "identity.read", f"{org}/_identities/{name}")
        with self.store.connect() as conn:
            return self._identity(conn, self._row(conn, org, name))

    def disable(self, principal: Principal, name: str, *, org: str | None = None) -> int:
        """Disable an identity and revoke all its tokens. Returns how many tokens were revoked."""
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        self._authorize(principal, "admin", org_scope(org), "identity.disable", target)
        i = tables.identities
        with self.store.begin() as conn:
            row = self._row(conn, org, name)
            if row.sys_admin and not self.authorizer.is_sys(principal):
                raise PermissionDenied("only the system operator may disable a system identity")
            conn.execute(
                sa.update(i).where(i.c.id == row.id).values(disabled_at=self.clock.now(), client_id=None)
            )
            n = self.tokens.revoke_identity(conn, row.id)
            self.audit.append(conn, principal, "identity.disable", target, detail={"tokens_revoked": n})
        return n

    # ------------------------------------------------------------------ roles
    def set_role(
        self, principal: Principal, name: str, role: str, *, project: str = "*", org: str | None = None
    ) -> Identity:
        """Bind ``role`` on ``project`` (``"*"``: the whole organization), replacing any role the
        identity had there. Raises InvalidInput, PermissionDenied, IdentityNotFound."""
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role[:20]!r}; choose one of {', '.join(ROLES)}")
        if project != "*":
            check_scope_name("project", project)
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        if not self.authorizer.can_grant(principal, org, role, project):
            self._record(principal, "role.grant", target, "denied:permission_denied")
            raise PermissionDenied(f"{principal.label} may not grant {role} on {project}")
        rb = tables.role_bindings
        with self.store.begin() as conn:
            row = self._row(conn, org, name)
            conn.execute(sa.delete(rb).where(rb.c.identity_id == row.id, rb.c.project == project))
            conn.execute(
                sa.insert(rb).values(
                    identity_id=row.id, project=project, role=role, created_at=self.clock.now()
                )
            )
            self.audit.append(
                conn, principal, "role.grant", target, detail={"role": role, "project": project}
            )
            return self._identity(conn, row)

    def remove_role(
        self, principal: Principal, name: str, *, project: str = "*", org: str | None = None
    ) -> Identity:
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        rb = tables.role_bindings
        with self.store.connect() as conn:
            row = self._row(conn, org, name)
            current = conn.execute(
                sa.select(rb.c.role).where(rb.c.identity_id == row.id, rb.c.project == project)
            ).scalar()
        if current is None:
            raise NotFound(f"identity {name!r} has no role on {project!r}")
        if not self.authorizer.can_grant(principal, org, str(current), project):
            self._record(principal, "role.revoke", target, "denied:permission_denied")
            raise PermissionDenied(f"{principal.label} may not remove {current} on {project}")
        with self.store.begin() as conn:
            conn.execute(sa.delete(rb).where(rb.c.identity_id == row.id, rb.c.project == project))
            self.audit.append(conn, principal, "role.revoke", target, detail={"project": project})
            return self._identity(conn, row)

    # ------------------------------------------------------------------ credentials
    def new_client_secret(
        self, principal: Principal, name: str, *, org: str | None = None
    ) -> ClientCredentials:
        """A fresh client id + secret for the identity (replacing any previous pair)."""
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        self._authorize(principal, "admin", org_scope(org), "identity.credentials", target)
        secret = new_opaque(CLIENT_SECRET_PREFIX)
        client_id = CLIENT_ID_PREFIX + _b62(int.from_bytes(os.urandom(16), "big"), 22)
        salt = os.urandom(16)
        i = tables.identities
        with self.store.begin() as conn:
            row = self._row(conn, org, name)
            if row.disabled_at is not None:
                raise InvalidInput(f"identity {name!r} is disabled")
            conn.execute(
                sa.update(i)
                .where(i.c.id == row.id)
                .values(client_id=client_id, secret_salt=salt, secret_hash=_hash_secret(salt, secret))
            )
            self.audit.append(
                conn, principal, "identity.credentials", target, detail={"client_id": client_id}
            )
        return ClientCredentials(client_id, SecretValue(secret))

    def set_public_key(
        self, principal: Principal, name: str, public_key: str, *, org: str | None = None
    ) -> Identity:
        org = self._org_of(principal, org)
        target = f"{org}/_identities/{name}"
        own = isinstance(principal, AuthPrincipal) and principal.id == f"{org}/{name}"
        if not own:
            self._authorize(principal, "admin", org_scope(org), "identity.public_key", target)
        pem = _load_public_key(public_key)
        i = tables.identities
        with self.store.begin() as conn:
            row = self._row(conn, org, name)
            conn.execute(sa.update(i).where(i.c.id == row.id).values(public_key=pem))
            fp = hashlib.sha256(pem.encode()).hexdigest()[:16]
            self.audit.append(conn, principal, "identity.public_key", target, detail={"fingerprint": fp})
            return self._identity(conn, self._row(conn, org, name))

    # ------------------------------------------------------------------ lockouts
    def _locked(self, conn: Connection, keys: list[str], now: datetime) -> float | None:
        lo = tables.login_lockouts
        rows = conn.execute(sa.select(lo.c.locked_until).where(lo.c.key.in_(keys))).all()
        waits = [
            (r.locked_until - now).total_seconds() for r in rows if r.locked_until and r.locked_until > now
        ]
        return max(waits) if waits else None

    def _fail(self, conn: Connection, keys: list[str], now: datetime) -> None:
        lo = tables.login_lockouts
        for key in keys:
            row = conn.execute(sa.select(lo).where(lo.c.key == key).with_for_update()).first()
            failures = (int(row.failures) if row else 0) + 1
            wait = self.lockout.lock_for(failures)
            until = now + timedelta(seconds=wait) if wait else None
            if row is None:
                conn.execute(
                    sa.insert(lo).values(key=key, failures=failures, last_failure_at=now, locked_until=until)
                )
            else:
                conn.execute(
                    sa.update(lo)
                    .where(lo.c.key == key)
                    .values(failures=failures, last_failure_at=now, locked_until=until)
                )

    def _login_failed(
        self, anon: Principal, keys: list[str], target: str, method: str, why: str
    ) -> AuthenticationError:
        now = self.clock.now()
        with self.store.begin() as conn:
            self._fail(conn, keys, now)
            self.audit.append(
                conn, anon, "auth.login", target, result=f"denied:{why}", detail={"method": method}
            )
        return AuthenticationError("login failed: unknown client or wrong credential")

    def _login_ok(
        self, conn: Connection, anon: Principal, row: Row[Any], keys: list[str], method: str
    ) -> IssuedToken:
        conn.execute(sa.delete(tables.login_lockouts).where(tables.login_lockouts.c.key.in_(keys)))
        issued = self.tokens.issue(
            conn,
            anon,
            org_id=int(row.org_id),
            identity_id=str(row.id),
            scope=TokenScope(sys=bool(row.sys_admin)),
            ttl_s=self.tokens.login_ttl_s,
            max_ttl_s=self.tokens.login_max_ttl_s,
            display_name=f"{method}:{row.name}",
            source=method,
        )
        self.audit.append(
            conn,
            anon,
            "auth.login",
            f"{issued.info.org}/_identities/{row.name}",
            detail={"method": method, "token": issued.info.accessor},
        )
        return issued

    def _check_lockout(self, anon: Principal, keys: list[str], target: str, method: str) -> None:
        with self.store.connect() as conn:
            wait = self._locked(conn, keys, self.clock.now())
        if wait is not None:
            self._record(anon, "auth.login", target, "denied:login_locked_out", detail={"method": method})
            raise LoginLockedOut(
                f"too many failed logins: try again in {int(wait) + 1}s", retry_after=round(wait, 3)
            )

    # ------------------------------------------------------------------ logins
    def login_client_secret(
        self, client_id: str, client_secret: str, *, address: str | None = None, client: str = "http"
    ) -> IssuedToken:
        """Exchange a client id + secret for a short-lived token. Raises AuthenticationError
        (one message for every failure), LoginLockedOut, RateLimited."""
        self.tokens.check_address(address)
        anon = Principal(id="anonymous", kind="anonymous", client=client)
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            raise InvalidInput("client_id and client_secret must be strings")
        cid = client_id[:64]
        addr_key = f"addr:{address or '-'}"
        i = tables.identities
        with self.store.connect() as conn:
            row = conn.execute(sa.select(i).where(i.c.client_id == cid)).first() if cid else None
        keys = [addr_key] + ([f"client:{cid}"] if row is not None else [])
        target = f"_auth/{cid}" if row is None else f"{self._org_name(row)}/_identities/{row.name}"
        self._check_lockout(anon, keys, target, "client_secret")
        ok = False
        if row is not None and row.disabled_at is None and row.secret_hash and row.secret_salt:
            ok = check_token_format(client_secret, CLIENT_SECRET_PREFIX) and hmac.compare_digest(
                _hash_secret(bytes(row.secret_salt), client_secret), str(row.secret_hash)
            )
        else:
            _hash_secret(b"\0" * 16, client_secret)  # similar work whether or not the client exists
        if not ok or row is None:
            raise self._login_failed(anon, keys, target, "client_secret", "bad_credentials")
        with self.store.begin() as conn:
            return self._login_ok(conn, anon, row, keys, "client_secret")

    def _org_name(self, row: Row[Any]) -> str:
        with self.store.connect() as conn:
            return str(
                conn.execute(sa.select(tables.orgs.c.name).where(tables.orgs.c.id == row.org_id)).scalar()
            )

    def challenge(self, client_id: str, *, address: str | None = None) -> Challenge:
        """A single-use challenge for signed login. Unknown clients get one too (that can never
        succeed), so the answer does not reveal which client ids exist."""
        self.tokens.check_address(address)
        if not isinstance(client_id, str):
            raise InvalidInput("client_id must be a string")
        now = self.clock.now()
        cid = "kch_" + _b62(int.from_bytes(os.urandom(16), "big"), 22)
        nonce = os.urandom(32)
        exp = now + timedelta(seconds=CHALLENGE_TTL_S)
        i = tables.identities
        with self.store.begin() as conn:
            row = conn.execute(
                sa.select(i.c.id, i.c.public_key).where(i.c.client_id == client_id[:64])
            ).first()
            if row is not None and row.public_key:
                conn.execute(
                    sa.insert(tables.login_challenges).values(
                        id=cid, identity_id=row.id, nonce=nonce, created_at=now, expires_at=exp
                    )
                )
        return Challenge(cid, nonce, exp)

    def login_signed(
        self, challenge_id: str, signature: bytes, *, address: str | None = None, client: str = "http"
    ) -> IssuedToken:
        """Exchange a signed challenge for a short-lived token. The challenge is spent whatever
        the outcome. Raises AuthenticationError, LoginLockedOut, RateLimited."""
        self.tokens.check_address(address)
        anon = Principal(id="anonymous", kind="anonymous", client=client)
        if not isinstance(challenge_id, str) or not isinstance(signature, bytes):
            raise InvalidInput("challenge_id must be a string and signature bytes")
        now = self.clock.now()
        ch, i = tables.login_challenges, tables.identities
        with self.store.begin() as conn:
            crow = conn.execute(sa.select(ch).where(ch.c.id == challenge_id[:40]).with_for_update()).first()
            if crow is not None:
                conn.execute(sa.update(ch).where(ch.c.id == crow.id).values(used_at=now))
            # expired challenges are swept here, cheaply
            conn.execute(sa.delete(ch).where(ch.c.expires_at < now - timedelta(seconds=CHALLENGE_TTL_S)))
        row = None
        if crow is not None:
            with self.store.connect() as conn:
                row = conn.execute(sa.select(i).where(i.c.id == crow.identity_id)).first()
        keys = [f"addr:{address or '-'}"] + (
            [f"client:{row.client_id}"] if row is not None and row.client_id else []
        )
        target = "_auth/challenge" if row is None else f"{self._org_name(row)}/_identities/{row.name}"
        self._check_lockout(anon, keys, target, "signed_challenge")
        ok = False
        if (
            crow is not None
            and row is not None
            and crow.used_at is None
            and crow.expires_at > now
            and row.disabled_at is None
            and row.public_key
        ):
            key = serialization.load_pem_public_key(str(row.public_key).encode())
            if isinstance(key, ed25519.Ed25519PublicKey):
                try:
                    key.verify(signature, challenge_message(str(crow.id), bytes(crow.nonce)))
                    ok = True
                except InvalidSignature:
                    ok = False
        if not ok or row is None:
            raise self._login_failed(anon, keys, target, "signed_challenge", "bad_signature")
        with self.store.begin() as conn:
            return self._login_ok(conn, anon, row, keys, "signed_challenge")

    # ------------------------------------------------------------------ bootstrap
    def bootstrap_root(
        self, principal: Principal, *, org: str = "default", name: str = "root"
    ) -> IssuedToken:
        """The first (or a replacement) root token: a system identity owning ``org``, with a
        token that never expires. Only the local vault owner (who holds the root key) or the
        system operator may do this."""
        if not self.authorizer.is_sys(principal):
            raise PermissionDenied("only the vault owner may create a root token")
        i, rb = tables.identities, tables.role_bindings
        now = self.clock.now()
        with self.store.begin() as conn:
            org_id = conn.execute(sa.select(tables.orgs.c.id).where(tables.orgs.c.name == org)).scalar()
            if org_id is None:
                org_id = conn.execute(
                    sa.insert(tables.orgs).values(name=org, created_at=now).returning(tables.orgs.c.id)
                ).scalar_one()
            row = conn.execute(sa.select(i).where(i.c.org_id == org_id, i.c.name == name)).first()
            if row is None:
                ident = uuid.uuid4().hex
                conn.execute(
                    sa.insert(i).values(
                        id=ident,
                        org_id=org_id,
                        name=name,
                        kind="user",
                        description="system operator (bootstrap)",
                        sys_admin=True,
                        created_at=now,
                    )
                )
                conn.execute(
                    sa.insert(rb).values(identity_id=ident, project="*", role="owner", created_at=now)
                )
                self.audit.append(
                    conn, principal, "identity.create", f"{org}/_identities/{name}", detail={"kind": "user"}
                )
            else:
                if not row.sys_admin:
                    raise InvalidInput(f"identity {name!r} exists and is not a system identity")
                ident = str(row.id)
                conn.execute(sa.update(i).where(i.c.id == ident).values(disabled_at=None))
            return self.tokens.issue(
                conn,
                principal,
                org_id=int(org_id),
                identity_id=ident,
                scope=TokenScope(sys=True),
                display_name="root",
                source="root",
            )
