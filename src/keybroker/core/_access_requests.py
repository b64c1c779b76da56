"""Access requests: an agent asks for secrets with a reason; a policy or people decide.

Policy (one place, :meth:`AccessRequestService._decide`):

* every secret must be on the tool's allow-list (globs and environments) or the request is
  refused outright (``not_allowed_for_tool``): deny by default;
* auto-approve when every secret's risk is within the tool's ``max_risk``, the duration within
  its ``max_session_s``, and no secret is ``high`` risk (high-risk keys always go to people);
* otherwise the request waits for people. A request holding a high-risk secret needs
  ``high_risk_approvals`` (default two) *distinct* approvers;
* nobody approves their own request, an agent never approves or denies anything, an approver may
  shorten the duration (never lengthen it), and a request nobody answers expires after
  ``pending_ttl_s``.

An approved request opens a session (:mod:`keybroker.core._sessions`). Approvers hear of new
and decided requests through a :class:`Notifier`; :class:`WebhookNotifier` POSTs JSON signed
with HMAC-SHA256 (``X-Keybroker-Signature: sha256=<hex>`` over the raw body, as GitHub does).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets as _random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from keybroker.core._access_errors import (
    AccessRequestNotFound,
    AgentCannotApprove,
    NotAllowedForTool,
    RequestNotPending,
    SelfApproval,
)
from keybroker.core._agents import ToolInfo, ToolRegistry, risk_rank
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.core._sessions import SYSTEM_PRINCIPAL, principal_identity, principal_org
from keybroker.crypto import SecretValue
from keybroker.errors import AlreadyExists, InvalidInput, KeybrokerError
from keybroker.store import tables

if TYPE_CHECKING:  # httpx is imported when a webhook is first configured, not with core
    import httpx

__all__ = [
    "REQUEST_STATES",
    "AccessPolicy",
    "AccessRequestInfo",
    "AccessRequestService",
    "MemoryNotifier",
    "Notifier",
    "WebhookNotifier",
    "sign_webhook",
    "verify_webhook",
]

log = logging.getLogger("keybroker.access")

REQUEST_STATES = ("pending", "approved", "denied", "expired", "cancelled")
_MAX_JUSTIFICATION = 4000
_MAX_CONTEXT = 8192
_MAX_SECRETS = 50


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


# ---------------------------------------------------------------------------- notifications
class Notifier(Protocol):
    """Tells approvers about access requests. Must not raise and should not block for long."""

    def notify(self, event: str, payload: dict[str, Any]) -> None: ...


class MemoryNotifier:
    """Keeps what it was told (tests, and a server without a webhook)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))


def sign_webhook(secret: bytes, body: bytes) -> str:
    """The ``X-Keybroker-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_webhook(secret: bytes, body: bytes, signature: str) -> bool:
    """Constant-time check of a received webhook (for receivers written in Python)."""
    return hmac.compare_digest(sign_webhook(secret, body), signature or "")


class WebhookNotifier:
    """POSTs each notification as JSON to ``url`` from a background thread, signed with
    HMAC-SHA256 under ``secret``. Retries with back-off; failures are logged (by host only: a
    webhook URL such as Slack's holds a credential in its path) and never reach the caller."""

    def __init__(
        self,
        url: str,
        secret: SecretValue | str | bytes,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        if not url.startswith(("https://", "http://")):
            raise InvalidInput("the webhook URL must be http(s)")
        raw = secret.reveal_bytes() if isinstance(secret, SecretValue) else secret
        self._secret = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(self._secret) < 16:
            raise InvalidInput("the webhook signing secret must be at least 16 bytes")
        self._url = url
        self._host = httpx.URL(url).host
        self._timeout = timeout
        self._retries = retries
        self._transport = transport
        self._queue: queue.Queue[tuple[str, bytes, str] | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self._host!r}, secret=[secret])"

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        delivery = uuid.uuid4().hex
        body = json.dumps(
            {"id": delivery, "event": event, "ts": time.time(), **payload},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        ).encode()
        try:
            self._queue.put_nowait((event, body, delivery))
        except queue.Full:
            self.failed += 1
            log.warning("webhook queue to %s is full; dropped a %s notification", self._host, event)
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kb-webhook", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued notification was delivered or given up on."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self.flush(timeout=self._timeout * (self._retries + 1))
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self._timeout, transport=self._transport) as client:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    self._deliver(client, *item)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, event: str, body: bytes, delivery: str) -> None:
        import httpx

        headers = {
            "Content-Type": "application/json",
            "User-Agent": "keybroker-webhook/1",
            "X-Keybroker-Event": event,
            "X-Keybroker-Delivery": delivery,
            "X-Keybroker-Signature": sign_webhook(self._secret, body),
        }
        for attempt in range(self._retries + 1):
            try:
                r = client.post(self._url, content=body, headers=headers)
                if r.status_code < 500 and r.status_code != 429:
                    if r.status_code >= 400:
                        log.warning(
                            "webhook to %s refused a %s notification: %s", self._host, event, r.status_code
                        )
                        self.failed += 1
                    else:
                        self.delivered += 1
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt < self._retries:
                time.sleep(min(2.0, 0.1 * 2**attempt))
        self.failed += 1
        log.warning("webhook to %s failed for a %s notification: %s", self._host, event, why)


# ---------------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class AccessPolicy:
    pending_ttl_s: int = 3600
    max_duration_s: int = 24 * 3600
    high_risk_approvals: int = 2
    auto_approve_high: bool = False


@dataclass(frozen=True, slots=True)
class AccessRequestInfo:
    id: str
    org: str
    agent_id: str
    tool_id: str
    requested_by: str
    principal_kind: str
    principal_id: str
    secrets: tuple[dict[str, str], ...]
    justification: str
    context: dict[str, Any]
    duration_s: int
    status: str
    policy: str
    required_approvals: int
    approvals: tuple[dict[str, Any], ...]
    granted_duration_s: int | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    session_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "agent_id": self.agent_id,
            "tool_id": self.tool_id,
            "requested_by": self.requested_by,
            "secrets": [dict(s) for s in self.secrets],
            "justification": self.justification,
            "context": dict(self.context),
            "duration_s": self.duration_s,
            "status": self.status,
            "policy": self.policy,
            "required_approvals": self.required_approvals,
            "approvals": [dict(a) for a in self.approvals],
            "granted_duration_s": self.granted_duration_s,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "decided_at": _iso(self.decided_at),
            "decided_by": self.decided_by,
            "reason": self.reason,
            "session_id": self.session_id,
        }


class AccessRequestService:
    """Create, decide and expire access requests; an approved one opens a session."""

    def __init__(
        self,
        tools: ToolRegistry,
        *,
        notifier: Notifier | None = None,
        policy: AccessPolicy | None = None,
    ) -> None:
        self.tools = tools
        self.sessions = tools.sessions
        self.secrets = tools.secrets
        self.store = tools.store
        self.audit = tools.audit
        self.clock = tools.clock
        self.notifier: Notifier = notifier or MemoryNotifier()
        self.policy = policy or AccessPolicy()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _secret_refs(secrets: Iterable[Any]) -> list[tuple[str, str, str]]:
        """Accept ``"project/env/NAME"`` strings or ``{"project","environment","name"}`` dicts."""
        out: list[tuple[str, str, str]] = []
        for s in secrets:
            if isinstance(s, str):
                parts = s.split("/", 2)
                if len(parts) != 3 or not all(parts):
                    raise InvalidInput(f"name secrets as project/environment/NAME, not {s[:60]!r}")
                out.append((parts[0], parts[1], parts[2]))
            elif isinstance(s, Mapping):
                try:
                    out.append((str(s["project"]), str(s["environment"]), str(s["name"])))
                except KeyError as exc:
                    raise InvalidInput("each secret needs project, environment and name") from exc
            else:
                raise InvalidInput("each secret is a project/environment/NAME string or an object")
        if not out:
            raise InvalidInput("ask for at least one secret")
        if len(out) > _MAX_SECRETS:
            raise InvalidInput(f"ask for at most {_MAX_SECRETS} secrets at once")
        return list(dict.fromkeys(out))

    def _decide(self, tool: ToolInfo, risks: Sequence[str], duration_s: int) -> tuple[bool, int, str]:
        """(auto-approve?, approvals needed, why). The whole approval policy."""
        high = "high" in risks
        required = max(1, self.policy.high_risk_approvals) if high else 1
        worst = max(risks, key=risk_rank)
        reasons = []
        if risk_rank(worst) > risk_rank(tool.max_risk):
            reasons.append(f"risk {worst} is over the tool's maximum {tool.max_risk}")
        if duration_s > tool.max_session_s:
            reasons.append(f"{duration_s}s is over the tool's maximum session of {tool.max_session_s}s")
        if high and not self.policy.auto_approve_high:
            reasons.append("high-risk secrets always need people")
        if reasons:
            return False, required, "pending: " + "; ".join(reasons)
        return True, 0, "auto-approved: within the tool's limits"

    def _row(self, conn: Connection, request_id: str, *, lock: bool = False) -> Row[Any]:
        ar = tables.access_requests
        q = sa.select(ar).where(ar.c.id == str(request_id)[:40])
        if lock:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise AccessRequestNotFound("no such access request")
        return row

    def _info(self, conn: Connection, row: Row[Any]) -> AccessRequestInfo:
        ap = tables.access_approvals
        approvals = conn.execute(
            sa.select(ap).where(ap.c.request_id == row.id).order_by(ap.c.created_at, ap.c.approver)
        ).all()
        status = row.status
        if status == "pending" and row.expires_at <= self.clock.now():
            status = "expired"
        return AccessRequestInfo(
            id=row.id,
            org=row.org,
            agent_id=row.agent_id,
            tool_id=row.tool_id,
            requested_by=row.requested_by,
            principal_kind=row.principal_kind,
            principal_id=row.principal_id,
            secrets=tuple(dict(s) for s in row.secrets),
            justification=row.justification,
            context=dict(row.context or {}),
            duration_s=int(row.duration_s),
            status=status,
            policy=row.policy,
            required_approvals=int(row.required_approvals),
            approvals=tuple(
                {
                    "approver": a.approver,
                    "duration_s": a.duration_s,
                    "comment": a.comment,
                    "created_at": _iso(a.created_at),
                }
                for a in approvals
            ),
            granted_duration_s=row.granted_duration_s,
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_at=row.decided_at,
            decided_by=row.decided_by,
            reason=row.reason,
            session_id=row.session_id,
        )

    def _notify(self, event: str, info: AccessRequestInfo) -> None:
        try:
            self.notifier.notify(event, {"request": info.to_dict()})
        except Exception:  # a notifier must never undo a decision
            log.exception("the access-request notifier failed")

    def _is_requester(self, principal: Principal, row: Row[Any]) -> bool:
        return (principal.kind == row.principal_kind and principal.id == row.principal_id) or (
            principal_identity(principal) is not None and principal_identity(principal) == row.agent_id
        )

    def _may_see(self, principal: Principal, row: Row[Any]) -> bool:
        if principal_org(principal) != row.org:
            return False
        if self._is_requester(principal, row):
            return True
        if principal.kind == "agent":
            return False
        try:
            for s in row.secrets:
                self.secrets.authorizer.authorize(
                    principal, "list", Scope(s["project"], s["environment"], row.org), s["name"]
                )
        except KeybrokerError:
            return False
        return True

    # ------------------------------------------------------------------ asking
    def request(
        self,
        principal: Principal,
        tool_id: str,
        secrets: Iterable[Any],
        *,
        justification: str,
        duration_s: int,
        context: Mapping[str, Any] | None = None,
    ) -> AccessRequestInfo:
        """An agent asks, for one of its tools. Returns the request, already ``approved`` (with
        its session) when the policy allows, else ``pending``. The justification is stored
        verbatim. Raises InvalidInput, ToolNotFound, NotAllowedForTool, SecretNotFound."""
        org = principal_org(principal)
        agent_id = principal_identity(principal) or principal.id
        refs = self._secret_refs(secrets)
        if not isinstance(justification, str) or not justification.strip():
            raise InvalidInput("say why: a justification is required")
        if len(justification) > _MAX_JUSTIFICATION:
            raise InvalidInput(f"the justification is limited to {_MAX_JUSTIFICATION} characters")
        if (
            not isinstance(duration_s, int)
            or isinstance(duration_s, bool)
            or not 0 < duration_s <= self.policy.max_duration_s
        ):
            raise InvalidInput(f"the duration must be 1..{self.policy.max_duration_s} seconds")
        ctx = dict(context or {})
        try:
            ctx_text = json.dumps(ctx, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("the context must be a JSON object") from exc
        if len(ctx_text) > _MAX_CONTEXT:
            raise InvalidInput(f"the context is limited to {_MAX_CONTEXT} bytes of JSON")
        now = self.clock.now()
        target = f"{org}/_access/{agent_id}/{tool_id}"
        with self.store.connect() as conn:
            try:
                tool = self.tools.active_tool(conn, org, agent_id, str(tool_id))
            except KeybrokerError as exc:
                self.audit.record(principal, "access.request", target, result=f"denied:{exc.code}")
                raise
            refused = [f"{p}/{e}/{n}" for p, e, n in refs if not tool.allows(p, e, n)]
            if refused:
                self.audit.record(
                    principal,
                    "access.request",
                    target,
                    result="denied:not_allowed_for_tool",
                    detail={"refused": refused},
                )
                raise NotAllowedForTool(
                    f"tool {tool.tool_id!r} may not ask for {', '.join(refused)}", refused=refused
                )
            risks = []
            listed = []
            for p, e, n in refs:
                row = self.secrets._secret_row(conn, Scope(p, e, org), n)
                risks.append(str(row.risk))
                listed.append({"project": p, "environment": e, "name": n, "risk": str(row.risk)})
        auto, required, why = self._decide(tool, risks, duration_s)
        rid = "req_" + _random.token_hex(10)
        ar = tables.access_requests
        with self.store.begin() as conn:
            conn.execute(
                sa.insert(ar).values(
                    id=rid,
                    org=org,
                    agent_id=agent_id,
                    tool_id=tool.tool_id,
                    requested_by=principal.label[:256],
                    principal_kind=principal.kind,
                    principal_id=principal.id,
                    secrets=listed,
                    justification=justification,
                    context=ctx,
                    duration_s=duration_s,
                    status="pending",
                    policy=why[:128],
                    required_approvals=max(required, 1),
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.policy.pending_ttl_s),
                )
            )
            self.audit.append(
                conn,
                principal,
                "access.request",
                f"{org}/_access/{rid}",
                detail={
                    "tool": tool.tool_id,
                    "secrets": [f"{s['project']}/{s['environment']}/{s['name']}" for s in listed],
                    "duration_s": duration_s,
                    "decision": "approved" if auto else "pending",
                    "policy": why,
                },
            )
            if auto:
                sid = self._open_session(conn, SYSTEM_PRINCIPAL, self._row(conn, rid), tool, duration_s)
                conn.execute(
                    sa.update(ar)
                    .where(ar.c.id == rid)
                    .values(
                        status="approved",
                        granted_duration_s=duration_s,
                        decided_at=now,
                        decided_by="policy",
                        session_id=sid,
                    )
                )
            info = self._info(conn, self._row(conn, rid))
        self._notify("access_request.approved" if auto else "access_request.pending", info)
        return info

    def _open_session(
        self, conn: Connection, principal: Principal, row: Row[Any], tool: ToolInfo, duration_s: int
    ) -> str:
        return self.sessions._open(
            conn,
            principal,
            org=row.org,
            principal_kind=row.principal_kind,
            principal_id=row.principal_id,
            identity_id=row.agent_id,
            agent_id=row.agent_id,
            tool_id=row.tool_id,
            request_id=row.id,
            secrets=[(s["project"], s["environment"], s["name"]) for s in row.secrets],
            expires_at=self.clock.now() + timedelta(seconds=duration_s),
            budget=tool.budget,
        )

    # ------------------------------------------------------------------ reading
    def get(self, principal: Principal, request_id: str) -> AccessRequestInfo:
        """Its requester and whoever may see all its secrets. Raises AccessRequestNotFound."""
        with self.store.connect() as conn:
            row = self._row(conn, request_id)
            if not self._may_see(principal, row):
                raise AccessRequestNotFound("no such access request")
            return self._info(conn, row)

    def list_requests(
        self, principal: Principal, *, status: str | None = None, limit: int = 200
    ) -> list[AccessRequestInfo]:
        """Newest first. ``status`` filters (``pending`` leaves out the ones that have expired)."""
        if status is not None and status not in REQUEST_STATES:
            raise InvalidInput(f"status is one of {', '.join(REQUEST_STATES)}")
        ar = tables.access_requests
        q = sa.select(ar).where(ar.c.org == principal_org(principal)).order_by(ar.c.created_at.desc())
        now = self.clock.now()
        if status == "pending":
            q = q.where(ar.c.status == "pending", ar.c.expires_at > now)
        elif status == "expired":
            q = q.where(
                sa.or_(ar.c.status == "expired", sa.and_(ar.c.status == "pending", ar.c.expires_at <= now))
            )
        elif status is not None:
            q = q.where(ar.c.status == status)
        if principal.kind == "agent":
            q = q.where(ar.c.principal_kind == principal.kind, ar.c.principal_id == principal.id)
        with self.store.connect() as conn:
            rows = conn.execute(q.limit(limit)).all()
            return [self._info(conn, r) for r in rows if self._may_see(principal, r)]

    # ------------------------------------------------------------------ deciding
    def _check_decider(self, principal: Principal, row: Row[Any], action: str) -> None:
        target = f"{row.org}/_access/{row.id}"
        if principal.kind == "agent":
            self.audit.record(principal, action, target, result="denied:agent_cannot_approve")
            raise AgentCannotApprove("an agent can never approve or deny access requests")
        if self._is_requester(principal, row):
            self.audit.record(principal, action, target, result="denied:self_approval")
            raise SelfApproval("nobody approves or denies their own request")
        if principal_org(principal) != row.org:
            raise AccessRequestNotFound("no such access request")
        for s in row.secrets:
            self.secrets._authorize(
                principal, "admin", Scope(s["project"], s["environment"], row.org), s["name"], action
            )

    def _expire_if_due(self, request_id: str) -> None:
        ar = tables.access_requests
        now = self.clock.now()
        info: AccessRequestInfo | None = None
        with self.store.begin() as conn:
            n = conn.execute(
                sa.update(ar)
                .where(ar.c.id == request_id, ar.c.status == "pending", ar.c.expires_at <= now)
                .values(
                    status="expired", decided_at=now, decided_by="policy", reason="nobody answered in time"
                )
            ).rowcount
            if n:
                info = self._info(conn, self._row(conn, request_id))
                self.audit.append(conn, SYSTEM_PRINCIPAL, "access.expire", f"{info.org}/_access/{request_id}")
        if info is not None:
            self._notify("access_request.expired", info)

    def approve(
        self, principal: Principal, request_id: str, *, duration_s: int | None = None, comment: str = ""
    ) -> AccessRequestInfo:
        """Add one approval. When enough distinct people approved, the session opens with the
        shortest duration any approver allowed. Raises AgentCannotApprove, SelfApproval,
        PermissionDenied, RequestNotPending, AlreadyExists (approved twice), InvalidInput."""
        with self.store.connect() as conn:
            row = self._row(conn, request_id)
        self._check_decider(principal, row, "access.approve")
        if duration_s is not None and (
            not isinstance(duration_s, int)
            or isinstance(duration_s, bool)
            or not 0 < duration_s <= row.duration_s
        ):
            raise InvalidInput(
                f"an approver may shorten the duration (1..{row.duration_s} s), not lengthen it"
            )
        self._expire_if_due(row.id)
        ar, ap = tables.access_requests, tables.access_approvals
        now = self.clock.now()
        event = "access_request.approval"
        with self.store.begin() as conn:
            row = self._row(conn, request_id, lock=True)
            if row.status != "pending":
                raise RequestNotPending(f"the request is {row.status}")
            if conn.execute(
                sa.select(ap.c.approver).where(
                    ap.c.request_id == row.id, ap.c.approver == principal.label[:256]
                )
            ).first():
                raise AlreadyExists("you have already approved this request; it needs another approver")
            conn.execute(
                sa.insert(ap).values(
                    request_id=row.id,
                    approver=principal.label[:256],
                    duration_s=duration_s,
                    comment=str(comment)[:2000],
                    created_at=now,
                )
            )
            approvals = conn.execute(sa.select(ap).where(ap.c.request_id == row.id)).all()
            self.audit.append(
                conn,
                principal,
                "access.approve",
                f"{row.org}/_access/{row.id}",
                detail={
                    "duration_s": duration_s,
                    "approvals": len(approvals),
                    "required": row.required_approvals,
                },
            )
            if len(approvals) >= row.required_approvals:
                granted = min([int(a.duration_s) for a in approvals if a.duration_s] + [int(row.duration_s)])
                tool = self.tools._get(conn, row.org, row.agent_id, row.tool_id)
                if tool.revoked_at is not None:
                    raise RequestNotPending("the tool was revoked while the request waited")
                sid = self._open_session(conn, principal, row, tool, granted)
                conn.execute(
                    sa.update(ar)
                    .where(ar.c.id == row.id)
                    .values(
                        status="approved",
                        granted_duration_s=granted,
                        decided_at=now,
                        decided_by=", ".join(sorted(a.approver for a in approvals))[:2000],
                        session_id=sid,
                    )
                )
                event = "access_request.approved"
            info = self._info(conn, self._row(conn, row.id))
        self._notify(event, info)
        return info

    def deny(self, principal: Principal, request_id: str, *, reason: str) -> AccessRequestInfo:
        """Refuse a pending request, with a reason the agent sees."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("say why: a reason is required to deny")
        with self.store.connect() as conn:
            row = self._row(conn, request_id)
        self._check_decider(principal, row, "access.deny")
        self._expire_if_due(row.id)
        ar = tables.access_requests
        now = self.clock.now()
        with self.store.begin() as conn:
            row = self._row(conn, request_id, lock=True)
            if row.status != "pending":
                raise RequestNotPending(f"the request is {row.status}")
            conn.execute(
                sa.update(ar)
                .where(ar.c.id == row.id)
                .values(
                    status="denied", decided_at=now, decided_by=principal.label[:256], reason=reason[:2000]
                )
            )
            self.audit.append(
                conn, principal, "access.deny", f"{row.org}/_access/{row.id}", detail={"reason": reason[:500]}
            )
            info = self._info(conn, self._row(conn, row.id))
        self._notify("access_request.denied", info)
        return info

    def cancel(self, principal: Principal, request_id: str) -> AccessRequestInfo:
        """The requester withdraws a pending request."""
        with self.store.connect() as conn:
            row = self._row(conn, request_id)
        if not self._is_requester(principal, row) or principal_org(principal) != row.org:
            raise AccessRequestNotFound("no such access request")
        ar = tables.access_requests
        with self.store.begin() as conn:
            row = self._row(conn, request_id, lock=True)
            if row.status != "pending":
                raise RequestNotPending(f"the request is {row.status}")
            conn.execute(
                sa.update(ar)
                .where(ar.c.id == row.id)
                .values(status="cancelled", decided_at=self.clock.now(), decided_by=principal.label[:256])
            )
            self.audit.append(conn, principal, "access.cancel", f"{row.org}/_access/{row.id}")
            return self._info(conn, self._row(conn, row.id))

    def expire_pending(self) -> int:
        """Mark every pending request past its deadline expired (the clean-up job). Returns how many."""
        ar = tables.access_requests
        now = self.clock.now()
        with self.store.connect() as conn:
            ids = [
                str(x)
                for x in conn.execute(
                    sa.select(ar.c.id).where(ar.c.status == "pending", ar.c.expires_at <= now)
                ).scalars()
            ]
        for rid in ids:
            self._expire_if_due(rid)
        return len(ids)
