"""Tokens, identities, roles and logins in the core (no HTTP): format and checksum, hashing at
rest, narrowing-only delegation, cascading revocation, TTL / uses / CIDRs on a ManualClock,
lockout with back-off, rate limits, signed-challenge login, tenant isolation. Runs on SQLite and
PostgreSQL (the ``vault`` fixture)."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keybroker.core import ManualClock, Scope, SecretService, Vault, local_principal
from keybroker.core._identity import IdentityService, LockoutPolicy, challenge_message
from keybroker.core._rbac import AuthPrincipal, RbacAuthorizer, TokenScope, scope_widening
from keybroker.core._tokens import (
    LoginLockedOut,
    RateLimited,
    RateLimiter,
    TokenNotFound,
    TokenService,
    TokenWidening,
    check_token_format,
    hash_token,
    new_opaque,
)
from keybroker.errors import AuthenticationError, InvalidInput, PermissionDenied
from keybroker.store import tables

VALUE = "sk-live-test-value-0123456789"


@dataclass
class Env:
    vault: Vault
    clock: ManualClock
    tokens: TokenService
    ids: IdentityService
    secrets: SecretService
    root: AuthPrincipal
    root_token: str


@pytest.fixture
def env(vault: Vault, clock: ManualClock) -> Env:
    authz = RbacAuthorizer()
    tokens = TokenService(vault, authz)
    ids = IdentityService(vault, tokens, authz, lockout=LockoutPolicy(threshold=3, base_s=10, max_s=60))
    root = ids.bootstrap_root(local_principal("test"))
    p = tokens.authenticate(root.token.reveal())
    return Env(vault, clock, tokens, ids, SecretService(vault, authz), p, root.token.reveal())


def login(
    env: Env, name: str, role: str | None = "member", project: str = "*", org: str | None = None
) -> AuthPrincipal:
    env.ids.create(env.root, name, "agent", org=org)
    if role:
        env.ids.set_role(env.root, name, role, project=project, org=org)
    cred = env.ids.new_client_secret(env.root, name, org=org)
    t = env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal())
    return env.tokens.authenticate(t.token.reveal())


# ---------------------------------------------------------------- format
def test_token_format_and_checksum() -> None:
    tok = new_opaque("kbt_")
    assert tok.startswith("kbt_") and len(tok) == 4 + 43 + 6
    assert check_token_format(tok)
    body, crc = tok[4:-6], tok[-6:]
    # the tail is the base62 CRC32 of the body, as GitHub's tokens carry
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = 0
    for c in crc:
        n = n * 62 + alphabet.index(c)
    assert n == zlib.crc32(body.encode())
    flipped = tok[:10] + ("A" if tok[10] != "A" else "B") + tok[11:]
    assert not check_token_format(flipped)
    assert not check_token_format(tok[:-1])
    assert not check_token_format("kbx_" + tok[4:])
    assert not check_token_format(tok[:20] + "!" + tok[21:])
    assert len({new_opaque("kbt_") for _ in range(200)}) == 200


def test_malformed_token_is_refused_without_lookup(env: Env) -> None:
    with pytest.raises(AuthenticationError):
        env.tokens.authenticate("kbt_not-a-token")
    good = new_opaque("kbt_")  # well-formed, but unknown
    with pytest.raises(AuthenticationError):
        env.tokens.authenticate(good)


def test_only_hashes_at_rest(env: Env) -> None:
    member = login(env, "bot")
    with env.vault.store.connect() as conn:
        rows = conn.execute(sa.select(tables.tokens)).all()
        idents = conn.execute(sa.select(tables.identities)).all()
        dump = json.dumps([list(map(str, r)) for r in rows + idents])
    assert env.root_token not in dump
    assert hash_token(env.root_token) in dump
    assert member.grant is not None
    for r in rows:
        assert len(r.token_hash) == 64 and not r.token_hash.startswith("kbt_")
    # client secrets: salted HMAC, never the secret
    cred = env.ids.new_client_secret(env.root, "bot")
    with env.vault.store.connect() as conn:
        row = conn.execute(sa.select(tables.identities).where(tables.identities.c.name == "bot")).one()
    assert cred.client_secret.reveal() not in json.dumps(list(map(str, row)))
    assert row.secret_hash != hashlib.sha256(cred.client_secret.reveal().encode()).hexdigest()
    assert "[secret]" in repr(cred)


# ---------------------------------------------------------------- narrowing
def test_scope_widening_rules() -> None:
    parent = TokenScope(
        projects=("alpha",), environments=("dev", "st*"), names=("OPENAI_*",), actions=("read", "list")
    )
    ok = [
        TokenScope(("alpha",), ("dev",), ("OPENAI_KEY",), ("read",)),
        TokenScope(("alpha",), ("staging",), ("OPENAI_A*",), ("list",)),
        TokenScope(("alpha",), ("stage?",), ("OPENAI_*",), ("use",)),  # read implies use
        TokenScope((), (), (), ()),
    ]
    for child in ok:
        assert scope_widening(child, parent) is None, child
    bad = {
        "scope.projects": TokenScope(("*",), ("dev",), ("OPENAI_KEY",), ("read",)),
        "scope.environments": TokenScope(("alpha",), ("prod",), ("OPENAI_KEY",), ("read",)),
        "scope.names": TokenScope(("alpha",), ("dev",), ("*",), ("read",)),
        "scope.actions": TokenScope(("alpha",), ("dev",), ("OPENAI_KEY",), ("write",)),
        "scope.sys": TokenScope(("alpha",), ("dev",), ("OPENAI_KEY",), ("read",), sys=True),
    }
    for field, child in bad.items():
        why = scope_widening(child, parent)
        assert why is not None and why.startswith(field), (field, why)


def test_child_tokens_only_narrow(env: Env) -> None:
    env.clock.advance(0)
    parent = env.tokens.create(
        env.root,
        scope={"projects": ["default"], "actions": ["read", "list"]},
        ttl_s=600,
        uses=50,
        cidrs=["10.0.0.0/8"],
    )
    pp = env.tokens.authenticate(parent.token.reveal(), address="10.1.2.3")
    cases = {
        "scope.actions": {"scope": {"actions": ["write"]}, "uses": 1},
        "scope.projects": {"scope": {"projects": ["*"]}, "uses": 1},
        "ttl_s": {"ttl_s": 601, "uses": 1},
        "uses": {"uses": 51},
        "cidrs": {"cidrs": ["192.168.0.0/16"], "uses": 1},
    }
    for field, kw in cases.items():
        with pytest.raises(TokenWidening) as ei:
            env.tokens.create(pp, **kw)  # type: ignore[arg-type]
        assert ei.value.code == "token_widening"
        assert ei.value.details["field"].startswith(field)
    with pytest.raises(TokenWidening):
        env.tokens.create(pp)  # a parent with a use limit: the child must name its uses
    child = env.tokens.create(
        pp, scope={"names": ["OPENAI_*"], "actions": ["read"]}, ttl_s=60, uses=5, cidrs=["10.1.0.0/16"]
    )
    info = child.info
    assert info.parent == parent.info.accessor
    assert info.scope.projects == ("default",) and info.scope.actions == ("read",)
    assert info.cidrs == ("10.1.0.0/16",)
    assert info.expires_at is not None and parent.info.expires_at is not None
    assert info.expires_at <= parent.info.expires_at
    # default ttl: never beyond the parent
    c2 = env.tokens.create(pp, uses=1)
    assert c2.info.expires_at == parent.info.expires_at
    # the denial was audited, without any token
    entries = env.vault.audit.tail(50)
    assert any(e.action == "token.create" and e.result.startswith("denied:widening") for e in entries)
    dump = json.dumps([e.to_dict() for e in entries])
    assert parent.token.reveal() not in dump and child.token.reveal() not in dump


def test_revocation_cascades_and_is_immediate(env: Env) -> None:
    a = env.tokens.create(env.root, ttl_s=600)
    pa = env.tokens.authenticate(a.token.reveal())
    b = env.tokens.create(pa, ttl_s=300)
    pb = env.tokens.authenticate(b.token.reveal())
    c = env.tokens.create(pb, ttl_s=100)
    sibling = env.tokens.create(env.root, ttl_s=600)
    assert env.tokens.revoke(env.root, a.info.accessor) == 3
    for t in (a, b, c):
        with pytest.raises(AuthenticationError) as ei:
            env.tokens.authenticate(t.token.reveal())
        assert ei.value.details["reason"] == "revoked"
    env.tokens.authenticate(sibling.token.reveal())
    # a child may revoke itself; revoking self cascades too
    d = env.tokens.create(env.root, ttl_s=60)
    pd = env.tokens.authenticate(d.token.reveal())
    e = env.tokens.create(pd, ttl_s=30)
    assert env.tokens.revoke(pd) == 2
    with pytest.raises(AuthenticationError):
        env.tokens.authenticate(e.token.reveal())


def test_ttl_renew_and_max_ttl(env: Env) -> None:
    t = env.tokens.create(env.root, ttl_s=60, max_ttl_s=150)
    p = env.tokens.authenticate(t.token.reveal())
    env.clock.advance(59)
    env.tokens.authenticate(t.token.reveal())
    info = env.tokens.renew_self(p)
    assert info.expires_at is not None
    assert (info.expires_at - env.clock.now()).total_seconds() == 60
    env.clock.advance(59)
    env.tokens.authenticate(t.token.reveal())  # renewed at 59s for 60s more
    env.tokens.renew_self(p, 10_000)
    env.clock.advance(150 - 118 - 1)
    env.tokens.authenticate(t.token.reveal())
    env.clock.advance(2)  # past max_ttl: renewing could not push it further
    with pytest.raises(AuthenticationError) as ei:
        env.tokens.authenticate(t.token.reveal())
    assert ei.value.details["reason"] == "expired"


def test_use_limit_and_cidrs(env: Env) -> None:
    t = env.tokens.create(env.root, ttl_s=600, uses=2, cidrs=["127.0.0.0/8", "::1/128"])
    env.tokens.authenticate(t.token.reveal(), address="127.0.0.1")
    with pytest.raises(PermissionDenied):
        env.tokens.authenticate(t.token.reveal(), address="192.0.2.1")
    env.tokens.authenticate(t.token.reveal(), address="::1")
    with pytest.raises(AuthenticationError) as ei:
        env.tokens.authenticate(t.token.reveal(), address="127.0.0.1")
    assert ei.value.details["reason"] == "uses_exhausted"


def test_bad_inputs(env: Env) -> None:
    with pytest.raises(InvalidInput):
        env.tokens.create(env.root, cidrs=["not-a-net"])
    with pytest.raises(InvalidInput):
        env.tokens.create(env.root, ttl_s=0)
    with pytest.raises(InvalidInput):
        env.tokens.create(env.root, scope={"actions": ["fly"]})
    with pytest.raises(InvalidInput):
        env.tokens.create(env.root, scope={"projects": ["Bad Name"]})
    with pytest.raises(InvalidInput):
        env.ids.set_role(env.root, "root", "god")


# ---------------------------------------------------------------- roles and use-only
def test_roles_and_use_only(env: Env) -> None:
    s = Scope("default", "dev")
    env.secrets.put(env.root, s, "OPENAI_KEY", VALUE)
    viewer = login(env, "viewer", "viewer")
    user = login(env, "user", "use")
    member = login(env, "member", "member")
    nobody = login(env, "nobody", None)
    assert env.secrets.get(viewer, s, "OPENAI_KEY").value.reveal() == VALUE
    with pytest.raises(PermissionDenied):
        env.secrets.put(viewer, s, "OPENAI_KEY", "x")
    # use-only: may inject (permission "use"), never read
    with pytest.raises(PermissionDenied):
        env.secrets.get(user, s, "OPENAI_KEY")
    assert env.secrets.get(user, s, "OPENAI_KEY", permission="use").value.reveal() == VALUE
    assert [m.name for m in env.secrets.list_secrets(user, s)] == ["OPENAI_KEY"]
    env.secrets.put(member, s, "OTHER", "v")
    with pytest.raises(PermissionDenied):
        env.secrets.destroy(member, s, "OTHER", [1])
    for action in ("read", "use", "list", "write", "admin"):
        assert not env.tokens.authorizer.allows(nobody, action, s, "OPENAI_KEY")  # deny by default
    # project roles apply to that project only
    env.secrets.create_project(env.root, "beta")
    pm = login(env, "pm", "member", project="beta")
    assert env.tokens.authorizer.allows(pm, "write", Scope("beta", "dev"), "K")
    assert not env.tokens.authorizer.allows(pm, "read", s, "OPENAI_KEY")
    # an admin may not hand out owner; an owner may
    admin = login(env, "admin", "admin")
    with pytest.raises(PermissionDenied):
        env.ids.set_role(admin, "viewer", "owner")
    env.ids.set_role(admin, "viewer", "member", project="beta")
    env.ids.set_role(env.root, "viewer", "owner")
    # role changes apply to the next request of an existing token
    m2 = login(env, "member2", "member")
    assert env.tokens.authorizer.allows(m2, "write", s, "X")
    env.ids.set_role(env.root, "member2", "viewer")
    tok = env.tokens.list_tokens(env.root, identity="member2")[0]
    assert tok.roles == {"*": "viewer"}
    assert m2.grant is not None
    again = env.tokens.list_tokens(env.root, identity="member2")
    assert again and all(t.roles == {"*": "viewer"} for t in again)


def test_disable_identity_revokes_its_tokens(env: Env) -> None:
    env.ids.create(env.root, "svc", "service")
    env.ids.set_role(env.root, "svc", "viewer")
    cred = env.ids.new_client_secret(env.root, "svc")
    t = env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal())
    assert env.ids.disable(env.root, "svc") >= 1
    with pytest.raises(AuthenticationError):
        env.tokens.authenticate(t.token.reveal())
    with pytest.raises(AuthenticationError):
        env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal())


# ---------------------------------------------------------------- logins
def test_lockout_with_backoff(env: Env) -> None:
    env.ids.create(env.root, "svc", "service")
    cred = env.ids.new_client_secret(env.root, "svc")
    wrong = new_opaque("kbs_")
    for _ in range(3):
        with pytest.raises(AuthenticationError) as ei:
            env.ids.login_client_secret(cred.client_id, wrong, address="192.0.2.7")
        assert ei.value.code == "unauthenticated"
    # locked: even the right secret is refused, without being checked
    with pytest.raises(LoginLockedOut) as lo:
        env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal(), address="192.0.2.8")
    assert lo.value.status == 429 and lo.value.details["retry_after"] == pytest.approx(10)
    env.clock.advance(11)
    with pytest.raises(AuthenticationError):
        env.ids.login_client_secret(cred.client_id, wrong, address="192.0.2.9")
    with pytest.raises(LoginLockedOut) as lo:
        env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal(), address="192.0.2.8")
    assert lo.value.details["retry_after"] == pytest.approx(20)  # back-off doubles
    env.clock.advance(21)
    t = env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal(), address="192.0.2.8")
    env.tokens.authenticate(t.token.reveal())
    # success reset the count
    with pytest.raises(AuthenticationError):
        env.ids.login_client_secret(cred.client_id, wrong, address="192.0.2.10")
    env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal(), address="192.0.2.11")
    # unknown clients lock out by address; all of it is audited, no secret in the trail
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            env.ids.login_client_secret("kbc_nope", wrong, address="198.51.100.1")
    with pytest.raises(LoginLockedOut):
        env.ids.login_client_secret(cred.client_id, cred.client_secret.reveal(), address="198.51.100.1")
    trail = env.vault.audit.tail(200, action="auth.login")
    assert sum(e.result == "denied:bad_credentials" for e in trail) >= 7
    assert any(e.result == "denied:login_locked_out" for e in trail)
    dump = json.dumps([e.to_dict() for e in env.vault.audit.tail(500)])
    assert cred.client_secret.reveal() not in dump and wrong not in dump
    assert env.vault.audit.verify().ok


def test_signed_challenge_login(env: Env) -> None:
    env.ids.create(env.root, "agent-1", "agent")
    env.ids.set_role(env.root, "agent-1", "viewer")
    cred = env.ids.new_client_secret(env.root, "agent-1")
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    env.ids.set_public_key(env.root, "agent-1", base64.b64encode(pub).decode())
    ch = env.ids.challenge(cred.client_id)
    assert ch.message == challenge_message(ch.challenge_id, ch.nonce)
    t = env.ids.login_signed(ch.challenge_id, key.sign(ch.message))
    p = env.tokens.authenticate(t.token.reveal())
    assert p.label == "agent:default/agent-1"
    # single use
    with pytest.raises(AuthenticationError):
        env.ids.login_signed(ch.challenge_id, key.sign(ch.message), address="192.0.2.1")
    # wrong key, expired challenge, unknown client (which still gets a challenge)
    other = ed25519.Ed25519PrivateKey.generate()
    ch2 = env.ids.challenge(cred.client_id)
    with pytest.raises(AuthenticationError):
        env.ids.login_signed(ch2.challenge_id, other.sign(ch2.message), address="192.0.2.2")
    ch3 = env.ids.challenge(cred.client_id)
    env.clock.advance(61)
    with pytest.raises(AuthenticationError):
        env.ids.login_signed(ch3.challenge_id, key.sign(ch3.message), address="192.0.2.3")
    ch4 = env.ids.challenge("kbc_unknown")
    with pytest.raises(AuthenticationError):
        env.ids.login_signed(ch4.challenge_id, key.sign(ch4.message), address="192.0.2.4")
    with pytest.raises(InvalidInput):
        env.ids.set_public_key(env.root, "agent-1", "not a key")


def test_rate_limiter_on_the_clock(clock: ManualClock) -> None:
    rl = RateLimiter(clock, rate=2, burst=3)
    for _ in range(3):
        rl.check("k")
    with pytest.raises(RateLimited) as ei:
        rl.check("k")
    assert ei.value.status == 429 and ei.value.details["retry_after"] == pytest.approx(0.5)
    rl.check("other")
    clock.advance(0.5)
    rl.check("k")
    RateLimiter(clock, rate=0).check("k")  # off


def test_token_rate_limit(env: Env) -> None:
    env.tokens.token_limiter = RateLimiter(env.clock, rate=1, burst=2)
    env.tokens.authenticate(env.root_token)
    env.tokens.authenticate(env.root_token)
    with pytest.raises(RateLimited):
        env.tokens.authenticate(env.root_token)
    env.clock.advance(1)
    env.tokens.authenticate(env.root_token)


# ---------------------------------------------------------------- tenants
def test_tenant_isolation(env: Env) -> None:
    env.ids.create_org(env.root, "acme")
    env.ids.create_org(env.root, "globex")
    a = login(env, "alice", "owner", org="acme")
    g = login(env, "gina", "owner", org="globex")
    env.secrets.create_project(a, "app", org="acme")
    env.secrets.put(a, Scope("app", "dev", "acme"), "OPENAI_KEY", VALUE)
    env.tokens.create(a, ttl_s=60)
    # the other org's owner: denied on every action, and sees no names or counts
    for action in ("read", "use", "list", "write", "admin"):
        assert not env.tokens.authorizer.allows(g, action, Scope("app", "dev", "acme"), "OPENAI_KEY")
    with pytest.raises(PermissionDenied):
        env.secrets.get(g, Scope("app", "dev", "acme"), "OPENAI_KEY")
    with pytest.raises(PermissionDenied):
        env.secrets.create_project(g, "evil", org="acme")
    assert env.ids.list_projects(g) == []
    assert [i.name for i in env.ids.list_identities(g)] == ["gina"]
    with pytest.raises(PermissionDenied):
        env.ids.list_identities(g, org="acme")
    with pytest.raises(PermissionDenied):
        env.ids.set_role(g, "alice", "viewer", org="acme")
    assert {t.org for t in env.tokens.list_tokens(g)} == {"globex"}
    alice_tok = env.tokens.list_tokens(a)[0].accessor
    with pytest.raises(TokenNotFound):
        env.tokens.lookup(g, alice_tok)
    with pytest.raises(TokenNotFound):
        env.tokens.revoke(g, alice_tok)
    with pytest.raises(PermissionDenied):
        env.ids.create_org(a, "mine")
