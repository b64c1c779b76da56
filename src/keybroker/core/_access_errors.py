"""Errors of agent access: tools, access requests, sessions, proxy tokens and the gateway.

They live in :mod:`keybroker.errors` (the one tree); this module re-exports them for the
agent-access code::

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

from keybroker.errors import (
    AccessRequestNotFound,
    AgentCannotApprove,
    BudgetExhausted,
    NotAllowedForTool,
    ProxyOnly,
    ProxyTokenExpired,
    ProxyTokenInvalid,
    ProxyTokenRevoked,
    RequestNotPending,
    SelfApproval,
    SessionEnded,
    SessionNotFound,
    ToolNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
    WrongUpstream,
)

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
