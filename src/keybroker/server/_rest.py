"""keybroker's own REST API v1: secrets, versions, labels, rotation, batch read, key pairs,
import/export (docs/http-api.md). Every route calls the core services; none touches SQL or
crypto, and none decides access itself (the core's RbacAuthorizer does, via the principal)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from keybroker.core import Scope
from keybroker.core._dotenv import parse_dotenv
from keybroker.core._rbac import AuthPrincipal
from keybroker.errors import InvalidInput, KeybrokerError, PermissionDenied
from keybroker.server._auth import Caller, Kb
from keybroker.server._errors import ERROR_RESPONSES
from keybroker.server._params import NAME_RX, SCOPE_RX, EnvP, NameP, ProjectP

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

_MAX_VALUE = 1024 * 1024
Project = Annotated[str, Field(min_length=1, max_length=64)]


def scope_of(p: AuthPrincipal, project: str, env: str) -> Scope:
    org = p.grant.org if p.grant else "default"
    return Scope(project, env, org)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class MetadataFields(_Body):
    description: str | None = Field(None, max_length=10_000)
    tags: list[Annotated[str, Field(max_length=128)]] | None = Field(None, max_length=64)
    owner: str | None = Field(None, max_length=128)
    risk: Literal["low", "medium", "high"] | None = None
    provider: str | None = Field(None, max_length=32, json_schema_extra={"pattern": r"^[a-z0-9_-]{1,32}$"})
    expires_at: datetime | None = None
    rotation_period_s: int | None = Field(None, ge=0, le=2**31 - 1)
    custom_metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    proxy_only: bool | None = None
    max_versions: int | None = Field(None, ge=0, le=10_000)
    cas_required: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        out = {k: v for k, v in self.model_dump(exclude={"value", "cas"}).items() if v is not None}
        return out


class PutSecret(MetadataFields):
    value: str = Field(max_length=_MAX_VALUE, repr=False)
    cas: int | None = Field(None, ge=0, le=2**31 - 1)


class ValueBody(_Body):
    value: str = Field(max_length=_MAX_VALUE, repr=False)


class VersionBody(_Body):
    version: int = Field(ge=1, le=2**31 - 1)


class VersionsBody(_Body):
    versions: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(None, max_length=1000)


class DestroyBody(_Body):
    versions: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=1000)


class BatchRead(_Body):
    project: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})
    environment: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": SCOPE_RX})
    names: list[
        Annotated[str, Field(min_length=1, max_length=256, json_schema_extra={"pattern": NAME_RX})]
    ] = Field(min_length=1, max_length=100)


class KeypairBody(_Body):
    algorithm: Literal["ed25519", "ecdsa-p256", "rsa-3072"] = "ed25519"
    rotate: bool = False
    description: str | None = Field(None, max_length=10_000)


class ImportBody(_Body):
    secrets: (
        dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=_MAX_VALUE)]] | None
    ) = Field(None, repr=False)
    dotenv: str | None = Field(None, max_length=10 * _MAX_VALUE, repr=False)
    overwrite: bool = False


def _versions_param(versions: str | None) -> list[int] | None:
    if versions is None or versions == "":
        return None
    try:
        out = [int(v) for v in versions.split(",")]
    except ValueError:
        raise InvalidInput("versions must be comma-separated version numbers, e.g. 1,2") from None
    if any(v < 1 or v > 2**31 - 1 for v in out):
        raise InvalidInput("version numbers start at 1")
    return out


# ------------------------------------------------------------------ secrets
@router.get("/secrets/{project}/{env}/{name:path}", summary="Read a secret value")
def get_secret(
    project: ProjectP,
    env: EnvP,
    name: NameP,
    kb: Kb,
    p: Caller,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    label: Literal["current", "previous", "pending"] | None = None,
    resolve: bool = True,
) -> dict[str, Any]:
    if version is not None and label is not None:
        raise InvalidInput("give version or label, not both")
    r = kb.secrets.get(p, scope_of(p, project, env), name, version=version, label=label, resolve=resolve)
    return {
        "name": r.name,
        "version": r.version,
        "value": r.value.reveal(),
        "metadata": r.meta.to_dict(),
        "references": list(r.references),
    }


@router.put("/secrets/{project}/{env}/{name:path}", summary="Write a new version")
def put_secret(
    project: ProjectP, env: EnvP, name: NameP, body: PutSecret, kb: Kb, p: Caller
) -> dict[str, Any]:
    meta = kb.secrets.put(p, scope_of(p, project, env), name, body.value, cas=body.cas, **body.kwargs())
    return {"metadata": meta.to_dict()}


@router.delete("/secrets/{project}/{env}/{name:path}", status_code=204, summary="Soft-delete (or purge)")
def delete_secret(
    project: ProjectP,
    env: EnvP,
    name: NameP,
    kb: Kb,
    p: Caller,
    versions: Annotated[str | None, Query(max_length=10_000, pattern=r"^[0-9,]*$")] = None,
    purge: bool = False,
) -> Response:
    scope = scope_of(p, project, env)
    if purge:
        if versions:
            raise InvalidInput("purge removes every version: do not give versions")
        kb.secrets.purge(p, scope, name)
    else:
        kb.secrets.delete(p, scope, name, _versions_param(versions))
    return Response(status_code=204)


@router.get("/secrets/{project}/{env}", summary="List secrets (metadata only)")
def list_secrets(
    project: ProjectP,
    env: EnvP,
    kb: Kb,
    p: Caller,
    prefix: Annotated[str, Query(max_length=256)] = "",
    deleted: bool = False,
) -> dict[str, Any]:
    scope = scope_of(p, project, env)
    metas = kb.secrets.list_secrets(p, scope, prefix=prefix, include_deleted=deleted)
    return {"secrets": [m.to_dict() for m in metas if kb.authorizer.allows(p, "list", scope, m.name)]}


@router.post("/batch/read", summary="Read several secrets of one environment")
def batch_read(body: BatchRead, kb: Kb, p: Caller) -> dict[str, Any]:
    scope = scope_of(p, body.project, body.environment)
    out: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for name in dict.fromkeys(body.names):
        try:
            r = kb.secrets.get(p, scope, name)
            out[name] = {"version": r.version, "value": r.value.reveal()}
        except KeybrokerError as exc:
            if exc.status >= 500 and exc.code != "decryption_failed":
                raise
            errors[name] = {"code": exc.code, "message": exc.message}
    return {"secrets": out, "errors": errors}


@router.get("/metadata/{project}/{env}/{name:path}", summary="Secret metadata")
def get_metadata(project: ProjectP, env: EnvP, name: NameP, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"metadata": kb.secrets.describe(p, scope_of(p, project, env), name).to_dict()}


@router.patch("/metadata/{project}/{env}/{name:path}", summary="Update metadata (no new version)")
def patch_metadata(
    project: ProjectP, env: EnvP, name: NameP, body: MetadataFields, kb: Kb, p: Caller
) -> dict[str, Any]:
    meta = kb.secrets.update_metadata(p, scope_of(p, project, env), name, **body.kwargs())
    return {"metadata": meta.to_dict()}


@router.get("/history/{project}/{env}/{name:path}", summary="Versions of a secret")
def history(project: ProjectP, env: EnvP, name: NameP, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"versions": [v.to_dict() for v in kb.secrets.history(p, scope_of(p, project, env), name)]}


@router.post("/rotate/{project}/{env}/{name:path}", summary="Write a pending version")
def rotate(project: ProjectP, env: EnvP, name: NameP, body: ValueBody, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"metadata": kb.secrets.rotate(p, scope_of(p, project, env), name, body.value).to_dict()}


@router.post("/promote/{project}/{env}/{name:path}", summary="Pending becomes current")
def promote(project: ProjectP, env: EnvP, name: NameP, kb: Kb, p: Caller) -> dict[str, Any]:
    return {"metadata": kb.secrets.promote(p, scope_of(p, project, env), name).to_dict()}


@router.post("/rollback/{project}/{env}/{name:path}", summary="Write an old version again as current")
def rollback(
    project: ProjectP, env: EnvP, name: NameP, body: VersionBody, kb: Kb, p: Caller
) -> dict[str, Any]:
    return {"metadata": kb.secrets.rollback(p, scope_of(p, project, env), name, body.version).to_dict()}


@router.post("/undelete/{project}/{env}/{name:path}", status_code=204, summary="Undo a soft delete")
def undelete(
    project: ProjectP,
    env: EnvP,
    name: NameP,
    kb: Kb,
    p: Caller,
    body: Annotated[VersionsBody | None, Body()] = None,
) -> Response:
    kb.secrets.undelete(p, scope_of(p, project, env), name, body.versions if body else None)
    return Response(status_code=204)


@router.post("/destroy/{project}/{env}/{name:path}", status_code=204, summary="Erase versions for good")
def destroy(project: ProjectP, env: EnvP, name: NameP, body: DestroyBody, kb: Kb, p: Caller) -> Response:
    kb.secrets.destroy(p, scope_of(p, project, env), name, body.versions)
    return Response(status_code=204)


# ------------------------------------------------------------------ key pairs
@router.post("/keypairs/{project}/{env}/{name:path}", summary="Generate (or rotate) a key pair")
def keypair_generate(
    project: ProjectP, env: EnvP, name: NameP, body: KeypairBody, kb: Kb, p: Caller
) -> dict[str, Any]:
    md = {"description": body.description} if body.description is not None else {}
    meta, pub = kb.secrets.keypair_generate(
        p, scope_of(p, project, env), name, body.algorithm, rotate=body.rotate, **md
    )
    return {"metadata": meta.to_dict(), "public_key": pub}


@router.get("/keypairs/{project}/{env}/{name:path}", summary="Public key of a key pair")
def keypair_public(
    project: ProjectP,
    env: EnvP,
    name: NameP,
    kb: Kb,
    p: Caller,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    v, alg, pub = kb.secrets.keypair_public(p, scope_of(p, project, env), name, version)
    return {"name": name, "version": v, "algorithm": alg, "public_key": pub}


# ------------------------------------------------------------------ import / export
@router.post("/import/{project}/{env}", summary="Import secrets (JSON map or .env text)")
def import_secrets(project: ProjectP, env: EnvP, body: ImportBody, kb: Kb, p: Caller) -> dict[str, Any]:
    if (body.secrets is None) == (body.dotenv is None):
        raise InvalidInput("give either secrets (a JSON object) or dotenv (the text of a .env file)")
    skipped: list[dict[str, Any]] = []
    if body.secrets is not None:
        items = dict(body.secrets)
    else:
        parsed = parse_dotenv(body.dotenv or "", expand=False)
        items = parsed.as_dict()
        skipped = [{"line": s.line, "reason": s.reason} for s in parsed.skipped]
    scope = scope_of(p, project, env)
    denied = [n for n in items if not kb.authorizer.allows(p, "write", scope, n)]
    if denied:
        # all or nothing: an import the caller may only partly write writes nothing
        raise PermissionDenied(f"{p.label} may not write {len(denied)} of these secrets", names=denied[:20])
    existing = {m.name for m in kb.secrets.list_secrets(p, scope, include_deleted=True)}
    imported: list[str] = []
    kept: list[str] = []
    errors: dict[str, Any] = {}
    for name, value in items.items():
        if name in existing and not body.overwrite:
            kept.append(name)
            continue
        try:
            kb.secrets.put(p, scope, name, value, action="secret.import")
            imported.append(name)
        except KeybrokerError as exc:
            if exc.status >= 500:
                raise
            errors[name[:256]] = {"code": exc.code, "message": exc.message}
    return {"imported": imported, "unchanged": kept, "errors": errors, "skipped_lines": skipped}


@router.get(
    "/export/{project}/{env}",
    summary="Export current values (JSON or .env)",
    responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
)
def export_secrets(
    project: ProjectP, env: EnvP, kb: Kb, p: Caller, format: Literal["json", "dotenv"] = "json"
) -> Response:
    scope = scope_of(p, project, env)
    values = {k: v.reveal() for k, v in kb.secrets.export(p, scope).items()}
    if format == "json":
        return JSONResponse({"secrets": values})
    lines = []
    for k, text in values.items():
        esc = text.replace("\\", "\\\\").replace("'", "\\'")
        lines.append(f"{k}='{esc}'\n")
    return PlainTextResponse("".join(lines))
