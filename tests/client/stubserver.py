"""A small stand-in for ``keybroker serve``: the docs/http-api.md endpoints the SDK uses, over the
real core services, with the real ``/v1/events`` router mounted. Tokens map to fixed
principals; the authorizer is deliberately simple (org wall + project/environment allow-lists).
The SDK and stream tests run against it; the real server's own tests cover its RBAC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from keybroker.core import EventBus, Principal, Scope, SecretService
from keybroker.errors import AuthenticationError, KeybrokerError, PermissionDenied
from keybroker.server._events import events_router


@dataclass(frozen=True)
class Grant:
    org: str
    projects: frozenset[str] | None = None  # None: all
    environments: frozenset[str] | None = None


TOKENS = {
    "all": "kbt_stubdefaultall000000000000",
    "app": "kbt_stubdefaultapp000000000000",
    "dev": "kbt_stubdefaultdev000000000000",
    "acme": "kbt_stubacme000000000000000000",
}
_GRANTS = {
    TOKENS["all"]: ("alice", Grant("default")),
    TOKENS["app"]: ("bob", Grant("default", frozenset({"app"}))),
    TOKENS["dev"]: ("carol", Grant("default", frozenset({"app"}), frozenset({"dev"}))),
    TOKENS["acme"]: ("mallory", Grant("acme")),
}


class StubAuthorizer:
    def allows(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> bool:
        if principal.local:
            return True
        token = principal.attrs.get("token", "")
        if token not in _GRANTS:
            return False
        g = _GRANTS[token][1]
        if scope is None:
            return g.projects is None and g.environments is None
        if scope.org != g.org:
            return False
        if g.projects is not None and scope.project not in g.projects:
            return False
        return g.environments is None or scope.environment in g.environments

    def authorize(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> None:
        if not self.allows(principal, action, scope, name):
            raise PermissionDenied(f"{principal.label} may not {action} here")


def principal(request: Request) -> Principal:
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else ""
    if token not in _GRANTS:
        raise AuthenticationError("a valid token is required")
    who, g = _GRANTS[token]
    return Principal(id=who, kind="user", client="http", attrs={"org": g.org, "token": token})


def build_app(secrets: SecretService, bus: EventBus, *, keepalive: float = 0.5) -> FastAPI:
    authz = StubAuthorizer()
    secrets.authorizer = authz
    app = FastAPI()

    @app.exception_handler(KeybrokerError)
    async def _err(request: Request, exc: KeybrokerError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status)

    def scope(who: Principal, project: str, env: str) -> Scope:
        return Scope(project, env, who.attrs["org"])

    @app.get("/v1/sys/health")
    def health() -> dict[str, Any]:
        return {"initialized": True, "sealed": secrets.vault.sealed, "store": secrets.store.dialect}

    @app.get("/v1/secrets/{project}/{env}/{name:path}")
    def get(
        project: str,
        env: str,
        name: str,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
        who: Principal = Depends(principal),
    ) -> dict[str, Any]:
        r = secrets.get(who, scope(who, project, env), name, version=version, label=label, resolve=resolve)
        return {"name": r.name, "version": r.version, "value": r.value.reveal(), "metadata": r.meta.to_dict()}

    @app.put("/v1/secrets/{project}/{env}/{name:path}")
    def put(
        project: str,
        env: str,
        name: str,
        body: dict[str, Any] = Body(...),
        who: Principal = Depends(principal),
    ) -> dict[str, Any]:
        body = dict(body)
        value, cas = body.pop("value"), body.pop("cas", None)
        meta = secrets.put(who, scope(who, project, env), name, value, cas=cas, **body)
        return {"metadata": meta.to_dict()}

    @app.delete("/v1/secrets/{project}/{env}/{name:path}")
    def delete(
        project: str, env: str, name: str, versions: str | None = None, who: Principal = Depends(principal)
    ) -> Response:
        vs = [int(v) for v in versions.split(",")] if versions else None
        secrets.delete(who, scope(who, project, env), name, vs)
        return Response(status_code=204)

    @app.get("/v1/secrets/{project}/{env}")
    def list_(
        project: str, env: str, prefix: str = "", who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        return {
            "secrets": [
                m.to_dict() for m in secrets.list_secrets(who, scope(who, project, env), prefix=prefix)
            ]
        }

    @app.post("/v1/batch/read")
    def batch(body: dict[str, Any] = Body(...), who: Principal = Depends(principal)) -> dict[str, Any]:
        sc = scope(who, body["project"], body["environment"])
        out: dict[str, Any] = {"secrets": {}, "errors": {}}
        for n in body["names"]:
            try:
                r = secrets.get(who, sc, n)
                out["secrets"][n] = {"version": r.version, "value": r.value.reveal()}
            except KeybrokerError as exc:
                out["errors"][n] = {"code": exc.code, "message": exc.message}
        return out

    @app.post("/v1/rotate/{project}/{env}/{name:path}")
    def rotate(
        project: str,
        env: str,
        name: str,
        body: dict[str, Any] = Body(...),
        who: Principal = Depends(principal),
    ) -> dict[str, Any]:
        return {"metadata": secrets.rotate(who, scope(who, project, env), name, body["value"]).to_dict()}

    @app.post("/v1/promote/{project}/{env}/{name:path}")
    def promote(project: str, env: str, name: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"metadata": secrets.promote(who, scope(who, project, env), name).to_dict()}

    app.include_router(
        events_router(principal=principal, bus=lambda r: bus, authorizer=lambda r: authz, keepalive=keepalive)
    )
    return app
