"""The one exception tree of keybroker.

Every error carries a stable ``code`` (what tests, the CLI and the SDK match on) and an HTTP
``status`` (what the server answers). Messages are for people and never contain a secret value.
The SDK rebuilds the same class from the wire with :func:`from_code`.

::

    KeybrokerError
    ├── InvalidInput                400 invalid_input
    │   ├── InvalidName             400 invalid_name
    │   ├── InvalidReference        400 invalid_reference
    │   │   ├── ReferenceCycle      400 reference_cycle
    │   │   └── ReferenceMissing    400 reference_missing
    │   └── ParseError              400 parse_error
    ├── AuthenticationError         401 unauthenticated
    │   ├── UnsealFailed            401 unseal_failed
    │   ├── ProxyTokenInvalid       401 proxy_token_invalid   (malformed, bad checksum, unknown)
    │   ├── ProxyTokenExpired       401 proxy_token_expired   (token or its session ran out)
    │   └── ProxyTokenRevoked       401 proxy_token_revoked   (token revoked or its session ended)
    ├── PermissionDenied            403 permission_denied
    │   ├── TokenWidening           403 token_widening        (a child asked for more than its parent)
    │   ├── WrongUpstream           403 wrong_upstream        (proxy token used toward another host)
    │   ├── NotAllowedForTool       403 not_allowed_for_tool  (outside the tool's allow-list)
    │   ├── SelfApproval            403 self_approval         (nobody approves their own request)
    │   ├── AgentCannotApprove      403 agent_cannot_approve
    │   └── ProxyOnly               403 proxy_only            (value never revealed; use the gateway)
    ├── NotFound                    404 not_found
    │   ├── SecretNotFound          404 secret_not_found
    │   ├── VersionNotFound         404 version_not_found
    │   ├── ProjectNotFound         404 project_not_found
    │   ├── EnvironmentNotFound     404 environment_not_found
    │   ├── IdentityNotFound        404 identity_not_found
    │   ├── TokenNotFound           404 token_not_found
    │   ├── ToolNotFound            404 tool_not_found
    │   ├── AccessRequestNotFound   404 access_request_not_found
    │   └── SessionNotFound         404 session_not_found
    ├── Conflict                    409 conflict
    │   ├── CasMismatch             409 cas_mismatch
    │   ├── AlreadyExists           409 already_exists
    │   ├── AlreadyInitialized      409 already_initialized
    │   ├── SecretDeleted           409 secret_deleted   (exists, but soft-deleted/destroyed)
    │   ├── RequestNotPending       409 request_not_pending   (already decided or expired)
    │   └── SessionEnded            409 session_ended
    ├── RateLimited                 429 rate_limited     (details.retry_after)
    │   └── LoginLockedOut          429 login_locked_out
    ├── BudgetExhausted             429 budget_exhausted (requests, per-minute or token budget)
    ├── DecryptionError             500 decryption_failed  (one error for every failed decryption)
    ├── UpstreamUnavailable         502 upstream_unavailable
    ├── VaultSealed                 503 vault_sealed
    ├── NotInitialized              503 not_initialized
    ├── AuditUnavailable            503 audit_unavailable  (fail closed: no value returned)
    ├── ServerUnavailable           503 server_unavailable (SDK: server unreachable, nothing fresh cached)
    ├── UpstreamTimeout             504 upstream_timeout
    └── StoreError                  503 store_unavailable
        ├── StoreLocked             503 store_locked
        └── StoreFull               507 store_full
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccessRequestNotFound",
    "AgentCannotApprove",
    "AlreadyExists",
    "AlreadyInitialized",
    "AuditUnavailable",
    "AuthenticationError",
    "BudgetExhausted",
    "CasMismatch",
    "Conflict",
    "DecryptionError",
    "EnvironmentNotFound",
    "IdentityNotFound",
    "InvalidInput",
    "InvalidName",
    "InvalidReference",
    "KeybrokerError",
    "LoginLockedOut",
    "NotAllowedForTool",
    "NotFound",
    "NotInitialized",
    "ParseError",
    "PermissionDenied",
    "ProjectNotFound",
    "ProxyOnly",
    "ProxyTokenExpired",
    "ProxyTokenInvalid",
    "ProxyTokenRevoked",
    "RateLimited",
    "ReferenceCycle",
    "ReferenceMissing",
    "RequestNotPending",
    "SecretDeleted",
    "SecretNotFound",
    "SelfApproval",
    "ServerUnavailable",
    "SessionEnded",
    "SessionNotFound",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "TokenNotFound",
    "TokenWidening",
    "ToolNotFound",
    "UnsealFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "VaultSealed",
    "VersionNotFound",
    "WrongUpstream",
    "from_code",
]


class KeybrokerError(Exception):
    """Root of every keybroker error. ``code`` is stable; ``status`` is the HTTP status."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    _registry: ClassVar[dict[str, type[KeybrokerError]]] = {}

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        KeybrokerError._registry[cls.code] = cls

    def to_dict(self) -> dict[str, Any]:
        """Wire form: ``{"code": ..., "message": ..., "details": {...}}``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


KeybrokerError._registry["error"] = KeybrokerError


class InvalidInput(KeybrokerError):
    code = "invalid_input"
    status = 400


class InvalidName(InvalidInput):
    code = "invalid_name"


class InvalidReference(InvalidInput):
    code = "invalid_reference"


class ReferenceCycle(InvalidReference):
    code = "reference_cycle"


class ReferenceMissing(InvalidReference):
    code = "reference_missing"


class ParseError(InvalidInput):
    code = "parse_error"


class AuthenticationError(KeybrokerError):
    code = "unauthenticated"
    status = 401


class UnsealFailed(AuthenticationError):
    code = "unseal_failed"


class PermissionDenied(KeybrokerError):
    code = "permission_denied"
    status = 403


class NotFound(KeybrokerError):
    code = "not_found"
    status = 404


class SecretNotFound(NotFound):
    code = "secret_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class ProjectNotFound(NotFound):
    code = "project_not_found"


class EnvironmentNotFound(NotFound):
    code = "environment_not_found"


class Conflict(KeybrokerError):
    code = "conflict"
    status = 409


class CasMismatch(Conflict):
    code = "cas_mismatch"


class AlreadyExists(Conflict):
    code = "already_exists"


class AlreadyInitialized(Conflict):
    code = "already_initialized"


class SecretDeleted(Conflict):
    code = "secret_deleted"


class DecryptionError(KeybrokerError):
    """Raised for every failed decryption, whatever the cause, so failures are no oracle."""

    code = "decryption_failed"
    status = 500


class VaultSealed(KeybrokerError):
    code = "vault_sealed"
    status = 503


class NotInitialized(KeybrokerError):
    code = "not_initialized"
    status = 503


class AuditUnavailable(KeybrokerError):
    code = "audit_unavailable"
    status = 503


class StoreError(KeybrokerError):
    code = "store_unavailable"
    status = 503


class StoreLocked(StoreError):
    code = "store_locked"


class StoreFull(StoreError):
    code = "store_full"
    status = 507


class ProxyTokenInvalid(AuthenticationError):
    code = "proxy_token_invalid"


class ProxyTokenExpired(AuthenticationError):
    code = "proxy_token_expired"


class ProxyTokenRevoked(AuthenticationError):
    code = "proxy_token_revoked"


class TokenWidening(PermissionDenied):
    """A child token asked for more than its parent has (scope, lifetime, uses or addresses)."""

    code = "token_widening"


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


class IdentityNotFound(NotFound):
    code = "identity_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


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


class RateLimited(KeybrokerError):
    """Too many requests from one token or address; ``details.retry_after`` says when to retry."""

    code = "rate_limited"
    status = 429


class LoginLockedOut(RateLimited):
    """Too many failed logins: the client id or address is locked out for a while (back-off)."""

    code = "login_locked_out"


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


class ServerUnavailable(KeybrokerError):
    """The keybroker server could not be reached (connection refused, timeout, TLS failure), or
    it was unreachable and no last known value young enough to serve was cached."""

    code = "server_unavailable"
    status = 503


def from_code(code: str, message: str = "", **details: Any) -> KeybrokerError:
    """Rebuild the error class named by a wire ``code`` (unknown codes give ``KeybrokerError``)."""
    cls = KeybrokerError._registry.get(code, KeybrokerError)
    err = cls(message, **details)
    return err
