"""REST API v1 for agent access: tools, access requests, sessions, proxy tokens; and the gateway
mounted at ``/gw``.

Wiring (one call in ``create_app``, before the Vault KV catch-all)::

    _access_api.install(app, kb)   # services in kb.extras["agent_access"], router, gateway at /gw

Routes (every one calls the core services; access rules live in core):

=======  ==========================================================  ===============================
method   path                                                        who
=======  ==========================================================  ===============================
GET      /v1/agents/{agent}/tools                                    org admins; the agent itself
PUT      /v1/agents/{agent}/tools/{tool}                             org admins (register/replace)
GET      /v1/agents/{agent}/tools/{tool}                             org admins; the agent itself
DELETE   /v1/agents/{agent}/tools/{tool}                             org admins (ends its sessions)
POST     /v1/agents/{agent}/revoke                                   org admins (disables the agent,
                                                                     ends every session at once)
POST     /v1/access-requests                                         an agent, for one of its tools
GET      /v1/access-requests[?status=]                               requester; admins of the secrets
GET      /v1/access-requests/{id}                                    requester; admins of the secrets
POST     /v1/access-requests/{id}/approve  {duration_s?, comment?}   people with admin on the secrets
POST     /v1/access-requests/{id}/deny     {reason}                  people with admin on the secrets
POST     /v1/access-requests/{id}/cancel                             the requester
POST     /v1/sessions  {project, environment, names, ttl_s?}         people/services with ``use``
GET      /v1/sessions[?all=true]                                     own; admins of the secrets
GET      /v1/sessions/{id}                                           own; admins of the secrets
DELETE   /v1/sessions/{id}[?reason=]                                 own; admins of the secrets
POST     /v1/sessions/{id}/tokens  {project, environment, name, ...}  the session's principal
GET      /v1/sessions/{id}/tokens                                    own; admins of the secrets
DELETE   /v1/proxy-tokens/{id}                                       own; admins of the secrets
POST     /v1/proxy-env  {project, environment, names, ttl_s?}        ``keybroker run`` for
                                                                     proxy-only secrets
POST     /v1/incident-rotate/{project}/{env}/{name}  {value}         ``write``: new value now,
                                                                     every session on it ends
POST     /v1/access/cleanup                                          org admins
=======  ==========================================================  ===============================

Proxy tokens are returned once, with the SDK base URL to use (``base_url``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from keybroker.core import Principal, Scope, SecretService
from keybroker.core._access_requests import (
    AccessPolicy,
    AccessRequestService,
    MemoryNotifier,
    Notifier,
    WebhookNotifier,
)
from keybroker.core._agents import ToolRegistry
from keybroker.core._proxy_tokens import ProxyTokenService
from keybroker.core._sessions import SYSTEM_PRINCIPAL, Budget, SessionService, principal_org
from keybroker.errors import InvalidInput, PermissionDenied
from keybroker.gateway._app import Gateway
from keybroker.gateway._settings import GatewaySettings
from keybroker.server._auth import Caller, Kb
from keybroker.server._errors import ERROR_RESPONSES
from keybroker.server._params import EnvP, IdentityP, NameP, ProjectP

__all__ = ["RESERVED", "AccessServices", "CleanupJob", "install", "router"]

log = logging.getLogger("keybroker.access")

#: first path segments under /v1 this API uses (none may be a KV mount)
RESERVED = frozenset(
    {"agents", "access-requests", "sessions", "proxy-tokens", "proxy-env", "incident-rotate", "access"}
)

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, tags=["agent access"])


# ---------------------------------------------------------------------------- services
class CleanupJob:
    """Removes expired sessions and proxy tokens and expires unanswered requests, every
    ``interval`` seconds, in a thread of its own."""

    def __init__(self, sessions: SessionService, requests: AccessRequestService, interval: float) -> None:
        self.sessions = sessions
        self.requests = requests
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> dict[str, int]:
        counts = self.sessions.cleanup(SYSTEM_PRINCIPAL)
        counts["requests_expired"] = self.requests.expire_pending()
        return counts

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # keep running: the next round may succeed
                log.exception("access clean-up failed")

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kb-access-cleanup", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


@dataclass
class AccessServices:
    sessions: SessionService
    tokens: ProxyTokenService
    tools: ToolRegistry
    requests: AccessRequestService
    gateway: Gateway
    cleanup: CleanupJob
    gateway_url: str | None = None
    closers: list[Any] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        secrets: SecretService,
        settings: GatewaySettings | None = None,
        *,
        notifier: Notifier | None = None,
    ) -> AccessServices:
        s = settings or GatewaySettings()
        sessions = SessionService(secrets)
        tokens = ProxyTokenService(sessions)
        tools = ToolRegistry(sessions)
        closers: list[Any] = []
        if notifier is None:
            if s.webhook_url:
                if s.webhook_secret is None:
                    raise InvalidInput("KEYBROKER_GATEWAY_WEBHOOK_URL needs KEYBROKER_GATEWAY_WEBHOOK_SECRET")
                hook = WebhookNotifier(s.webhook_url, s.webhook_secret.get_secret_value())
                closers.append(hook.close)
                notifier = hook
            else:
                notifier = MemoryNotifier()
        requests = AccessRequestService(
            tools, notifier=notifier, policy=AccessPolicy(pending_ttl_s=s.pending_ttl_s)
        )
        gateway = Gateway(tokens, config=s.config())
        return cls(
            sessions,
            tokens,
            tools,
            requests,
            gateway,
            CleanupJob(sessions, requests, s.cleanup_s),
            s.url,
            closers,
        )


def install(
    app: FastAPI,
    kb: Any,
    *,
    include_router: bool = True,
    settings: GatewaySettings | None = None,
    notifier: Notifier | None = None,
) -> AccessServices:
    """Build the agent-access services over the server's secret service, include the router
    (call this before the KV catch-all is included), mount the gateway at ``/gw``, and start and
    stop the clean-up job and the gateway with the app."""
    acc = AccessServices.build(kb.secrets, settings, notifier=notifier)
    kb.extras["agent_access"] = acc
    # the same service objects under the names the MCP extension shares (one set of services, so
    # a revocation through either front end reaches the gateway's caches at once)
    for key, value in (
        ("sessions", acc.sessions),
        ("tools", acc.tools),
        ("access", acc.requests),
        ("proxy_tokens", acc.tokens),
    ):
        kb.extras.setdefault(key, value)
    if include_router:
        app.include_router(router)
    app.mount("/gw", acc.gateway)
    app.state.on_startup.append(acc.cleanup.start)
    app.state.on_shutdown.append(acc.cleanup.stop)
    app.state.on_shutdown.extend(acc.closers)
    # a mounted app hears no lifespan events: close the gateway's client inside the app's own
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with outer(a) as state:
            try:
                yield state
            finally:
                await acc.gateway.aclose()

    app.router.lifespan_context = lifespan
    return acc


def access(request: Request) -> AccessServices:
    acc = request.app.state.kb.extras.get("agent_access")
    if not isinstance(acc, AccessServices):
        raise RuntimeError("agent access is not installed in this app")
    return acc


Acc = Annotated[AccessServices, Depends(access)]


def gateway_url(request: Request, acc: AccessServices) -> str:
    return acc.gateway_url or str(request.base_url).rstrip("/") + "/gw"


def _org(p: Principal) -> str:
    return principal_org(p)


# ---------------------------------------------------------------------------- bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class BudgetBody(_Body):
    max_requests: int | None = Field(None, ge=1, le=2**62)
    max_rpm: int | None = Field(None, ge=1, le=10**9)
    max_tokens: int | None = Field(None, ge=1, le=2**62)

    def budget(self) -> Budget:
        return Budget(self.max_requests, self.max_rpm, self.max_tokens)


class ToolBody(_Body):
    name: str | None = Field(None, max_length=128)
    description: str = Field("", max_length=2000)
    allowed_secrets: list[Annotated[str, Field(max_length=300)]] = Field(default_factory=list, max_length=200)
    environments: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=50)
    max_risk: str = Field("low", pattern="^(low|medium|high)$")
    max_session_s: int = Field(3600, ge=1)
    budget: BudgetBody | None = None


class SecretRef(_Body):
    project: str = Field(max_length=63)
    environment: str = Field(max_length=63)
    name: str = Field(max_length=256)


class RequestBody(_Body):
    tool: str = Field(max_length=64)
    secrets: list[SecretRef | Annotated[str, Field(max_length=400)]] = Field(min_length=1, max_length=50)
    justification: str = Field(max_length=4000)
    duration_s: int = Field(ge=1)
    context: dict[str, Any] = Field(default_factory=dict)


class ApproveBody(_Body):
    duration_s: int | None = Field(None, ge=1)
    comment: str = Field("", max_length=2000)


class DenyBody(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class UseSessionBody(_Body):
    project: str = Field(max_length=63)
    environment: str = Field(max_length=63)
    names: list[Annotated[str, Field(max_length=256)]] = Field(min_length=1, max_length=50)
    ttl_s: int = Field(900, ge=1)
    budget: BudgetBody | None = None


class TokenBody(_Body):
    project: str = Field(max_length=63)
    environment: str = Field(max_length=63)
    name: str = Field(max_length=256)
    ttl_s: int | None = Field(None, ge=1)
    budget: BudgetBody | None = None


class ValueBody(_Body):
    value: str = Field(max_length=1024 * 1024, repr=False)


# ---------------------------------------------------------------------------- tools, agents
@router.get("/agents/{agent}/tools", summary="An agent's tools")
def list_tools(
    agent: IdentityP, acc: Acc, p: Caller, include_revoked: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    return {"tools": [t.to_dict() for t in acc.tools.list_tools(p, agent, include_revoked=include_revoked)]}


@router.put("/agents/{agent}/tools/{tool}", summary="Register (or replace) a tool and its policy")
def put_tool(agent: IdentityP, tool: str, body: ToolBody, acc: Acc, p: Caller) -> dict[str, Any]:
    info = acc.tools.register(
        p,
        agent,
        tool,
        name=body.name,
        description=body.description,
        allowed_secrets=body.allowed_secrets,
        environments=body.environments,
        max_risk=body.max_risk,
        max_session_s=body.max_session_s,
        budget=body.budget.budget() if body.budget else None,
    )
    return {"tool": info.to_dict()}


@router.get("/agents/{agent}/tools/{tool}", summary="One tool")
def get_tool(agent: IdentityP, tool: str, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"tool": acc.tools.get(p, agent, tool).to_dict()}


@router.delete("/agents/{agent}/tools/{tool}", summary="Revoke a tool; its sessions end at once")
def revoke_tool(agent: IdentityP, tool: str, acc: Acc, p: Caller) -> dict[str, Any]:
    info, rev = acc.tools.revoke(p, agent, tool)
    return {"tool": info.to_dict(), "ended_sessions": list(rev.session_ids)}


@router.post("/agents/{agent}/revoke", summary="Revoke an agent: disable it, end every session at once")
def revoke_agent(agent: IdentityP, acc: Acc, kb: Kb, p: Caller) -> dict[str, Any]:
    rev = acc.tools.revoke_agent(p, agent)
    tokens = kb.identities.disable(p, agent)
    return {"ended_sessions": list(rev.session_ids), "tokens_revoked": tokens}


# ---------------------------------------------------------------------------- access requests
@router.post("/access-requests", status_code=201, summary="Ask for secrets (an agent, for one of its tools)")
def create_request(body: RequestBody, acc: Acc, p: Caller) -> dict[str, Any]:
    secrets = [s if isinstance(s, str) else s.model_dump() for s in body.secrets]
    req = acc.requests.request(
        p,
        body.tool,
        secrets,
        justification=body.justification,
        duration_s=body.duration_s,
        context=body.context,
    )
    return {"request": req.to_dict()}


@router.get("/access-requests", summary="Access requests the caller may see, newest first")
def list_requests(
    acc: Acc,
    p: Caller,
    status: Annotated[str | None, Query(pattern="^(pending|approved|denied|expired|cancelled)$")] = None,
) -> dict[str, Any]:
    return {"requests": [r.to_dict() for r in acc.requests.list_requests(p, status=status)]}


@router.get("/access-requests/{request_id}", summary="One access request")
def get_request(request_id: str, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"request": acc.requests.get(p, request_id).to_dict()}


@router.post("/access-requests/{request_id}/approve", summary="Approve (optionally shortening the duration)")
def approve_request(request_id: str, body: ApproveBody, acc: Acc, p: Caller) -> dict[str, Any]:
    return {
        "request": acc.requests.approve(
            p, request_id, duration_s=body.duration_s, comment=body.comment
        ).to_dict()
    }


@router.post("/access-requests/{request_id}/deny", summary="Deny, with a reason")
def deny_request(request_id: str, body: DenyBody, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"request": acc.requests.deny(p, request_id, reason=body.reason).to_dict()}


@router.post("/access-requests/{request_id}/cancel", summary="Withdraw a pending request (its requester)")
def cancel_request(request_id: str, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"request": acc.requests.cancel(p, request_id).to_dict()}


# ---------------------------------------------------------------------------- sessions, tokens
@router.post("/sessions", status_code=201, summary="A use-only session (people and services)")
def open_session(body: UseSessionBody, acc: Acc, p: Caller) -> dict[str, Any]:
    scope = Scope(body.project, body.environment, _org(p))
    info = acc.sessions.open_use_session(
        p, scope, body.names, ttl_s=body.ttl_s, budget=body.budget.budget() if body.budget else None
    )
    return {"session": info.to_dict(acc.sessions.clock.now())}


@router.get("/sessions", summary="Sessions the caller may see (live ones unless all=true)")
def list_sessions(acc: Acc, p: Caller, all: Annotated[bool, Query()] = False) -> dict[str, Any]:
    now = acc.sessions.clock.now()
    return {"sessions": [s.to_dict(now) for s in acc.sessions.list_sessions(p, active_only=not all)]}


@router.get("/sessions/{session_id}", summary="One session")
def get_session(session_id: str, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"session": acc.sessions.get(p, session_id).to_dict(acc.sessions.clock.now())}


@router.delete("/sessions/{session_id}", summary="End a session now (its tokens stop at once)")
def revoke_session(
    session_id: str, acc: Acc, p: Caller, reason: Annotated[str, Query(max_length=256)] = "revoked by hand"
) -> dict[str, Any]:
    return {"session": acc.sessions.revoke(p, session_id, reason).to_dict(acc.sessions.clock.now())}


@router.post(
    "/sessions/{session_id}/tokens", status_code=201, summary="A proxy token for one secret (shown once)"
)
def issue_token(session_id: str, body: TokenBody, request: Request, acc: Acc, p: Caller) -> dict[str, Any]:
    scope = Scope(body.project, body.environment, _org(p))
    issued = acc.tokens.issue(
        p,
        session_id,
        scope,
        body.name,
        ttl_s=body.ttl_s,
        budget=body.budget.budget() if body.budget else None,
    )
    return {"proxy_token": issued.to_dict(gateway_url(request, acc))}


@router.get("/sessions/{session_id}/tokens", summary="A session's proxy tokens (never the tokens themselves)")
def list_tokens(session_id: str, acc: Acc, p: Caller) -> dict[str, Any]:
    return {"proxy_tokens": acc.tokens.list_tokens(p, session_id)}


@router.delete("/proxy-tokens/{token_id}", status_code=204, summary="Revoke one proxy token")
def revoke_token(token_id: str, acc: Acc, p: Caller) -> None:
    acc.tokens.revoke(p, token_id)


@router.post("/proxy-env", status_code=201, summary="Environment for `keybroker run` with proxy-only secrets")
def proxy_env(body: UseSessionBody, request: Request, acc: Acc, p: Caller) -> dict[str, Any]:
    scope = Scope(body.project, body.environment, _org(p))
    pe = acc.tokens.proxy_env(
        p,
        scope,
        body.names,
        gateway_url=gateway_url(request, acc),
        ttl_s=body.ttl_s,
        budget=body.budget.budget() if body.budget else None,
    )
    return {
        "tokens": {k: v.reveal() for k, v in pe.tokens.items()},
        "env": pe.extra,
        "session": pe.session.to_dict(acc.sessions.clock.now()),
    }


@router.post(
    "/incident-rotate/{project}/{env}/{name:path}", summary="Rotate under an incident: sessions end now"
)
def incident_rotate(
    project: ProjectP, env: EnvP, name: NameP, body: ValueBody, acc: Acc, p: Caller
) -> dict[str, Any]:
    meta, rev = acc.sessions.incident_rotate(p, Scope(project, env, _org(p)), name, body.value)
    return {"metadata": meta.to_dict(), "ended_sessions": list(rev.session_ids)}


@router.post("/access/cleanup", summary="Remove expired sessions and tokens, expire old requests, now")
def cleanup(acc: Acc, p: Caller, kb: Kb) -> dict[str, int]:
    if p.kind == "agent":
        raise PermissionDenied("agents may not run the clean-up")
    kb.secrets.authorizer.authorize(p, "admin", None, None)
    return acc.cleanup.run_once()
