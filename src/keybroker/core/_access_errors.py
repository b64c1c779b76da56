"""Errors of agent access: tools, access requests, sessions, proxy tokens and the gateway.

They extend the tree in :mod:`keybroker.errors` (and belong there; they live here until that file
gains them, as :mod:`keybroker.core._tokens` does with ``RateLimited``)::

    AuthenticationError           401
    ├── ProxyTokenInvalid         401 proxy_token_invalid   (malformed, bad checksum, unknown)
    ├── ProxyTokenExpired         401 proxy_token_expired   (token or its session ran out)
    └── ProxyTokenRevoked         401 proxy_token_revoked   (token revoked or its session ended)
    PermissionDenied              403
    ├── WrongUpstream             403 wrong_upstream        (token used toward another host)
    ├── NotAllowedForTool         403 not_allowed_for_tool  (outside the tool's allow-list)
    ├── SelfApproval              403 self_approval         (nobody approves their own request)
    ├── AgentCannotApprove        403 agent_cannot_approve
    └── ProxyOnly                 403 proxy_only            (value never revealed; use the gateway)
    NotFound                      404
    ├── ToolNotFound              404 tool_not_found
    ├── AccessRequestNotFound     404 access_request_not_found
    └── SessionNotFound           404 session_not_found
    Conflict                      409
    ├── RequestNotPending         409 request_not_pending   (already decided or expired)
    └── SessionEnded              409 session_ended
    BudgetExhausted               429 budget_exhausted      (requests, per-minute or token budget)
    UpstreamUnavailable           502 upstream_unavailable
    UpstreamTimeout               504 upstream_timeout
"""

from __future__ import annotations

from keybroker.errors import AuthenticationError, Conflict, KeybrokerError, NotFound, PermissionDenied

__all__ = [
    "AccessRequestNotFound",
    "AgentCannotApprove",
    "BudgetExhausted",
    "NotAllowedForTool",
    "ProxyOnly",
    "ProxyTokenExpired",
    "ProxyTokenInvalid",
    "ProxyTokenRevoked",
    "RequestNotPending",
    "SelfApproval",
    "SessionEnded",
    "SessionNotFound",
    "ToolNotFound",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WrongUpstream",
]


class ProxyTokenInvalid(AuthenticationError):
    code = "proxy_token_invalid"


class ProxyTokenExpired(AuthenticationError):
    code = "proxy_token_expired"


class ProxyTokenRevoked(AuthenticationError):
    code = "proxy_token_revoked"


class WrongUpstream(PermissionDenied):
    code = "wrong_upstream"


class NotAllowedForTool(PermissionDenied):
    code = "not_allowed_for_tool"


class SelfApproval(PermissionDenied):
    code = "self_approval"


class AgentCannotApprove(PermissionDenied):
    code = "agent_cannot_approve"


class ProxyOnly(PermissionDenied):
    code = "proxy_only"


class ToolNotFound(NotFound):
    code = "tool_not_found"


class AccessRequestNotFound(NotFound):
    code = "access_request_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class RequestNotPending(Conflict):
    code = "request_not_pending"


class SessionEnded(Conflict):
    code = "session_ended"


class BudgetExhausted(KeybrokerError):
    """A proxy token's budget is spent; ``details.budget`` names which (requests, rpm, tokens) and
    ``details.retry_after`` (seconds) is set when waiting helps (the per-minute budget)."""

    code = "budget_exhausted"
    status = 429


class UpstreamUnavailable(KeybrokerError):
    code = "upstream_unavailable"
    status = 502


class UpstreamTimeout(KeybrokerError):
    code = "upstream_timeout"
    status = 504
