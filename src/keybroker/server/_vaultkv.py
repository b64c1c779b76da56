"""The Vault-compatible surface: KV v2 under ``/v1/{mount}/...`` and the few ``sys/`` and
``auth/token/`` endpoints Vault clients (``hvac``, the ``bao``/``vault`` CLI) call, with Vault's
response envelope, error shape and status codes. ``X-Vault-Token`` carries a keybroker token.

Mapping (docs/kv-compat.md): mount = project, the first path segment = environment, the rest =
the secret name; the organization comes from the token. KV data <-> secret value follows
:mod:`keybroker.core._kv`. All access decisions are the core's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from keybroker.core import Scope, SecretMeta, VersionMeta
from keybroker.core._kv import kv_decode, kv_encode
from keybroker.core._names import check_scope_name
from keybroker.core._rbac import AuthPrincipal
from keybroker.core._tokens import TokenInfo
from keybroker.errors import (
    CasMismatch,
    EnvironmentNotFound,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    ProjectNotFound,
    SecretDeleted,
    SecretNotFound,
    VersionNotFound,
)
from keybroker.server._auth import Caller, Kb, presented_token, request_id
from keybroker.server._state import Services

__all__ = ["RESERVED_MOUNTS", "router"]

router = APIRouter(include_in_schema=False)

#: first path segments the REST API uses; they cannot be KV mounts
RESERVED_MOUNTS = frozenset(
    {
        "sys",
        "auth",
        "secrets",
        "metadata",
        "history",
        "rotate",
        "promote",
        "rollback",
        "undelete",
        "destroy",
        "batch",
        "keypairs",
        "import",
        "export",
        "projects",
        "identities",
        "tokens",
        "orgs",
        "audit",
        "events",
        "identity",
        # agent access (keybroker.server._access_api.RESERVED)
        "agents",
        "access-requests",
        "sessions",
        "proxy-tokens",
        "proxy-env",
        "incident-rotate",
        "access",
    }
)
_KV_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "LIST"]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")


class _VaultAnswer(Exception):
    """Carries a finished Vault-shaped response out of the worker thread."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _ts(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if dt else ""


def envelope(
    request: Request, data: Any = None, *, auth: Any = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    return {
        "request_id": request_id(request) or "",
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings,
        "auth": auth,
        "mount_type": "kv" if auth is None else "token",
    }


def _not_found(body: dict[str, Any] | None = None) -> _VaultAnswer:
    return _VaultAnswer(JSONResponse(body if body is not None else {"errors": []}, status_code=404))


def _bad(msg: str) -> _VaultAnswer:
    return _VaultAnswer(
        JSONResponse({"errors": [msg]}, status_code=400, headers={"X-Keybroker-Error": "invalid_input"})
    )


def parse_duration(v: Any, field: str) -> int | None:
    """Vault durations: an integer of seconds or ``"90s"``, ``"1h30m"``, ``"768h"``."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise InvalidInput(f"{field} must be a duration")
    if isinstance(v, int | float):
        return int(v)
    if not isinstance(v, str) or len(v) > 32:
        raise InvalidInput(f"{field} must be a duration such as 3600 or 1h")
    text = v.strip()
    if text.isdigit():
        return int(text)
    total = 0.0
    pos = 0
    mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
    for m in _DURATION.finditer(text):
        if m.start() != pos or m.group(2) is None:
            raise InvalidInput(f"{field} must be a duration such as 3600 or 1h")
        total += float(m.group(1)) * mult[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise InvalidInput(f"{field} must be a duration such as 3600 or 1h")
    return int(total)


def _versions(body: dict[str, Any]) -> list[int]:
    raw = body.get("versions")
    if raw is None or raw == [] or raw == "":
        raise InvalidInput("no version number provided")
    if isinstance(raw, str | int):
        raw = [raw]
    out: list[int] = []
    if not isinstance(raw, list):
        raise InvalidInput("versions must be a list of version numbers")
    for v in raw:
        for part in str(v).split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < 1 or int(part) > 2**31 - 1:
                raise InvalidInput("versions must be positive version numbers")
            out.append(int(part))
    return sorted(set(out))


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    if len(raw) > 4 * 1024 * 1024:
        raise InvalidInput("request body too large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def _mount_info(kb: Services, project: str, description: str = "") -> dict[str, Any]:
    acc = hashlib.sha256(f"{kb.vault.vault_id}/{project}".encode()).hexdigest()
    return {
        "type": "kv",
        "description": description,
        "accessor": f"kv_{acc[:8]}",
        "uuid": f"{acc[:8]}-{acc[8:12]}-{acc[12:16]}-{acc[16:20]}-{acc[20:32]}",
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
        "options": {"version": "2"},
        "local": False,
        "seal_wrap": False,
        "external_entropy_access": False,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "deprecation_status": "supported",
    }


def _org(p: AuthPrincipal) -> str:
    return p.grant.org if p.grant else "default"


def _visible_project(kb: Services, p: AuthPrincipal, project: str) -> dict[str, Any] | None:
    for proj in kb.identities.list_projects(p):
        if proj["name"] == project:
            return proj
    return None


# ------------------------------------------------------------------ sys
@router.get("/v1/sys/internal/ui/mounts/{path:path}", name="vault_ui_mount")
def ui_mount(path: str, request: Request, kb: Kb, p: Caller) -> Response:
    mount = path.strip("/").split("/", 1)[0]
    if not mount:
        mounts = {
            f"{x['name']}/": _mount_info(kb, x["name"], x["description"])
            for x in kb.identities.list_projects(p)
        }
        return JSONResponse(envelope(request, {"secret": mounts, "auth": {}}))
    if not kb.authorizer.can_see_project(p, _org(p), mount):
        raise PermissionDenied("preflight capability check returned 403")
    proj = _visible_project(kb, p, mount)
    if proj is None:
        # not 404: the CLI would silently fall back to KV v1 paths
        return JSONResponse(
            {"errors": [f"no KV mount (keybroker project) named {mount[:64]!r}"]},
            status_code=400,
            headers={"X-Keybroker-Error": "project_not_found"},
        )
    info = _mount_info(kb, mount, proj["description"])
    info["path"] = f"{mount}/"
    return JSONResponse(envelope(request, info))


@router.get("/v1/sys/init", name="vault_init_status")
def init_status(kb: Kb) -> Response:
    return JSONResponse({"initialized": kb.vault.is_initialized()})


@router.get("/v1/sys/leader", name="vault_leader")
def leader(request: Request) -> Response:
    # no HA: every replica serves reads and writes over the shared store
    return JSONResponse(
        {
            "ha_enabled": False,
            "is_self": True,
            "active_time": "0001-01-01T00:00:00Z",
            "leader_address": "",
            "leader_cluster_address": "",
            "performance_standby": False,
            "performance_standby_last_remote_wal": 0,
        }
    )


@router.get("/v1/sys/mounts", name="vault_mounts")
def mounts(request: Request, kb: Kb, p: Caller) -> Response:
    data = {
        f"{x['name']}/": _mount_info(kb, x["name"], x["description"]) for x in kb.identities.list_projects(p)
    }
    return JSONResponse({**data, **envelope(request, data)})


@router.get("/v1/sys/mounts/{path:path}", name="vault_mount")
def mount_get(path: str, request: Request, kb: Kb, p: Caller) -> Response:
    project = path.strip("/")
    if not kb.authorizer.can_see_project(p, _org(p), project):
        raise PermissionDenied("permission denied")
    proj = _visible_project(kb, p, project)
    if proj is None:
        return JSONResponse({"errors": [f"no mount at {project[:64]!r}"]}, status_code=400)
    return JSONResponse(envelope(request, _mount_info(kb, project, proj["description"])))


@router.api_route("/v1/sys/mounts/{path:path}", methods=["POST", "PUT"], name="vault_mount_enable")
async def mount_enable(path: str, request: Request, kb: Kb, p: Caller) -> Response:
    body = await _json_body(request)
    project = path.strip("/")
    kind = body.get("type")
    version = (
        str((body.get("options") or {}).get("version", "2")) if isinstance(body.get("options"), dict) else "2"
    )
    if kind not in ("kv", "kv-v2") or (kind == "kv" and version != "2"):
        raise InvalidInput(
            "keybroker mounts are KV version 2 only (type kv-v2, or kv with options.version=2)"
        )
    description = body.get("description") if isinstance(body.get("description"), str) else ""
    await run_in_threadpool(
        kb.secrets.create_project, p, project, org=_org(p), description=str(description)[:10_000]
    )
    return Response(status_code=204)


# ------------------------------------------------------------------ auth/token
def _policies(info: TokenInfo, sys: bool) -> list[str]:
    if sys:
        return ["root"]
    return ["default", *sorted(f"{role}:{proj}" for proj, role in info.roles.items())]


def _lookup_data(kb: Services, info: TokenInfo, sys: bool) -> dict[str, Any]:
    now = kb.vault.clock.now()
    ttl = info.ttl_remaining(now)
    return {
        "accessor": info.accessor,
        "creation_time": int(info.created_at.timestamp()),
        "creation_ttl": info.ttl_s or 0,
        "display_name": f"token-{info.display_name}" if info.display_name else "token",
        "entity_id": info.identity_id,
        "expire_time": info.expires_at.isoformat() if info.expires_at else None,
        "explicit_max_ttl": int((info.max_expires_at - info.created_at).total_seconds())
        if info.max_expires_at
        else 0,
        "issue_time": info.created_at.isoformat(),
        "meta": {"org": info.org, "identity": info.identity, "kind": info.identity_kind},
        "num_uses": info.uses_left or 0,
        "orphan": info.parent is None,
        "path": "auth/token/create",
        "policies": _policies(info, sys),
        "renewable": info.expires_at is not None,
        "ttl": ttl or 0,
        "type": "service",
    }


def _auth_block(kb: Services, info: TokenInfo, token: str, sys: bool) -> dict[str, Any]:
    ttl = info.ttl_remaining(kb.vault.clock.now())
    pol = _policies(info, sys)
    return {
        "client_token": token,
        "accessor": info.accessor,
        "policies": pol,
        "token_policies": pol,
        "metadata": {"org": info.org, "identity": info.identity},
        "lease_duration": ttl or 0,
        "renewable": info.expires_at is not None,
        "entity_id": info.identity_id,
        "token_type": "service",
        "orphan": info.parent is None,
        "mfa_requirement": None,
        "num_uses": info.uses_left or 0,
    }


@router.api_route("/v1/auth/token/lookup-self", methods=["GET", "POST"], name="vault_token_lookup_self")
def lookup_self(request: Request, kb: Kb, p: Caller) -> Response:
    info = kb.tokens.lookup_self(p)
    return JSONResponse(envelope(request, _lookup_data(kb, info, kb.authorizer.is_sys(p))))


@router.post("/v1/auth/token/create", name="vault_token_create")
async def token_create(request: Request, kb: Kb, p: Caller) -> Response:
    body = await _json_body(request)
    ttl = parse_duration(body.get("ttl"), "ttl")
    max_ttl = parse_duration(body.get("explicit_max_ttl"), "explicit_max_ttl")
    uses = body.get("num_uses")
    if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool) or uses < 0):
        raise InvalidInput("num_uses must be a non-negative integer")
    display = body.get("display_name") if isinstance(body.get("display_name"), str) else ""
    warnings = None
    if body.get("policies"):
        warnings = ["policies are ignored: keybroker tokens carry a scope and their identity's roles"]
    t = await run_in_threadpool(
        kb.tokens.create,
        p,
        ttl_s=ttl or None,
        max_ttl_s=max_ttl or None,
        uses=uses or None,
        display_name=str(display)[:128],
    )
    auth = _auth_block(kb, t.info, t.token.reveal(), False)
    return JSONResponse(envelope(request, None, auth=auth, warnings=warnings))


@router.api_route("/v1/auth/token/renew-self", methods=["POST", "PUT"], name="vault_token_renew_self")
async def renew_self(request: Request, kb: Kb, p: Caller) -> Response:
    body = await _json_body(request)
    inc = parse_duration(body.get("increment"), "increment")
    info = await run_in_threadpool(kb.tokens.renew_self, p, inc or None)
    auth = _auth_block(kb, info, presented_token(request) or "", kb.authorizer.is_sys(p))
    return JSONResponse(envelope(request, None, auth=auth))


@router.api_route("/v1/auth/token/revoke-self", methods=["POST", "PUT"], name="vault_token_revoke_self")
def revoke_self(kb: Kb, p: Caller) -> Response:
    kb.tokens.revoke(p)
    return Response(status_code=204)


@router.api_route(
    "/v1/auth/token/lookup-accessor", methods=["POST", "PUT"], name="vault_token_lookup_accessor"
)
async def lookup_accessor(request: Request, kb: Kb, p: Caller) -> Response:
    body = await _json_body(request)
    acc = body.get("accessor")
    if not isinstance(acc, str) or not acc:
        raise InvalidInput("missing accessor")
    info = await run_in_threadpool(kb.tokens.lookup, p, acc[:64])
    return JSONResponse(envelope(request, _lookup_data(kb, info, False)))


@router.api_route(
    "/v1/auth/token/revoke-accessor", methods=["POST", "PUT"], name="vault_token_revoke_accessor"
)
async def revoke_accessor(request: Request, kb: Kb, p: Caller) -> Response:
    body = await _json_body(request)
    acc = body.get("accessor")
    if not isinstance(acc, str) or not acc:
        raise InvalidInput("missing accessor")
    await run_in_threadpool(kb.tokens.revoke, p, acc[:64])
    return Response(status_code=204)


# ------------------------------------------------------------------ KV v2
@router.api_route("/v1/{mount}/{rest:path}", methods=_KV_METHODS, name="vault_kv")
async def kv(mount: str, rest: str, request: Request, kb: Kb, p: Caller) -> Response:
    method = request.method
    if method == "GET" and request.query_params.get("list", "").lower() in ("true", "1"):
        method = "LIST"
    if mount in RESERVED_MOUNTS:
        return JSONResponse({"errors": [f"unsupported path: {mount}/..."]}, status_code=404)
    op, _, path = rest.partition("/")
    body: dict[str, Any] = {}
    if method in ("POST", "PUT", "PATCH"):
        body = await _json_body(request)
        if method == "PATCH":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/merge-patch+json":
                return JSONResponse(
                    {"errors": ["PATCH requires Content-Type: application/merge-patch+json"]}, status_code=415
                )
    kvc = _Kv(kb, p, request, mount)
    handler = kvc.route(op, method)
    if handler is None:
        return JSONResponse({"errors": [f"unsupported operation {method} on {op[:32]!r}"]}, status_code=405)
    try:
        result: Response = await run_in_threadpool(handler, path, body)
    except _VaultAnswer as ans:
        return ans.response
    return result


class _Kv:
    """One KV v2 request. Methods run in the worker thread and call only core services."""

    def __init__(self, kb: Services, p: AuthPrincipal, request: Request, mount: str) -> None:
        self.kb = kb
        self.p = p
        self.request = request
        self.project = mount
        self.org = _org(p)
        self.secrets = kb.secrets

    def route(self, op: str, method: str) -> Callable[[str, dict[str, Any]], Response] | None:
        table: dict[tuple[str, str], Callable[[str, dict[str, Any]], Response]] = {
            ("config", "GET"): self.config_read,
            ("config", "POST"): self.config_write,
            ("config", "PUT"): self.config_write,
            ("data", "GET"): self.read,
            ("data", "POST"): self.write,
            ("data", "PUT"): self.write,
            ("data", "PATCH"): self.patch,
            ("data", "DELETE"): self.delete_latest,
            ("metadata", "GET"): self.metadata_read,
            ("metadata", "LIST"): self.list,
            ("metadata", "POST"): self.metadata_write,
            ("metadata", "PUT"): self.metadata_write,
            ("metadata", "PATCH"): self.metadata_patch,
            ("metadata", "DELETE"): self.metadata_delete,
            ("delete", "POST"): self.delete_versions,
            ("delete", "PUT"): self.delete_versions,
            ("undelete", "POST"): self.undelete,
            ("undelete", "PUT"): self.undelete,
            ("destroy", "POST"): self.destroy,
            ("destroy", "PUT"): self.destroy,
            ("subkeys", "GET"): self.subkeys,
        }
        return table.get((op, method))

    # -- helpers -----------------------------------------------------------------------------------
    def ok(self, data: Any, warnings: list[str] | None = None) -> Response:
        return JSONResponse(envelope(self.request, data, warnings=warnings))

    def split(self, path: str) -> tuple[Scope, str]:
        path = path.strip("/")
        env, _, name = path.partition("/")
        if not env or not name:
            raise _bad("KV paths here are <mount>/<environment>/<secret name>, e.g. secret/dev/openai")
        check_scope_name("environment", env)
        return Scope(self.project, env, self.org), name

    def _version_meta(self, v: VersionMeta, meta: SecretMeta) -> dict[str, Any]:
        deleted = v.deleted_at or (meta.deleted_at if v.destroyed_at is None else None)
        return {
            "created_time": _ts(v.created_at),
            "custom_metadata": meta.custom_metadata or None,
            "deletion_time": _ts(deleted),
            "destroyed": v.destroyed_at is not None,
            "version": v.version,
        }

    def _history_or_none(self, scope: Scope, name: str) -> tuple[SecretMeta, list[VersionMeta]] | None:
        try:
            return self.secrets.describe(self.p, scope, name), self.secrets.history(self.p, scope, name)
        except PermissionDenied:
            return None
        except (SecretNotFound, ProjectNotFound, EnvironmentNotFound):
            return None

    # -- config --------------------------------------------------------------------------------------
    def config_read(self, path: str, body: dict[str, Any]) -> Response:
        return self.ok(self.kb.kv_config.get(self.p, self.org, self.project).to_vault())

    def config_write(self, path: str, body: dict[str, Any]) -> Response:
        mv = body.get("max_versions")
        if mv is not None and (not isinstance(mv, int) or isinstance(mv, bool) or mv < 0):
            raise InvalidInput("max_versions must be a non-negative integer")
        cas = body.get("cas_required")
        if cas is not None and not isinstance(cas, bool):
            raise InvalidInput("cas_required must be true or false")
        dva = parse_duration(body.get("delete_version_after"), "delete_version_after")
        self.kb.kv_config.set(
            self.p, self.org, self.project, max_versions=mv, cas_required=cas, delete_version_after_s=dva
        )
        return Response(status_code=204)

    # -- data ----------------------------------------------------------------------------------------
    def read(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        v = self.request.query_params.get("version")
        version: int | None = None
        if v not in (None, "", "0"):
            if not str(v).isdigit() or int(str(v)) > 2**31 - 1:
                raise InvalidInput("version must be a version number")
            version = int(str(v))
        try:
            r = self.secrets.get(self.p, scope, name, version=version)
        except (SecretNotFound, ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        except (VersionNotFound, SecretDeleted) as exc:
            # Vault answers 404 with the version's metadata when it is deleted or destroyed
            found = self._history_or_none(scope, name)
            if found is None:
                raise _not_found() from None
            meta, hist = found
            want = version if version is not None else exc.details.get("version") or meta.current_version
            for vm in hist:
                if vm.version == want:
                    body_ = envelope(self.request, {"data": None, "metadata": self._version_meta(vm, meta)})
                    raise _not_found(body_) from None
            raise _not_found() from None
        created = r.meta.updated_at if r.version == r.meta.latest_version else None
        if created is None:
            found = self._history_or_none(scope, name)
            for h in found[1] if found is not None else ():
                if h.version == r.version:
                    created = h.created_at
        vmeta = {
            "created_time": _ts(created),
            "custom_metadata": r.meta.custom_metadata or None,
            "deletion_time": "",
            "destroyed": False,
            "version": r.version,
        }
        return self.ok({"data": kv_decode(r.value.reveal_bytes()), "metadata": vmeta})

    def _options_cas(self, body: dict[str, Any]) -> int | None:
        opts = body.get("options")
        if opts is None:
            return None
        if not isinstance(opts, dict):
            raise InvalidInput("options must be an object")
        cas = opts.get("cas")
        if cas is None:
            return None
        if isinstance(cas, float) and cas.is_integer():
            cas = int(cas)
        if isinstance(cas, str) and cas.isdigit():
            cas = int(cas)
        if not isinstance(cas, int) or isinstance(cas, bool) or cas < 0:
            raise InvalidInput("options.cas must be a non-negative integer")
        return cas

    def _put(
        self, scope: Scope, name: str, raw: bytes, cas: int | None, *, creating_md: dict[str, Any]
    ) -> Response:
        try:
            meta = self.secrets.put(self.p, scope, name, raw, cas=cas, **creating_md)
        except CasMismatch as exc:
            if cas is None:
                raise _bad("check-and-set parameter required for this call") from exc
            raise _bad("check-and-set parameter did not match the current version") from exc
        except SecretDeleted as exc:
            raise _bad(f"{exc.message} (keybroker secret delete deletes the whole secret)") from exc
        except (ProjectNotFound, EnvironmentNotFound) as exc:
            raise _VaultAnswer(JSONResponse({"errors": [exc.message]}, status_code=404)) from exc
        return self.ok(
            {
                "created_time": _ts(meta.updated_at),
                "custom_metadata": meta.custom_metadata or None,
                "deletion_time": "",
                "destroyed": False,
                "version": meta.latest_version,
            }
        )

    def _mount_config_md(self, scope: Scope, name: str, cas: int | None) -> dict[str, Any]:
        try:
            cfg = self.kb.kv_config.get(self.p, self.org, self.project, check=False)
        except ProjectNotFound:
            raise _VaultAnswer(
                JSONResponse({"errors": [f"no mount {self.project[:64]!r}"]}, status_code=404)
            ) from None
        if cfg.cas_required and cas is None:
            raise _bad("check-and-set parameter required for this call")
        if cfg.max_versions and cas in (None, 0):
            try:
                self.secrets.describe(self.p, scope, name)
            except SecretNotFound:
                return {"max_versions": cfg.max_versions}
            except KeybrokerError:
                return {}
        return {}

    def write(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        if "data" not in body:
            raise _bad("no data provided")
        raw = kv_encode(body["data"])
        cas = self._options_cas(body)
        md = self._mount_config_md(scope, name, cas)
        return self._put(scope, name, raw, cas, creating_md=md)

    def patch(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        patch = body.get("data")
        if not isinstance(patch, dict):
            raise _bad("no data provided")
        cas = self._options_cas(body)
        if cas == 0:
            cas = None
        self._mount_config_md(scope, name, cas if cas is not None else -1)
        for _ in range(5):
            try:
                cur = self.secrets.get(self.p, scope, name)
            except (SecretNotFound, ProjectNotFound, EnvironmentNotFound, VersionNotFound, SecretDeleted):
                raise _not_found() from None
            if cur.meta.cas_required and cas is None:
                raise _bad("check-and-set parameter required for this call")
            merged = _merge_patch(kv_decode(cur.value.reveal_bytes()), patch)
            if not isinstance(merged, dict) or not merged:
                raise _bad("the patch would leave no data")
            expect = cas if cas is not None else cur.meta.latest_version
            try:
                return self._put(scope, name, kv_encode(merged), expect, creating_md={})
            except _VaultAnswer:
                if cas is not None:
                    raise
                continue  # a concurrent write: read again and re-apply
        raise _bad("the secret changed too often while patching; try again")

    def delete_latest(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        try:
            meta = self.secrets.describe(self.p, scope, name)
            if meta.latest_version:
                self.secrets.delete(self.p, scope, name, [meta.latest_version])
        except SecretNotFound:
            pass
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        return Response(status_code=204)

    def _existing(self, scope: Scope, name: str, versions: list[int]) -> list[int]:
        found = self._history_or_none(scope, name)
        if found is None:
            return versions
        have = {v.version for v in found[1]}
        return [v for v in versions if v in have]

    def delete_versions(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        versions = _versions(body)
        try:
            versions = self._existing(scope, name, versions)
            if versions:
                self.secrets.delete(self.p, scope, name, versions)
        except SecretNotFound:
            pass
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        return Response(status_code=204)

    def undelete(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        versions = _versions(body)
        try:
            meta = self.secrets.describe(self.p, scope, name)
            if meta.deleted_at is not None:
                self.secrets.undelete(self.p, scope, name, None)
            versions = self._existing(scope, name, versions)
            if versions:
                self.secrets.undelete(self.p, scope, name, versions)
        except SecretNotFound:
            pass
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        return Response(status_code=204)

    def destroy(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        versions = _versions(body)
        try:
            versions = self._existing(scope, name, versions)
            if versions:
                self.secrets.destroy(self.p, scope, name, versions)
        except SecretNotFound:
            pass
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        return Response(status_code=204)

    def subkeys(self, path: str, body: dict[str, Any]) -> Response:
        resp = self.read(path, body)
        data = json.loads(bytes(resp.body))["data"]

        def strip(d: Any) -> Any:
            return {k: strip(v) if isinstance(v, dict) else None for k, v in d.items()}

        return self.ok({"subkeys": strip(data["data"]), "metadata": data["metadata"]})

    # -- metadata ----------------------------------------------------------------------------------------
    def metadata_read(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        try:
            meta = self.secrets.describe(self.p, scope, name)
            hist = self.secrets.history(self.p, scope, name)
        except (SecretNotFound, ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        nums = [v.version for v in hist]
        return self.ok(
            {
                "cas_required": meta.cas_required,
                "created_time": _ts(meta.created_at),
                "current_version": meta.latest_version,
                "custom_metadata": meta.custom_metadata or None,
                "delete_version_after": "0s",
                "max_versions": meta.max_versions,
                "oldest_version": min(nums) if nums and min(nums) > 1 else 0,
                "updated_time": _ts(meta.updated_at),
                "versions": {
                    str(v.version): {
                        k: x
                        for k, x in self._version_meta(v, meta).items()
                        if k not in ("version", "custom_metadata")
                    }
                    for v in hist
                },
            }
        )

    def _metadata_fields(self, body: dict[str, Any], merge_into: dict[str, str] | None) -> dict[str, Any]:
        unknown = set(body) - {"max_versions", "cas_required", "delete_version_after", "custom_metadata"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
        md: dict[str, Any] = {}
        if body.get("max_versions") is not None:
            mv = body["max_versions"]
            if not isinstance(mv, int) or isinstance(mv, bool) or mv < 0:
                raise InvalidInput("max_versions must be a non-negative integer")
            md["max_versions"] = mv
        if body.get("cas_required") is not None:
            if not isinstance(body["cas_required"], bool):
                raise InvalidInput("cas_required must be true or false")
            md["cas_required"] = body["cas_required"]
        if parse_duration(body.get("delete_version_after"), "delete_version_after"):
            raise InvalidInput("delete_version_after is not supported by keybroker (only 0s)")
        if "custom_metadata" in body:
            cm = body["custom_metadata"]
            if cm is None:
                cm = {}
            if not isinstance(cm, dict):
                raise InvalidInput("custom_metadata must map strings to strings")
            if merge_into is not None:
                merged = dict(merge_into)
                for k, v in cm.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                cm = merged
            if len(cm) > 64 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 512
                for k, v in cm.items()
            ):
                raise InvalidInput(
                    "custom_metadata: at most 64 string keys (128 chars) and string values (512)"
                )
            md["custom_metadata"] = cm
        return md

    def metadata_write(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        md = self._metadata_fields(body, None)
        try:
            self.secrets.update_metadata(self.p, scope, name, **md)
        except (SecretNotFound, ProjectNotFound, EnvironmentNotFound) as exc:
            raise _VaultAnswer(
                JSONResponse(
                    {
                        "errors": [
                            f"{exc.message}: keybroker keeps metadata only for secrets that have a version"
                        ]
                    },
                    status_code=404,
                )
            ) from exc
        return Response(status_code=204)

    def metadata_patch(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        try:
            meta = self.secrets.describe(self.p, scope, name)
        except (SecretNotFound, ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        md = self._metadata_fields(body, meta.custom_metadata)
        self.secrets.update_metadata(self.p, scope, name, **md)
        return Response(status_code=204)

    def metadata_delete(self, path: str, body: dict[str, Any]) -> Response:
        scope, name = self.split(path)
        try:
            self.secrets.purge(self.p, scope, name)
        except SecretNotFound:
            pass
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        return Response(status_code=204)

    def list(self, path: str, body: dict[str, Any]) -> Response:
        path = path.strip("/")
        if not path:
            if not self.kb.authorizer.can_see_project(self.p, self.org, self.project):
                raise PermissionDenied("permission denied")
            proj = _visible_project(self.kb, self.p, self.project)
            if proj is None or not proj["environments"]:
                raise _not_found()
            return self.ok({"keys": [f"{e}/" for e in proj["environments"]]})
        env, _, prefix = path.partition("/")
        check_scope_name("environment", env)
        scope = Scope(self.project, env, self.org)
        if prefix:
            prefix += "/"
        try:
            metas = self.secrets.list_secrets(self.p, scope, prefix=prefix, include_deleted=True)
        except (ProjectNotFound, EnvironmentNotFound):
            raise _not_found() from None
        keys: dict[str, None] = {}
        for m in metas:
            if not self.kb.authorizer.allows(self.p, "list", scope, m.name):
                continue
            rest = m.name[len(prefix) :]
            head, sep, _ = rest.partition("/")
            keys[head + sep] = None
        if not keys:
            raise _not_found()
        return self.ok({"keys": sorted(keys)})


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out
