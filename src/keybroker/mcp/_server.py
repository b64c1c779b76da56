"""The keybroker MCP server: tools over core services, for one agent identity per call.

Guarantees, and where they come from:

* **No value crosses MCP.** No tool reads a value: they list metadata, file access requests, read
  states and issue proxy tokens, none of which decrypts anything (the server does not even need
  the vault unsealed). The one exception, ``reveal_secret``, exists only when the operator listed
  exact low-risk refs in the server's own settings at start-up; no argument can add a ref, raise
  a risk limit or create the tool.
* **Fixed tools.** The tool list and every description are built once, from constants, when the
  server starts (:mod:`keybroker.mcp._tools`); stored text (secret descriptions, justifications)
  only ever appears inside results, as data.
* **Justifications are data.** They go to core verbatim (stored, sent to approvers, shown in the
  elicitation inside a quoted block) and nothing reads them for meaning. Results never echo them.
* **People decide.** Core refuses an agent's approval (``agent_cannot_approve``) and a
  requester's (``self_approval``). Elicitation lets the person at the client *keep or withdraw*
  the request, never approve it: an elicitation answer comes back through the agent's own
  client, so it carries no more authority than the agent itself.
* **Limits and audit.** Calls are rate-limited per agent (and access requests more tightly, with
  a cap on pending ones); every call is audited with the MCP client's name and version (from the
  ``initialize`` request's ``clientInfo``), and the core records it causes carry them too.
* **Errors** are MCP tool errors (``isError``) whose content is
  ``{"error": {"code", "message", "details"?}}`` with the same stable codes as the REST API;
  messages never quote what the client sent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

import keybroker
from keybroker.core import Principal, Scope
from keybroker.core._access_errors import RequestNotPending, SessionEnded
from keybroker.core._access_requests import AccessRequestInfo
from keybroker.core._rbac import AuthPrincipal
from keybroker.core._sessions import SESSION_ATTR, SessionInfo, principal_identity, principal_org
from keybroker.core._tokens import RateLimited, RateLimiter
from keybroker.errors import (
    AuditUnavailable,
    AuthenticationError,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    StoreLocked,
)
from keybroker.mcp._auth import AgentLogin
from keybroker.mcp._catalog import agent_tools, requestable
from keybroker.mcp._howto import env_for, how_to
from keybroker.mcp._services import AgentServices
from keybroker.mcp._settings import McpSettings, parse_ref
from keybroker.mcp._tools import ToolSpec, UnknownTool, tool_definitions

__all__ = ["INSTRUCTIONS", "PRINCIPAL_SCOPE_KEY", "KeybrokerMCP", "RevealNotAllowed", "TooManyPending"]

log = logging.getLogger("keybroker.mcp")

#: where the HTTP transport's auth middleware leaves the authenticated principal in the ASGI scope
PRINCIPAL_SCOPE_KEY = "keybroker.principal"

INSTRUCTIONS = (
    "keybroker keeps API keys away from you. To call a provider: list_secrets to see what you may "
    "ask for; request_access with the secrets, a short honest justification and a duration; if the "
    "request is pending, access_status with wait_s to wait for a person's decision; then "
    "get_proxy_credentials for the session and secret, and use the returned base URL and proxy "
    "token in the provider's SDK. revoke_access when done. You never receive secret values."
)

_NGRAM = 8
#: a lock failure faster than this was a deadlock or a lost race, not a long wait: worth a retry
_QUICK_LOCK_FAILURE_S = 2.0
T = TypeVar("T")


class TooManyPending(RateLimited):
    """The agent already has ``max_pending`` requests waiting for people."""

    code = "too_many_pending"


class RevealNotAllowed(PermissionDenied):
    """``reveal_secret`` for a secret the operator did not allow, or that is not low-risk."""

    code = "reveal_not_allowed"


# ---------------------------------------------------------------------------- helpers
def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _clean(text: Any, limit: int = 64) -> str:
    s = "".join(ch for ch in str(text) if ch.isprintable() and ch not in "\"'\\")
    return s[:limit] or "unknown"


def _strings(obj: Any, out: list[str], depth: int = 0) -> None:
    if depth > 20:
        return
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _strings(k, out, depth + 1)
            _strings(v, out, depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _strings(v, out, depth + 1)


def input_ngrams(arguments: Any) -> frozenset[str]:
    """Every 8-character window of every string the client sent (for :func:`unquote`)."""
    found: list[str] = []
    _strings(arguments, found)
    grams: set[str] = set()
    for s in found:
        if len(s) >= _NGRAM:
            grams.update(s[i : i + _NGRAM] for i in range(len(s) - _NGRAM + 1))
    return frozenset(grams)


def unquote(text: str, grams: frozenset[str]) -> str:
    """``text`` with every stretch it shares with the client's input replaced by ``[…]``, so an
    error message never hands back what was sent (whatever it was)."""
    if not grams or len(text) < _NGRAM:
        return text
    mark = [False] * len(text)
    for i in range(len(text) - _NGRAM + 1):
        if text[i : i + _NGRAM] in grams:
            for j in range(i, i + _NGRAM):
                mark[j] = True
    if not any(mark):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if mark[i]:
            while i < len(text) and mark[i]:
                i += 1
            out.append("[…]")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _unquote_obj(obj: Any, grams: frozenset[str]) -> Any:
    if isinstance(obj, str):
        return unquote(obj, grams)
    if isinstance(obj, Mapping):
        return {str(k): _unquote_obj(v, grams) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_unquote_obj(v, grams) for v in obj]
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    return unquote(str(obj), grams)


def _result(body: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    text = json.dumps(body, ensure_ascii=False, default=str)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=json.loads(text),
        is_error=error,
    )


def error_result(
    code: str, message: str, details: Mapping[str, Any] | None, grams: frozenset[str]
) -> types.CallToolResult:
    err: dict[str, Any] = {"code": code, "message": unquote(message, grams)}
    if details:
        err["details"] = _unquote_obj(dict(details), grams)
    return _result({"error": err}, error=True)


def _ref(project: str, environment: str, name: str) -> str:
    return f"{project}/{environment}/{name}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    tool: str
    transport: str
    client_name: str
    client_version: str
    request_id: str

    @property
    def client_label(self) -> str:
        return f"mcp:{self.transport}:{self.client_name}/{self.client_version}"[:128]


# ---------------------------------------------------------------------------- the server
class KeybrokerMCP:
    """One MCP server. ``login`` gives the agent principal for stdio; over HTTP the transport's
    auth middleware leaves it in the request scope (:data:`PRINCIPAL_SCOPE_KEY`)."""

    def __init__(
        self,
        services: AgentServices,
        settings: McpSettings | None = None,
        *,
        transport: str = "stdio",
        login: AgentLogin | None = None,
    ) -> None:
        self.services = services
        self.settings = settings or McpSettings()
        self.transport = transport
        self.login = login
        self.specs: tuple[ToolSpec, ...] = tool_definitions(reveal=bool(self.settings.reveal))
        self._by_name = {s.name: s for s in self.specs}
        # fixed once: every tools/list answers with copies of exactly these
        self._wire_tools: tuple[types.Tool, ...] = tuple(s.definition() for s in self.specs)
        self._handlers: dict[str, Callable[..., Any]] = {
            "list_secrets": self._list_secrets,
            "request_access": self._request_access,
            "access_status": self._access_status,
            "get_proxy_credentials": self._get_proxy_credentials,
            "list_sessions": self._list_sessions,
            "revoke_access": self._revoke_access,
            "reveal_secret": self._reveal_secret,
        }
        s = self.settings
        clock = services.clock
        self._calls = RateLimiter(clock, s.rate, s.burst)
        self._requests = RateLimiter(clock, s.request_rate_per_min / 60.0, s.request_burst)
        self.server: Server[Any] = Server(
            "keybroker",
            version=keybroker.__version__,
            title="keybroker",
            description=(
                "Ask for API keys with a reason and use them through keybroker's gateway, never seeing them."
            ),
            instructions=INSTRUCTIONS,
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
        )

    # ------------------------------------------------------------------ MCP handlers
    def tools(self) -> list[types.Tool]:
        """The tool definitions (copies of those fixed at start-up)."""
        return [t.model_copy(deep=True) for t in self._wire_tools]

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools())

    def _call_of(self, ctx: ServerRequestContext[Any], tool: str) -> _Call:
        name, version = "unknown", "unknown"
        cp = ctx.session.client_params
        if cp is not None and cp.client_info is not None:
            name, version = _clean(cp.client_info.name), _clean(cp.client_info.version, 32)
        return _Call(tool[:64], self.transport, name, version, uuid.uuid4().hex)

    async def _principal(self, ctx: ServerRequestContext[Any], call: _Call) -> AuthPrincipal:
        scope = getattr(ctx.request, "scope", None)
        p: AuthPrincipal
        if isinstance(scope, dict) and PRINCIPAL_SCOPE_KEY in scope:
            found = scope[PRINCIPAL_SCOPE_KEY]
            if not isinstance(found, AuthPrincipal):
                raise AuthenticationError("no authenticated agent on this request")
            p = found
        elif self.login is not None:
            p = await anyio.to_thread.run_sync(self.login.principal, call.request_id)
        else:
            raise AuthenticationError("no authenticated agent on this request")
        return dataclasses.replace(p, client=call.client_label, request_id=call.request_id)

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        call = self._call_of(ctx, params.name)
        grams = input_ngrams(params.arguments)
        principal: AuthPrincipal | None = None
        try:
            principal = await self._principal(ctx, call)
            # every call counts, the malformed ones too
            self._calls.check(f"mcp:{principal_identity(principal) or principal.id}")
            spec = self._by_name.get(params.name)
            if spec is None:
                raise UnknownTool(f"no such tool; this server offers {', '.join(self._by_name)}")
            args = spec.validate(params.arguments)
            body, detail = await self._handlers[spec.name](ctx, principal, call, args)
            await self._audit(principal, call, "ok", detail)
            return _result(body)
        except KeybrokerError as exc:
            if principal is not None and not isinstance(exc, AuditUnavailable):
                await self._audit(principal, call, f"error:{exc.code}", {}, fail_closed=False)
            return error_result(exc.code, exc.message, exc.details, grams)
        except Exception as exc:  # noqa: BLE001 - the one boundary: nothing unexpected leaks out
            log.error("MCP tool %s failed unexpectedly: %s", call.tool, type(exc).__name__)
            if principal is not None:
                await self._audit(principal, call, "error:internal_error", {}, fail_closed=False)
            return error_result(
                "internal_error", "keybroker hit an unexpected error; see its log", None, grams
            )

    async def _audit(
        self, p: Principal, call: _Call, result: str, detail: dict[str, Any], *, fail_closed: bool = True
    ) -> None:
        record = {
            "tool": call.tool,
            "transport": call.transport,
            "client": {"name": call.client_name, "version": call.client_version},
            **detail,
        }
        target = f"{principal_org(p)}/_mcp/{call.tool}"
        try:
            await self._sync(
                lambda: self.services.audit.record(p, "mcp.call", target, result=result, detail=record)
            )
        except KeybrokerError as exc:
            if fail_closed:
                raise AuditUnavailable("the call could not be audited, so its result is withheld") from exc
            log.warning("could not audit a failed MCP call (%s)", exc.code)

    @staticmethod
    async def _sync(fn: Callable[[], T]) -> T:
        """Run a (blocking) core call in a worker thread. A transaction that lost a lock race
        quickly (a PostgreSQL deadlock, aborted and rolled back) is tried again, twice."""
        for attempt in range(3):
            started = time.monotonic()
            try:
                return await anyio.to_thread.run_sync(fn)
            except StoreLocked:
                if attempt == 2 or time.monotonic() - started > _QUICK_LOCK_FAILURE_S:
                    raise
                await anyio.sleep(0.05 * (attempt + 1) + random.random() * 0.05)  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ views
    def _request_view(self, info: AccessRequestInfo) -> dict[str, Any]:
        refs = [_ref(s["project"], s["environment"], s["name"]) for s in info.secrets]
        out: dict[str, Any] = {
            "request_id": info.id,
            "state": info.status,
            "tool": info.tool_id,
            "secrets": refs,
            "duration_s": info.duration_s,
            "required_approvals": info.required_approvals,
            "approvals": len(info.approvals),
            "created_at": _iso(info.created_at),
        }
        if info.status == "pending":
            wait = int(self.settings.max_wait_s)
            out["decide_by"] = _iso(info.expires_at)
            out["next"] = (
                "A person must approve this request; approvers have been notified. Call "
                f"access_status with this request_id and wait_s (up to {wait}) to wait for the decision."
            )
        elif info.status == "approved":
            out.update(session_id=info.session_id, granted_duration_s=info.granted_duration_s)
            out["decided_at"] = _iso(info.decided_at)
            out["next"] = "Call get_proxy_credentials with this session_id and one of the secrets."
        else:
            out["decided_at"] = _iso(info.decided_at)
            out["reason"] = info.reason
            out["next"] = {
                "denied": "A person denied this request (see reason). Ask again only with new information.",
                "expired": "Nobody decided in time. You may ask again if you still need it.",
                "cancelled": "The request was withdrawn.",
            }.get(info.status, "")
        return out

    def _session_view(self, info: SessionInfo) -> dict[str, Any]:
        state = info.state(self.services.clock.now())
        out: dict[str, Any] = {
            "session_id": info.id,
            "state": state,
            "secrets": [_ref(p, e, n) for p, e, n in info.secrets],
            "request_id": info.request_id,
            "tool": info.tool_id,
            "created_at": _iso(info.created_at),
            "expires_at": _iso(info.expires_at),
        }
        if info.ended_at is not None:
            out.update(ended_at=_iso(info.ended_at), end_reason=info.end_reason)
        if state == "active":
            out["next"] = "Call get_proxy_credentials with this session_id and one of its secrets."
        return out

    # ------------------------------------------------------------------ tools
    async def _list_secrets(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        def run() -> dict[str, Any]:
            tools = agent_tools(self.services, p)
            entries = requestable(
                self.services, p, tools, project=args.get("project"), environment=args.get("environment")
            )
            body: dict[str, Any] = {
                "secrets": [e.to_dict() for e in entries],
                "tools": [
                    {
                        "tool": t.tool_id,
                        "name": t.name,
                        "description": t.description,
                        "environments": list(t.environments),
                        "max_risk": t.max_risk,
                        "max_session_s": t.max_session_s,
                    }
                    for t in tools
                ],
            }
            if not tools:
                body["next"] = (
                    "This agent has no registered tool, so it may ask for nothing. Ask the "
                    "operator to register a tool for it with the secrets it needs."
                )
            else:
                body["next"] = (
                    "Call request_access with the secrets you need, a justification and a duration."
                )
            return body

        body = await self._sync(run)
        return body, {"count": len(body["secrets"])}

    def _pick_tool(self, p: AuthPrincipal, wanted: str | None) -> str:
        if wanted is not None:
            return wanted
        tools = agent_tools(self.services, p)
        if len(tools) == 1:
            return tools[0].tool_id
        if not tools:
            from keybroker.core._access_errors import ToolNotFound

            raise ToolNotFound("this agent has no registered tool, so it may ask for nothing")
        raise InvalidInput(
            f"this agent has {len(tools)} tools: say which one asks with the 'tool' argument "
            f"({', '.join(t.tool_id for t in tools)})"
        )

    async def _request_access(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        refs = [parse_ref(r) for r in args["secrets"]]
        key = principal_identity(p) or p.id

        def create() -> AccessRequestInfo:
            tool_id = self._pick_tool(p, args.get("tool"))
            pending = self.services.access.list_requests(
                p, status="pending", limit=self.settings.max_pending + 1
            )
            if len(pending) >= self.settings.max_pending:
                raise TooManyPending(
                    f"you already have {len(pending)} pending requests: wait for decisions "
                    "(access_status) or withdraw some (revoke_access)"
                )
            self._requests.check(f"mcp-req:{key}")
            return self.services.access.request(
                p,
                tool_id,
                [_ref(*r) for r in refs],
                justification=args["justification"],
                duration_s=args["duration_s"],
                context=args.get("context"),
            )

        info = await self._sync(create)
        confirmation = "not_needed"
        if info.status == "pending":
            confirmation = await self._elicit(ctx, p, call, info)
            if confirmation == "withdrawn":
                info = await self._sync(lambda: self.services.access.get(p, info.id))
        body = self._request_view(info)
        body["user_confirmation"] = confirmation
        return body, {"request": info.id, "state": info.status, "user_confirmation": confirmation}

    async def _access_status(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if "session_id" in args:
            sinfo = await self._sync(lambda: self.services.sessions.get(p, args["session_id"]))
            return {"kind": "session", **self._session_view(sinfo)}, {"session": sinfo.id}
        rid = args["request_id"]
        wait = min(float(args.get("wait_s", 0)), self.settings.max_wait_s)
        deadline = time.monotonic() + wait
        info = await self._sync(lambda: self.services.access.get(p, rid))
        while info.status == "pending":
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await anyio.sleep(min(self.settings.poll_interval_s, left))
            info = await self._sync(lambda: self.services.access.get(p, rid))
        body = {"kind": "request", **self._request_view(info)}
        if info.status == "approved" and info.session_id:
            sid = info.session_id
            sinfo = await self._sync(lambda: self.services.sessions.get(p, sid))
            body["session"] = self._session_view(sinfo)
        return body, {"request": info.id, "state": info.status, "waited": wait > 0}

    async def _get_proxy_credentials(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        project, env, name = parse_ref(args["secret"])
        scope = Scope(project, env, principal_org(p))
        ttl = int(args.get("ttl_s", self.settings.proxy_token_ttl_s))
        issued = await self._sync(
            lambda: self.services.proxies.issue(p, args["session_id"], scope, name, ttl_s=ttl)
        )
        token = issued.token.reveal()
        base = issued.base_url(self.settings.gateway_url)
        body = {
            "secret": _ref(project, env, name),
            "session_id": issued.session_id,
            "provider": issued.route,
            "base_url": base,
            "api_key": token,
            "proxy_token_id": issued.id,
            "expires_at": _iso(issued.expires_at),
            "hosts": list(issued.hosts),
            "budget": issued.budget.to_dict(),
            "env": env_for(issued.route, base, token),
            "how_to": how_to(issued.route, base, token, issued.hosts),
        }
        return body, {"session": issued.session_id, "proxy_token": issued.id, "secret": scope.path(name)}

    async def _list_sessions(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        active_only = not args.get("include_ended", False)
        infos = await self._sync(lambda: self.services.sessions.list_sessions(p, active_only=active_only))
        return {"sessions": [self._session_view(i) for i in infos]}, {"count": len(infos)}

    async def _revoke_access(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        reason = "ended by the agent (MCP)"
        if "session_id" in args:
            sid = args["session_id"]
            sinfo = await self._sync(lambda: self.services.sessions.revoke(p, sid, reason))
            return {"kind": "session", **self._session_view(sinfo)}, {"session": sinfo.id}
        rid = args["request_id"]

        def run() -> dict[str, Any]:
            info = self.services.access.get(p, rid)
            if info.status == "pending":
                info = self.services.access.cancel(p, rid)
                return {"kind": "request", **self._request_view(info)}
            if info.status == "approved" and info.session_id:
                try:
                    sinfo = self.services.sessions.revoke(p, info.session_id, reason)
                except SessionEnded:
                    sinfo = self.services.sessions.get(p, info.session_id)
                return {"kind": "request", **self._request_view(info), "session": self._session_view(sinfo)}
            raise RequestNotPending(f"the request is {info.status}: there is nothing to withdraw")

        body = await self._sync(run)
        return body, {"request": rid}

    async def _reveal_secret(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        ref = args["secret"]
        project, env, name = parse_ref(ref)
        org = principal_org(p)
        scope = Scope(project, env, org)
        if _ref(project, env, name) not in self.settings.reveal:
            raise RevealNotAllowed("this secret may not be revealed through MCP: use get_proxy_credentials")
        sid = args["session_id"]

        def run() -> str:
            session = self.services.sessions.get(p, sid)
            if session.state(self.services.clock.now()) != "active":
                raise SessionEnded("the session is not active")
            if not session.covers(scope, name):
                raise PermissionDenied("the session does not hold this secret")
            acting = Principal(
                id=p.id,
                kind=p.kind,
                client=p.client,
                request_id=p.request_id,
                attrs={SESSION_ATTR: session.id, "org": org, "identity_id": principal_identity(p) or ""},
            )
            # metadata first, so a refused secret is never decrypted
            reader = Principal(id=f"mcp-catalog/{p.id}"[:200], kind="service", client=p.client, local=True)
            meta = self.services.secrets.describe(reader, scope, name)
            if meta.risk != "low" or meta.proxy_only:
                raise RevealNotAllowed("only low-risk secrets that are not proxy-only may be revealed")
            read = self.services.session_secrets().get(
                acting, scope, name, permission="use", action="secret.reveal.mcp"
            )
            if read.meta.risk != "low" or read.meta.proxy_only:
                raise RevealNotAllowed("only low-risk secrets that are not proxy-only may be revealed")
            return read.value.reveal()

        value = await self._sync(run)
        return {"secret": _ref(project, env, name), "value": value, "session_id": sid}, {
            "secret": scope.path(name),
            "session": sid,
        }

    # ------------------------------------------------------------------ elicitation
    def _elicitation_message(self, p: AuthPrincipal, info: AccessRequestInfo) -> str:
        lines = [f"keybroker: the agent {p.id} asks for access (request {info.id}).", "", "Secrets:"]
        for s in info.secrets:
            lines.append(f"  - {_ref(s['project'], s['environment'], s['name'])} (risk {s.get('risk', '?')})")
        lines += [
            f"For: {info.duration_s} seconds, through its tool {info.tool_id}.",
            "",
            "The agent's justification, verbatim and unverified:",
            '"""',
            info.justification,
            '"""',
            "",
            f"This request needs {info.required_approvals} approval(s) from people with rights on these "
            "secrets, who have been notified; they approve with `keybroker access approve "
            f"{info.id}`. Nothing is approved here. Keep the request for them, or withdraw it now?",
        ]
        return "\n".join(lines)

    async def _elicit(
        self, ctx: ServerRequestContext[Any], p: AuthPrincipal, call: _Call, info: AccessRequestInfo
    ) -> str:
        """Ask the person at the client to keep or withdraw a pending request. Returns confirmed,
        withdrawn, dismissed, no_answer, not_supported, not_asked, unavailable or too_late."""
        if not self.settings.elicitation:
            return "not_asked"
        caps = ctx.session.client_capabilities
        el = caps.elicitation if caps is not None else None
        if el is None or (el.form is None and el.url is not None) or not ctx.session.can_send_request:
            return "not_supported"
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "keep": {
                    "type": "boolean",
                    "title": "Keep this request for the approvers",
                    "description": "Yes: it waits for a person with rights to decide. No: withdraw it now.",
                    "default": True,
                }
            },
            "required": ["keep"],
        }
        outcome = "unavailable"
        try:
            with anyio.fail_after(self.settings.elicitation_timeout_s):
                answer = await ctx.session.elicit_form(
                    self._elicitation_message(p, info), schema, related_request_id=ctx.request_id
                )
            if answer.action == "accept":
                keep = (answer.content or {}).get("keep", True)
                outcome = "withdrawn" if keep is False else "confirmed"
            elif answer.action == "decline":
                outcome = "withdrawn"
            else:
                outcome = "dismissed"
        except TimeoutError:
            outcome = "no_answer"
        except Exception as exc:  # noqa: BLE001 - a client that cannot answer leaves the request as it is
            log.info("elicitation failed (%s); the request stays pending", type(exc).__name__)
            outcome = "unavailable"
        if outcome == "withdrawn":
            try:
                await self._sync(lambda: self.services.access.cancel(p, info.id))
            except RequestNotPending:
                outcome = "too_late"
        target = f"{info.org}/_access/{info.id}"
        detail = {"client": {"name": call.client_name, "version": call.client_version}}
        try:
            await self._sync(
                lambda: self.services.audit.record(
                    p, "mcp.elicitation", target, result=outcome, detail=detail
                )
            )
        except KeybrokerError as exc:
            log.warning("could not audit an elicitation (%s)", exc.code)
        return outcome
