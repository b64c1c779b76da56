"""The authorization matrix: every endpoint x every role and token scope, allow or deny asserted
exactly, and every cross-organization attempt denied. Generated from the tables below (the
expected allow-sets are the spec), over the real HTTP stack, on SQLite and PostgreSQL.

Org ``acme`` has projects ``alpha`` (dev, prod) and ``beta`` (dev). Principals:

==============  ==============================================================
owner           owner of acme
admin           admin of acme
member          member of acme
viewer          viewer of acme
user            use-only on acme (may inject, never read)
alpha_member    member of project alpha only
alpha_admin     admin of project alpha only
tok_ro          owner's child token, actions read+list
tok_dev         owner's child token, environments dev
tok_names       owner's child token, names OPENAI_*
tok_beta        owner's child token, projects beta
outsider        owner of org ``other`` (which has no project alpha)
anon            no token
==============  ==============================================================

Resources live in alpha/dev and are named OPENAI_* unless a row says otherwise. Allowed means
2xx; denied means 403 (401 for ``anon`` on the REST API, 403 on the Vault API as Vault does;
404 where a row addresses something by id, which is never confirmed to exist); the outsider must
get a 4xx whose body holds nothing of acme.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from kb_live import LiveServer, new_vault, server_settings

from keybroker.core import ManualClock
from keybroker.server import create_app

ACME_VALUE = "sk-acme-0123456789-SECRET"
INSIDERS = (
    "owner",
    "admin",
    "member",
    "viewer",
    "user",
    "alpha_member",
    "alpha_admin",
    "tok_ro",
    "tok_dev",
    "tok_names",
    "tok_beta",
)
EVERYONE = (*INSIDERS, "outsider", "anon")

# who may do what on alpha/dev/OPENAI_*, by action
READ = "owner admin member viewer alpha_member alpha_admin tok_ro tok_dev tok_names"
LIST = "owner admin member viewer user alpha_member alpha_admin tok_ro tok_dev tok_names"
WRITE = "owner admin member alpha_member alpha_admin tok_dev tok_names"
ADMIN = "owner admin alpha_admin tok_dev tok_names"
ALL_INSIDERS = " ".join(INSIDERS)


@dataclass
class Cell:
    """One endpoint of the matrix. ``setup(ctx, who)`` runs as the owner before the call and
    may return path/body substitutions."""

    id: str
    method: str
    path: str
    allowed: str
    body: Any = None
    params: dict[str, Any] | None = None
    vault_api: bool = False
    deny_status: int = 403
    setup: Callable[[Ctx, str], dict[str, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    url: str
    tokens: dict[str, str]
    accessors: dict[str, str]
    owner: httpx.Client

    def put(self, path: str, value: str = ACME_VALUE) -> None:
        r = self.owner.put(f"/v1/secrets/alpha/dev/{path}", json={"value": value})
        assert r.status_code == 200, r.text


def fresh_secret(prefix: str) -> Callable[[Ctx, str], dict[str, str]]:
    def setup(ctx: Ctx, who: str) -> dict[str, str]:
        name = f"{prefix}_{who.upper()}_{uuid.uuid4().hex[:6]}"
        ctx.put(name)
        return {"name": name}

    return setup


def deleted_secret(ctx: Ctx, who: str) -> dict[str, str]:
    d = fresh_secret("OPENAI_DEL")(ctx, who)
    assert ctx.owner.delete(f"/v1/secrets/alpha/dev/{d['name']}").status_code == 204
    return d


def pending_secret(ctx: Ctx, who: str) -> dict[str, str]:
    d = fresh_secret("OPENAI_PEND")(ctx, who)
    r = ctx.owner.post(f"/v1/rotate/alpha/dev/{d['name']}", json={"value": "next"})
    assert r.status_code == 200
    return d


def target_identity(ctx: Ctx, who: str) -> dict[str, str]:
    name = f"t-{who.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    assert ctx.owner.post("/v1/identities", json={"name": name}).status_code == 201
    return {"ident": name}


def member_token(ctx: Ctx, who: str) -> dict[str, str]:
    r = ctx.owner.post("/v1/tokens", json={"identity": "member", "ttl_s": 600})
    assert r.status_code == 201, r.text
    return {"acc": r.json()["accessor"]}


def uniq(ctx: Ctx, who: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {"u": f"{who.replace('_', '-')}-{tag}", "U": f"{who.upper()}_{tag}"}


S = "/v1/secrets/alpha/dev"
CELLS: list[Cell] = [
    Cell("export", "GET", "/v1/export/alpha/dev", LIST),
    # ---------------------------------------------------------------- secrets (REST)
    Cell("secret.read", "GET", f"{S}/OPENAI_KEY", READ),
    Cell("secret.read.prod", "GET", "/v1/secrets/alpha/prod/OPENAI_KEY", READ.replace(" tok_dev", "")),
    Cell("secret.read.other_name", "GET", f"{S}/DB_PASSWORD", READ.replace(" tok_names", "")),
    Cell("secret.write", "PUT", S + "/OPENAI_NEW_{U}", WRITE, body={"value": "v"}, setup=uniq),
    Cell("secret.list", "GET", S, LIST),
    Cell("secret.metadata.read", "GET", "/v1/metadata/alpha/dev/OPENAI_KEY", LIST),
    Cell("secret.metadata.write", "PATCH", "/v1/metadata/alpha/dev/OPENAI_KEY", WRITE, body={"owner": "x"}),
    Cell("secret.history", "GET", "/v1/history/alpha/dev/OPENAI_KEY", LIST),
    Cell(
        "secret.rotate",
        "POST",
        "/v1/rotate/alpha/dev/{name}",
        WRITE,
        body={"value": "r"},
        setup=fresh_secret("OPENAI_ROT"),
    ),
    Cell("secret.promote", "POST", "/v1/promote/alpha/dev/{name}", WRITE, setup=pending_secret),
    Cell(
        "secret.rollback",
        "POST",
        "/v1/rollback/alpha/dev/{name}",
        WRITE,
        body={"version": 1},
        setup=fresh_secret("OPENAI_RB"),
    ),
    Cell("secret.delete", "DELETE", S + "/{name}", WRITE, setup=fresh_secret("OPENAI_D")),
    Cell("secret.undelete", "POST", "/v1/undelete/alpha/dev/{name}", WRITE, setup=deleted_secret),
    Cell(
        "secret.destroy",
        "POST",
        "/v1/destroy/alpha/dev/{name}",
        ADMIN,
        body={"versions": [1]},
        setup=fresh_secret("OPENAI_X"),
    ),
    Cell(
        "secret.purge",
        "DELETE",
        S + "/{name}",
        ADMIN,
        params={"purge": "true"},
        setup=fresh_secret("OPENAI_P"),
    ),
    Cell("keypair.generate", "POST", "/v1/keypairs/alpha/dev/OPENAI_KP_{U}", WRITE, body={}, setup=uniq),
    Cell("keypair.public", "GET", "/v1/keypairs/alpha/dev/OPENAI_SIGNER", LIST),
    Cell(
        "import",
        "POST",
        "/v1/import/alpha/dev",
        WRITE,
        body={"secrets": {"OPENAI_IMP": "v"}, "overwrite": True},
    ),
    # ---------------------------------------------------------------- projects
    Cell("project.list", "GET", "/v1/projects", ALL_INSIDERS),
    Cell("project.create", "POST", "/v1/projects", "owner admin", body={"name": "p-{u}"}, setup=uniq),
    Cell(
        "environment.create",
        "POST",
        "/v1/projects/alpha/environments",
        "owner admin alpha_admin",
        body={"name": "e-{u}"},
        setup=uniq,
    ),
    # ---------------------------------------------------------------- identities
    Cell("identity.list", "GET", "/v1/identities", "owner admin member viewer user tok_ro tok_names"),
    Cell("identity.create", "POST", "/v1/identities", "owner admin", body={"name": "i-{u}"}, setup=uniq),
    Cell("identity.read", "GET", "/v1/identities/member", "owner admin member viewer user tok_ro tok_names"),
    Cell(
        "role.grant.project",
        "PUT",
        "/v1/identities/{ident}/roles",
        "owner admin alpha_admin",
        body={"role": "member", "project": "alpha"},
        setup=target_identity,
    ),
    Cell(
        "role.grant.owner",
        "PUT",
        "/v1/identities/{ident}/roles",
        "owner",
        body={"role": "owner"},
        setup=target_identity,
    ),
    Cell(
        "identity.client_secret",
        "POST",
        "/v1/identities/{ident}/client-secret",
        "owner admin",
        setup=target_identity,
    ),
    Cell("identity.disable", "DELETE", "/v1/identities/{ident}", "owner admin", setup=target_identity),
    # ---------------------------------------------------------------- tokens
    Cell("token.self", "GET", "/v1/auth/token/self", ALL_INSIDERS),
    Cell("token.child", "POST", "/v1/tokens", ALL_INSIDERS, body={"ttl_s": 60}),
    Cell("token.for_other", "POST", "/v1/tokens", "owner admin", body={"identity": "bystander", "ttl_s": 60}),
    Cell("token.list", "GET", "/v1/tokens", ALL_INSIDERS),
    Cell(
        "token.lookup", "GET", "/v1/tokens/{acc}", "owner admin member", deny_status=404, setup=member_token
    ),
    Cell(
        "token.revoke",
        "DELETE",
        "/v1/tokens/{acc}",
        "owner admin member",
        deny_status=404,
        setup=member_token,
    ),
    # ---------------------------------------------------------------- audit and system
    Cell("audit.query", "GET", "/v1/audit", "owner admin"),
    Cell("audit.export", "GET", "/v1/audit/export", "owner admin"),
    Cell("audit.verify", "GET", "/v1/audit/verify", ""),
    Cell("org.list", "GET", "/v1/orgs", ""),
    Cell("org.create", "POST", "/v1/orgs", "", body={"name": "o-{u}"}, setup=uniq),
    Cell("sys.seal", "POST", "/v1/sys/seal", ""),
    # ---------------------------------------------------------------- cross-org by parameter
    Cell("xorg.identity.list", "GET", "/v1/identities", "", params={"org": "other"}),
    Cell(
        "xorg.identity.create",
        "POST",
        "/v1/identities",
        "",
        params={"org": "other"},
        body={"name": "x-{u}"},
        setup=uniq,
    ),
    # ---------------------------------------------------------------- Vault-compatible KV v2
    Cell("kv.read", "GET", "/v1/alpha/data/dev/OPENAI_KEY", READ, vault_api=True),
    Cell(
        "kv.write",
        "POST",
        "/v1/alpha/data/dev/OPENAI_KV_{U}",
        WRITE,
        body={"data": {"k": "v"}},
        vault_api=True,
        setup=uniq,
    ),
    Cell(
        "kv.patch",
        "PATCH",
        "/v1/alpha/data/dev/{name}",
        WRITE,
        setup=fresh_secret("OPENAI_KVPATCH"),
        body={"data": {"k": "v"}},
        vault_api=True,
        headers={"Content-Type": "application/merge-patch+json"},
    ),
    Cell("kv.list", "LIST", "/v1/alpha/metadata/dev", LIST, vault_api=True),
    Cell("kv.list_get", "GET", "/v1/alpha/metadata/dev", LIST, params={"list": "true"}, vault_api=True),
    Cell("kv.metadata.read", "GET", "/v1/alpha/metadata/dev/OPENAI_KEY", LIST, vault_api=True),
    Cell(
        "kv.metadata.write",
        "POST",
        "/v1/alpha/metadata/dev/OPENAI_KEY",
        WRITE,
        body={"max_versions": 0},
        vault_api=True,
    ),
    Cell(
        "kv.delete",
        "DELETE",
        "/v1/alpha/data/dev/{name}",
        WRITE,
        vault_api=True,
        setup=fresh_secret("OPENAI_KVD"),
    ),
    Cell(
        "kv.undelete",
        "POST",
        "/v1/alpha/undelete/dev/{name}",
        WRITE,
        body={"versions": [1]},
        vault_api=True,
        setup=deleted_secret,
    ),
    Cell(
        "kv.destroy",
        "POST",
        "/v1/alpha/destroy/dev/{name}",
        ADMIN,
        body={"versions": [1]},
        vault_api=True,
        setup=fresh_secret("OPENAI_KVX"),
    ),
    Cell(
        "kv.metadata.delete",
        "DELETE",
        "/v1/alpha/metadata/dev/{name}",
        ADMIN,
        vault_api=True,
        setup=fresh_secret("OPENAI_KVP"),
    ),
    Cell(
        "kv.config.read",
        "GET",
        "/v1/alpha/config",
        "owner admin member viewer user alpha_member alpha_admin tok_ro tok_names",
        vault_api=True,
    ),
    Cell(
        "kv.config.write",
        "POST",
        "/v1/alpha/config",
        "owner admin alpha_admin",
        body={"max_versions": 0},
        vault_api=True,
    ),
    Cell("kv.ui_mounts", "GET", "/v1/sys/internal/ui/mounts/alpha/dev/OPENAI_KEY", LIST, vault_api=True),
    Cell("kv.token.lookup_self", "GET", "/v1/auth/token/lookup-self", ALL_INSIDERS, vault_api=True),
]


# ---------------------------------------------------------------- the world
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'vault.db'}"
        drop: Callable[[], None] = lambda: None  # noqa: E731
    else:
        url, drop = _pg_schema()
    clock = ManualClock()
    vault, root = new_vault(url, clock)
    server = LiveServer(create_app(server_settings(), vault=vault, clock=clock)).start()
    base = server.url
    ctx = None
    try:
        ctx = _populate(base, root)
        yield ctx
    finally:
        if ctx is not None:
            ctx.owner.close()
        server.stop()
        vault.store.dispose()
        drop()


def _pg_schema() -> tuple[str, Callable[[], None]]:
    base = os.environ.get("KEYBROKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        eng = sa.create_engine(base)
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL at {base} is not reachable: {type(exc).__name__}")
    schema = "kbm_" + uuid.uuid4().hex[:12]
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"

    def drop() -> None:
        with eng.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        eng.dispose()

    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


def _login(root: httpx.Client, base: str, name: str, org: str, role: str | None, project: str = "*") -> str:
    p = {"org": org}
    assert root.post("/v1/identities", params=p, json={"name": name, "kind": "agent"}).status_code == 201
    if role:
        r = root.put(f"/v1/identities/{name}/roles", params=p, json={"role": role, "project": project})
        assert r.status_code == 200, r.text
    cred = root.post(f"/v1/identities/{name}/client-secret", params=p).json()
    r = root.post("/v1/auth/login", json=cred)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _populate(base: str, root_token: str) -> Ctx:
    with httpx.Client(base_url=base, headers={"X-Vault-Token": root_token}, timeout=30) as root:
        return _populate_with(base, root)


def _populate_with(base: str, root: httpx.Client) -> Ctx:
    for org in ("acme", "other"):
        assert root.post("/v1/orgs", json={"name": org}).status_code == 201
    roles = {
        "owner": ("owner", "*"),
        "admin": ("admin", "*"),
        "member": ("member", "*"),
        "viewer": ("viewer", "*"),
        "user": ("use", "*"),
        "alpha_member": ("member", "alpha"),
        "alpha_admin": ("admin", "alpha"),
    }
    tokens = {who: _login(root, base, who.replace("_", "-"), "acme", r, p) for who, (r, p) in roles.items()}
    tokens["outsider"] = _login(root, base, "outsider", "other", "owner")
    assert root.post("/v1/identities", params={"org": "acme"}, json={"name": "bystander"}).status_code == 201
    owner = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens['owner']}"}, timeout=30)
    assert (
        owner.post("/v1/projects", json={"name": "alpha", "environments": ["dev", "prod"]}).status_code == 201
    )
    assert owner.post("/v1/projects", json={"name": "beta", "environments": ["dev"]}).status_code == 201
    for path in (
        "alpha/dev/OPENAI_KEY",
        "alpha/prod/OPENAI_KEY",
        "alpha/dev/DB_PASSWORD",
        "beta/dev/OPENAI_KEY",
    ):
        assert owner.put(f"/v1/secrets/{path}", json={"value": ACME_VALUE}).status_code == 200
    assert owner.post("/v1/keypairs/alpha/dev/OPENAI_SIGNER", json={}).status_code == 200
    scopes = {
        "tok_ro": {"actions": ["read", "list"]},
        "tok_dev": {"environments": ["dev"]},
        "tok_names": {"names": ["OPENAI_*"]},
        "tok_beta": {"projects": ["beta"]},
    }
    for who, scope in scopes.items():
        r = owner.post("/v1/tokens", json={"scope": scope, "ttl_s": 3000})
        assert r.status_code == 201, r.text
        tokens[who] = r.json()["token"]
    accessors = {}
    for who, tok in tokens.items():
        accessors[who] = owner.get("/v1/auth/token/self", headers={"X-Vault-Token": tok}).json()["accessor"]
    return Ctx(base, tokens, accessors, owner)


# ---------------------------------------------------------------- the matrix
def _fmt(template: Any, subs: dict[str, str]) -> Any:
    if isinstance(template, str):
        for k, v in subs.items():
            template = template.replace("{" + k + "}", v)
        return template
    if isinstance(template, dict):
        return {_fmt(k, subs): _fmt(v, subs) for k, v in template.items()}
    if isinstance(template, list):
        return [_fmt(x, subs) for x in template]
    return template


def _call(ctx: Ctx, cell: Cell, who: str) -> httpx.Response:
    subs = cell.setup(ctx, who) if cell.setup else {}
    headers = dict(cell.headers)
    headers["Authorization"] = ""  # no default owner credentials on the matrix call
    if who != "anon":
        headers["X-Vault-Token" if cell.vault_api else "Authorization"] = (
            ctx.tokens[who] if cell.vault_api else f"Bearer {ctx.tokens[who]}"
        )
    kw: dict[str, Any] = {"headers": headers, "params": cell.params}
    if cell.body is not None:
        body = _fmt(cell.body, subs)
        if "merge-patch" in headers.get("Content-Type", ""):
            kw["content"] = json.dumps(body)
        else:
            kw["json"] = body
    return ctx.owner.request(cell.method, _fmt(cell.path, subs), **kw)


def _verdict(cell: Cell, who: str, r: httpx.Response) -> str | None:
    """None if the response is what the table says, else a description of the mismatch."""
    allowed = set(cell.allowed.split())
    s = r.status_code
    if who == "anon":
        want = 403 if cell.vault_api else 401
        return None if s == want else f"anon: got {s}, want {want}"
    if who == "outsider":
        # denied, or served from its own organization: never anything of acme
        if not (400 <= s < 500 or 200 <= s < 300):
            return f"outsider: got {s}, want a 4xx or an answer about its own org"
        if ACME_VALUE in r.text or "acme" in r.text:
            return f"outsider: acme data in the answer ({s})"
        if 200 <= s < 300 and cell.id.startswith(("secret.", "kv.")) and cell.id != "kv.token.lookup_self":
            return f"outsider: got {s} on acme's alpha/dev"
        return None
    if who in allowed:
        return None if 200 <= s < 300 else f"{who}: got {s} {r.text[:160]}, want 2xx"
    if s != cell.deny_status:
        return f"{who}: got {s} {r.text[:160]}, want {cell.deny_status}"
    if ACME_VALUE in r.text:
        return f"{who}: denied but the value is in the answer"
    return None


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_matrix(world: Ctx, cell: Cell) -> None:
    bad = []
    for who in EVERYONE:
        r = _call(world, cell, who)
        why = _verdict(cell, who, r)
        if why:
            bad.append(why)
    assert not bad, "\n".join(bad)


def test_table_is_complete() -> None:
    """Every principal named in the table exists, and every REST route is in the matrix."""
    for c in CELLS:
        assert set(c.allowed.split()) <= set(INSIDERS), c.id
    from keybroker.server import create_app as _create

    app = _create(server_settings())
    routes = {
        (m, getattr(r, "path", ""))
        for r in app.routes
        for m in getattr(r, "methods", set()) or set()
        if getattr(r, "include_in_schema", False) and getattr(r, "path", "").startswith("/v1/")
    }
    covered = {(c.method, _route_of(c.path)) for c in CELLS}
    unauthenticated = {
        ("GET", "/v1/sys/health"),
        ("HEAD", "/v1/sys/health"),
        ("GET", "/v1/sys/seal-status"),
        ("POST", "/v1/sys/unseal"),
        ("PUT", "/v1/sys/unseal"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/challenge"),
        ("POST", "/v1/auth/login/signed"),
    }
    self_service = {
        ("POST", "/v1/auth/token/renew"),
        ("POST", "/v1/auth/token/revoke"),
        ("PUT", "/v1/sys/seal"),
        ("DELETE", "/v1/identities/{name}/roles"),
        ("PUT", "/v1/identities/{name}/public-key"),
        ("POST", "/v1/batch/read"),
        ("GET", "/v1/events"),
    }
    missing = sorted(routes - covered - unauthenticated - self_service)
    assert not missing, missing


def _route_of(path: str) -> str:
    mapping = {
        S + "/OPENAI_KEY": "/v1/secrets/{project}/{env}/{name}",
    }
    if path in mapping:
        return mapping[path]
    parts = path.split("/")
    if path.startswith(
        (
            "/v1/secrets/",
            "/v1/metadata/",
            "/v1/history/",
            "/v1/rotate/",
            "/v1/promote/",
            "/v1/rollback/",
            "/v1/undelete/",
            "/v1/destroy/",
            "/v1/keypairs/",
        )
    ):
        if len(parts) == 5:
            return "/".join(parts[:3]) + "/{project}/{env}"
        return "/".join(parts[:3]) + "/{project}/{env}/{name}"
    if path.startswith(("/v1/import/", "/v1/export/")):
        return "/".join(parts[:3]) + "/{project}/{env}"
    if path.startswith("/v1/projects/"):
        return "/v1/projects/{project}/environments"
    if path.startswith("/v1/identities/"):
        rest = "/".join(parts[4:])
        return "/v1/identities/{name}" + (f"/{rest}" if rest else "")
    if path.startswith("/v1/tokens/"):
        return "/v1/tokens/{accessor}"
    return path


def test_batch_read_per_name(world: Ctx) -> None:
    """Batch read answers 200 and decides each name like a single read."""
    allowed = set(READ.split())
    for who in INSIDERS:
        r = world.owner.post(
            "/v1/batch/read",
            headers={"Authorization": f"Bearer {world.tokens[who]}"},
            json={"project": "alpha", "environment": "dev", "names": ["OPENAI_KEY"]},
        )
        assert r.status_code == 200
        body = r.json()
        if who in allowed:
            assert body["secrets"]["OPENAI_KEY"]["value"] == ACME_VALUE, who
        else:
            assert body["errors"]["OPENAI_KEY"]["code"] == "permission_denied", who
    r = world.owner.post(
        "/v1/batch/read",
        headers={"Authorization": f"Bearer {world.tokens['outsider']}"},
        json={"project": "alpha", "environment": "dev", "names": ["OPENAI_KEY"]},
    )
    assert ACME_VALUE not in r.text


def test_listings_show_only_what_is_allowed(world: Ctx) -> None:
    def get(who: str, path: str) -> Any:
        return world.owner.get(path, headers={"Authorization": f"Bearer {world.tokens[who]}"}).json()

    names = {m["name"] for m in get("tok_names", "/v1/secrets/alpha/dev")["secrets"]}
    assert names and all(n.startswith("OPENAI_") for n in names)
    assert [p["name"] for p in get("tok_beta", "/v1/projects")["projects"]] == ["beta"]
    assert [p["name"] for p in get("alpha_member", "/v1/projects")["projects"]] == ["alpha"]
    assert all(p["name"].startswith("p-outsider") for p in get("outsider", "/v1/projects")["projects"])
    assert all(
        i["name"].endswith(tuple("0123456789abcdef")) or i["name"] == "outsider"
        for i in get("outsider", "/v1/identities")["identities"]
    )
    assert "bystander" not in str(get("outsider", "/v1/identities"))
    assert {t["org"] for t in get("outsider", "/v1/tokens")["tokens"]} == {"other"}
    # an owner's audit view holds acme records only; the outsider's none of acme's
    assert all(e["target"].startswith("acme/") for e in get("owner", "/v1/audit?limit=1000")["entries"])
    assert all(e["target"].startswith("other/") for e in get("outsider", "/v1/audit?limit=1000")["entries"])
    # use-only lists names but cannot read: export gives it nothing
    assert get("user", "/v1/export/alpha/dev")["secrets"] == {}
    # an acme accessor is 'not found' for the outsider, exactly like a made-up one
    for acc in (world.accessors["owner"], "kba_madeup"):
        r = world.owner.get(
            f"/v1/tokens/{acc}", headers={"Authorization": "", "X-Vault-Token": world.tokens["outsider"]}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "token_not_found"
