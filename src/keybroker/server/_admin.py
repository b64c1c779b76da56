"""System, projects, identities, tokens, logins and audit routes of the REST API v1."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

import keybroker
from keybroker.core import PassphraseRoot, RawRoot, local_principal
from keybroker.core._tokens import IssuedToken, TokenInfo
from keybroker.core._vault import RootKeySource
from keybroker.errors import InvalidInput, KeybrokerError, NotInitialized, PermissionDenied, UnsealFailed
from keybroker.server._auth import Caller, Kb, client_address, require_unsealed
from keybroker.server._errors import ERROR_RESPONSES
from keybroker.server._params import IDENTITY_RX, SCOPE_RX, AccessorP, IdentityP, ProjectP
from keybroker.server._state import Services

__all__ = ["router", "seal_status", "sys_router"]

_GLOB_RX = r"^[a-z0-9_*?-]{1,64}$"
_NAME_GLOB_RX = r"^[A-Za-z0-9_/*?.-]{1,256}$"

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
#: routes Vault clients call too (health, seal status, unseal): Vault's shapes
sys_router = APIRouter(prefix="/v1/sys")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


# ------------------------------------------------------------------ sys
def seal_status(kb: Services) -> dict[str, Any]:
    initialized = kb.vault.is_initialized()
    return {
        "type": "keybroker",
        "initialized": initialized,
        "sealed": kb.vault.sealed if initialized else True,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": keybroker.__version__,
        "build_date": "",
        "migration": False,
        "recovery_seal": False,
        "storage_type": kb.vault.store.dialect,
    }


def health_body(kb: Services) -> tuple[int, dict[str, Any]]:
    try:
        initialized = kb.vault.is_initialized()
        store_ok = True
    except KeybrokerError:
        initialized, store_ok = False, False
    sealed = kb.vault.sealed if initialized else True
    kb.metrics.sealed.set(1 if sealed else 0)
    body: dict[str, Any] = {
        "initialized": initialized,
        "sealed": sealed,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(kb.vault.clock.now().timestamp()),
        "version": keybroker.__version__,
        "cluster_name": "keybroker",
        "store": kb.vault.store.dialect if store_ok else "unavailable",
    }
    status = 501 if not initialized else (503 if sealed else 200)
    return status, body


_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "initialised and unsealed"},
    501: {"description": "not initialised"},
    503: {"description": "sealed"},
    "default": {"description": "the status asked for with activecode, sealedcode or uninitcode"},
}


class UnsealBody(_Body):
    passphrase: str | None = Field(None, max_length=4096, repr=False)
    key: str | None = Field(None, max_length=4096, repr=False)
    reset: bool = False
    migrate: bool = False


@sys_router.get(
    "/health",
    summary="Health (Vault-compatible: 200 unsealed, 503 sealed, 501 not initialised)",
    responses=_HEALTH_RESPONSES,
)
def health(
    request: Request,
    kb: Kb,
    standbyok: bool = False,
    sealedcode: Annotated[int | None, Query(ge=200, le=599)] = None,
    uninitcode: Annotated[int | None, Query(ge=200, le=599)] = None,
    activecode: Annotated[int | None, Query(ge=200, le=299)] = None,
) -> Response:
    status, body = health_body(kb)
    if status == 200 and activecode:
        status = activecode
    elif status == 503 and sealedcode:
        status = sealedcode
    elif status == 501 and uninitcode:
        status = uninitcode
    if request.method == "HEAD":
        return Response(status_code=status, media_type="application/json")
    return JSONResponse(body, status_code=status)


@sys_router.get("/seal-status", summary="Seal status (Vault shape)")
def get_seal_status(kb: Kb) -> dict[str, Any]:
    return seal_status(kb)


@sys_router.post("/unseal", summary="Unseal with the passphrase (or the root key)")
def unseal(body: UnsealBody, request: Request, kb: Kb) -> dict[str, Any]:
    kb.tokens.check_address(client_address(request))
    if body.reset:
        return seal_status(kb)
    if not kb.vault.is_initialized():
        raise NotInitialized("no vault here yet")
    if not kb.vault.sealed:
        return seal_status(kb)
    secret = body.passphrase if body.passphrase is not None else body.key
    if not secret:
        raise InvalidInput("give passphrase (or key)")
    kind = kb.vault.status().get("root_kind")
    source: RootKeySource
    if kind == "passphrase":
        source = PassphraseRoot(secret)
    else:
        try:
            raw = base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise UnsealFailed("the key must be the base64 form of the 32-byte root key") from None
        source = RawRoot(raw, kind=str(kind))
    addr = client_address(request)
    kb.vault.unseal(source, local_principal(f"http:{addr or '-'}"))
    return seal_status(kb)


@sys_router.post("/seal", status_code=204, summary="Seal (system operator)")
def seal(kb: Kb, p: Caller) -> Response:
    if not kb.authorizer.is_sys(p):
        raise PermissionDenied("only the system operator may seal the vault")
    kb.vault.seal(p)
    return Response(status_code=204)


# the same handlers under the other methods Vault clients use (own operation ids in the spec)
sys_router.add_api_route(
    "/health",
    health,
    methods=["HEAD"],
    operation_id="health_head",
    summary="Health (HEAD)",
    responses=_HEALTH_RESPONSES,
)
sys_router.add_api_route(
    "/unseal", unseal, methods=["PUT"], operation_id="unseal_put", summary="Unseal (PUT)"
)
sys_router.add_api_route(
    "/seal", seal, methods=["PUT"], status_code=204, operation_id="seal_put", summary="Seal (PUT)"
)


# ------------------------------------------------------------------ organizations
class OrgBody(_Body):
    name: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})


@router.get("/orgs", summary="Organizations (system operator)")
def list_orgs(kb: Kb, p: Caller) -> dict[str, Any]:
    return {"orgs": kb.identities.list_orgs(p)}


@router.post("/orgs", status_code=201, summary="Create an organization (system operator)")
def create_org(body: OrgBody, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"org": kb.identities.create_org(p, body.name)}


# ------------------------------------------------------------------ projects
class ProjectBody(_Body):
    name: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})
    environments: list[
        Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})]
    ] = Field(
        default_factory=lambda: ["dev", "staging", "prod"],
        max_length=64,
        json_schema_extra={"uniqueItems": True},
    )
    description: str = Field("", max_length=10_000)

    @field_validator("environments")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("environment names must be distinct")
        return v


class EnvironmentBody(_Body):
    name: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})


@router.get("/projects", summary="Projects visible to the caller")
def list_projects(kb: Kb, p: Caller) -> dict[str, Any]:
    return {"projects": kb.identities.list_projects(p)}


@router.post("/projects", status_code=201, summary="Create a project")
def create_project(body: ProjectBody, kb: Kb, p: Caller) -> dict[str, Any]:
    org = p.grant.org if p.grant else "default"
    kb.secrets.create_project(
        p, body.name, org=org, environments=body.environments, description=body.description
    )
    return {
        "project": {"name": body.name, "environments": body.environments, "description": body.description}
    }


@router.post("/projects/{project}/environments", status_code=201, summary="Add an environment")
def create_environment(project: ProjectP, body: EnvironmentBody, kb: Kb, p: Caller) -> dict[str, Any]:
    org = p.grant.org if p.grant else "default"
    kb.secrets.create_environment(p, project, body.name, org=org)
    return {"environment": {"project": project, "name": body.name}}


# ------------------------------------------------------------------ identities
class IdentityBody(_Body):
    name: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": IDENTITY_RX})
    kind: Literal["user", "service", "agent"] = "agent"
    description: str = Field("", max_length=1000)


class RoleBody(_Body):
    role: Literal["owner", "admin", "member", "viewer", "use"]
    project: str = Field(
        "*", min_length=1, max_length=64, json_schema_extra={"pattern": r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$"}
    )


class PublicKeyBody(_Body):
    public_key: str = Field(min_length=1, max_length=4096)


OrgQ = Annotated[
    str | None,
    Query(
        max_length=64,
        description="another organization (system operator only)",
        json_schema_extra={"pattern": SCOPE_RX},
    ),
]


@router.get("/identities", summary="Identities of the organization")
def list_identities(kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    return {"identities": [i.to_dict() for i in kb.identities.list_identities(p, org=org)]}


@router.post("/identities", status_code=201, summary="Create an identity")
def create_identity(body: IdentityBody, kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    ident = kb.identities.create(p, body.name, body.kind, description=body.description, org=org)
    return {"identity": ident.to_dict()}


@router.get("/identities/{name}", summary="One identity")
def get_identity(name: IdentityP, kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    return {"identity": kb.identities.get(p, name, org=org).to_dict()}


@router.delete("/identities/{name}", summary="Disable an identity and revoke its tokens")
def disable_identity(name: IdentityP, kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    return {"tokens_revoked": kb.identities.disable(p, name, org=org)}


@router.put("/identities/{name}/roles", summary="Grant a role (organization-wide or on a project)")
def set_role(name: IdentityP, body: RoleBody, kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    return {"identity": kb.identities.set_role(p, name, body.role, project=body.project, org=org).to_dict()}


@router.delete("/identities/{name}/roles", summary="Remove a role")
def remove_role(
    name: IdentityP,
    kb: Kb,
    p: Caller,
    project: Annotated[str, Query(min_length=1, max_length=64)] = "*",
    org: OrgQ = None,
) -> dict[str, Any]:
    return {"identity": kb.identities.remove_role(p, name, project=project, org=org).to_dict()}


@router.post(
    "/identities/{name}/client-secret", status_code=201, summary="New client id + secret (shown once)"
)
def new_client_secret(name: IdentityP, kb: Kb, p: Caller, org: OrgQ = None) -> dict[str, Any]:
    cred = kb.identities.new_client_secret(p, name, org=org)
    return {"client_id": cred.client_id, "client_secret": cred.client_secret.reveal()}


@router.put("/identities/{name}/public-key", summary="Register an Ed25519 public key for signed login")
def set_public_key(
    name: IdentityP, body: PublicKeyBody, kb: Kb, p: Caller, org: OrgQ = None
) -> dict[str, Any]:
    return {"identity": kb.identities.set_public_key(p, name, body.public_key, org=org).to_dict()}


# ------------------------------------------------------------------ tokens
class ScopeBody(_Body):
    projects: list[Annotated[str, Field(max_length=64, json_schema_extra={"pattern": _GLOB_RX})]] | None = (
        Field(None, max_length=100)
    )
    environments: (
        list[Annotated[str, Field(max_length=64, json_schema_extra={"pattern": _GLOB_RX})]] | None
    ) = Field(None, max_length=100)
    names: (
        list[Annotated[str, Field(max_length=256, json_schema_extra={"pattern": _NAME_GLOB_RX})]] | None
    ) = Field(None, max_length=100)
    actions: list[Literal["read", "use", "list", "write", "admin"]] | None = None
    sys: bool | None = None


class TokenBody(_Body):
    identity: str | None = Field(None, max_length=64, json_schema_extra={"pattern": IDENTITY_RX})
    scope: ScopeBody | None = None
    ttl_s: int | None = Field(None, ge=1, le=10 * 365 * 86400)
    max_ttl_s: int | None = Field(None, ge=1, le=10 * 365 * 86400)
    uses: int | None = Field(None, ge=1, le=2**31 - 1)
    cidrs: list[Annotated[str, Field(max_length=64, json_schema_extra={"format": "ipv4-network"})]] | None = (
        Field(None, max_length=100, description="IPv4/IPv6 networks such as 10.0.0.0/8")
    )
    display_name: str = Field("", max_length=128)


class RenewBody(_Body):
    increment_s: int | None = Field(None, ge=1, le=10 * 365 * 86400)


def token_info(kb: Services, info: TokenInfo) -> dict[str, Any]:
    return info.to_dict(kb.vault.clock.now())


def issued(kb: Services, t: IssuedToken) -> dict[str, Any]:
    return {
        "token": t.token.reveal(),
        "accessor": t.info.accessor,
        "expires_at": t.info.expires_at.isoformat() if t.info.expires_at else None,
        "identity": {"id": t.info.identity_id, "name": t.info.identity, "kind": t.info.identity_kind},
        "info": token_info(kb, t.info),
    }


@router.post("/tokens", status_code=201, summary="Create a child token (narrowing only)")
def create_token(body: TokenBody, kb: Kb, p: Caller) -> dict[str, Any]:
    scope = body.scope.model_dump(exclude_none=True) if body.scope is not None else None
    t = kb.tokens.create(
        p,
        identity=body.identity,
        scope=scope,
        ttl_s=body.ttl_s,
        max_ttl_s=body.max_ttl_s,
        uses=body.uses,
        cidrs=body.cidrs,
        display_name=body.display_name,
    )
    return issued(kb, t)


@router.get("/tokens", summary="Tokens (org admins: all of the organization; others: their own)")
def list_tokens(
    kb: Kb,
    p: Caller,
    identity: Annotated[str | None, Query(max_length=64)] = None,
    revoked: bool = False,
) -> dict[str, Any]:
    return {
        "tokens": [
            token_info(kb, t) for t in kb.tokens.list_tokens(p, identity=identity, include_revoked=revoked)
        ]
    }


@router.get("/tokens/{accessor}", summary="One token, by accessor")
def get_token(accessor: AccessorP, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"token": token_info(kb, kb.tokens.lookup(p, accessor))}


@router.delete("/tokens/{accessor}", summary="Revoke a token and all its children")
def revoke_token(accessor: AccessorP, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"revoked": kb.tokens.revoke(p, accessor)}


@router.get("/auth/token/self", summary="The caller's token (never its value)")
def token_self(kb: Kb, p: Caller) -> dict[str, Any]:
    return token_info(kb, kb.tokens.lookup_self(p))


@router.post("/auth/token/renew", summary="Renew the caller's token")
def token_renew(kb: Kb, p: Caller, body: RenewBody | None = None) -> dict[str, Any]:
    return token_info(kb, kb.tokens.renew_self(p, body.increment_s if body else None))


@router.post("/auth/token/revoke", summary="Revoke the caller's token (and children)")
def token_revoke(kb: Kb, p: Caller) -> dict[str, Any]:
    return {"revoked": kb.tokens.revoke(p)}


# ------------------------------------------------------------------ logins
class LoginBody(_Body):
    client_id: str = Field(min_length=1, max_length=64)
    client_secret: str = Field(min_length=1, max_length=256, repr=False)


class ChallengeBody(_Body):
    client_id: str = Field(min_length=1, max_length=64)


class SignedLoginBody(_Body):
    challenge_id: str = Field(min_length=1, max_length=64)
    signature: str = Field(
        min_length=1,
        max_length=1024,
        description="base64 Ed25519 signature of `message`",
        json_schema_extra={"pattern": r"^[A-Za-z0-9+/]*={0,2}$"},
    )


@router.post("/auth/login", summary="Machine login: client id + secret for a short-lived token")
def login(body: LoginBody, request: Request, kb: Kb) -> dict[str, Any]:
    require_unsealed(kb)
    addr = client_address(request)
    t = kb.identities.login_client_secret(
        body.client_id, body.client_secret, address=addr, client=f"http:{addr or '-'}"
    )
    return issued(kb, t)


@router.post("/auth/challenge", summary="A challenge to sign for key login")
def challenge(body: ChallengeBody, request: Request, kb: Kb) -> dict[str, Any]:
    require_unsealed(kb)
    return kb.identities.challenge(body.client_id, address=client_address(request)).to_dict()


@router.post("/auth/login/signed", summary="Key login: a signed challenge for a short-lived token")
def login_signed(body: SignedLoginBody, request: Request, kb: Kb) -> dict[str, Any]:
    require_unsealed(kb)
    try:
        sig = base64.b64decode(body.signature, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("signature must be base64") from None
    addr = client_address(request)
    t = kb.identities.login_signed(body.challenge_id, sig, address=addr, client=f"http:{addr or '-'}")
    return issued(kb, t)


# ------------------------------------------------------------------ audit
def _since(since: str | None) -> datetime | None:
    if not since:
        return None
    try:
        dt = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("since must be an ISO-8601 time, e.g. 2026-01-01T00:00:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


SinceQ = Annotated[
    str | None, Query(max_length=64, description="ISO-8601 time", json_schema_extra={"format": "date-time"})
]


@router.get("/audit", summary="Audit records of the organization (org admins)")
def audit_query(
    kb: Kb,
    p: Caller,
    since: SinceQ = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    target: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    all: bool = False,
) -> dict[str, Any]:
    entries = kb.audit.query(
        p, since=_since(since), action=action, actor=actor, target_prefix=target, limit=limit, everything=all
    )
    return {"entries": [e.to_dict() for e in entries]}


@router.get(
    "/audit/export",
    summary="Export the organization's audit records (JSON lines or CSV)",
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def audit_export(
    kb: Kb, p: Caller, format: Literal["jsonl", "csv"] = "jsonl", since: SinceQ = None, all: bool = False
) -> StreamingResponse:
    lines = kb.audit.export(p, format, since=_since(since), everything=all)
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return StreamingResponse(lines, media_type=media)


@router.get("/audit/verify", summary="Verify the whole hash chain (system operator)")
def audit_verify(kb: Kb, p: Caller) -> dict[str, Any]:
    r = kb.audit.verify(p)
    return {
        "ok": r.ok,
        "checked": r.checked,
        "first_bad_seq": r.first_bad_seq,
        "reason": r.reason,
        "head_seq": r.head_seq,
    }
