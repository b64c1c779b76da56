"""Access decisions, in one place. Every core service asks :class:`Authorizer` before acting.

Deny by default: a principal that is not the local vault owner gets nothing until a policy
grants it. (The server's RBAC plugs in here as another Authorizer.)
"""

from __future__ import annotations

from typing import Protocol

from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.errors import PermissionDenied

__all__ = ["ACTIONS", "Authorizer", "LocalOwnerAuthorizer"]

#: read = value; use = inject/proxy without seeing it; list = names and metadata;
#: write = create/update/rotate/delete; admin = destroy, rekey, audit, identities.
ACTIONS = ("read", "use", "list", "write", "admin")


class Authorizer(Protocol):
    def authorize(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> None:
        """Return if allowed; raise :class:`PermissionDenied` otherwise."""


class LocalOwnerAuthorizer:
    """The embedded vault's owner (who holds the root key) may do everything; nobody else."""

    def authorize(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> None:
        if principal.local:
            return
        raise PermissionDenied(f"{principal.label} may not {action} here")
