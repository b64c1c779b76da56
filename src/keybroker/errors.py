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
    │   └── UnsealFailed            401 unseal_failed
    ├── PermissionDenied            403 permission_denied
    ├── NotFound                    404 not_found
    │   ├── SecretNotFound          404 secret_not_found
    │   ├── VersionNotFound         404 version_not_found
    │   ├── ProjectNotFound         404 project_not_found
    │   └── EnvironmentNotFound     404 environment_not_found
    ├── Conflict                    409 conflict
    │   ├── CasMismatch             409 cas_mismatch
    │   ├── AlreadyExists           409 already_exists
    │   ├── AlreadyInitialized      409 already_initialized
    │   └── SecretDeleted           409 secret_deleted   (exists, but soft-deleted/destroyed)
    ├── DecryptionError             500 decryption_failed  (one error for every failed decryption)
    ├── VaultSealed                 503 vault_sealed
    ├── NotInitialized              503 not_initialized
    ├── AuditUnavailable            503 audit_unavailable  (fail closed: no value returned)
    └── StoreError                  503 store_unavailable
        ├── StoreLocked             503 store_locked
        └── StoreFull               507 store_full
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "AlreadyInitialized",
    "AuditUnavailable",
    "AuthenticationError",
    "CasMismatch",
    "Conflict",
    "DecryptionError",
    "EnvironmentNotFound",
    "InvalidInput",
    "InvalidName",
    "InvalidReference",
    "KeybrokerError",
    "NotFound",
    "NotInitialized",
    "ParseError",
    "PermissionDenied",
    "ProjectNotFound",
    "ReferenceCycle",
    "ReferenceMissing",
    "SecretDeleted",
    "SecretNotFound",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "UnsealFailed",
    "VaultSealed",
    "VersionNotFound",
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


def from_code(code: str, message: str = "", **details: Any) -> KeybrokerError:
    """Rebuild the error class named by a wire ``code`` (unknown codes give ``KeybrokerError``)."""
    cls = KeybrokerError._registry.get(code, KeybrokerError)
    err = cls(message, **details)
    return err
