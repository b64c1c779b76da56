"""keybroker's own vault as a key store: a :class:`SecretService`, a principal and a scope.

Access checks, audit and change events all happen inside the service, so a migration into or
out of keybroker is audited like any other read or write, under the principal given here.
"""

from __future__ import annotations

from keybroker.backends._base import (
    LABELS,
    Names,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    as_secret,
    check_label,
)
from keybroker.core import Principal, Scope, SecretService
from keybroker.crypto import SecretValue
from keybroker.errors import VersionNotFound

__all__ = ["NativeStore"]


def _int_version(name: str, version: str) -> int:
    try:
        n = int(version)
    except ValueError:
        raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
    if n < 1:
        raise VersionNotFound(f"secret {name!r} has no version {version!r}")
    return n


class NativeStore:
    """One keybroker environment (``org/project/env``) seen through the KeyStore protocol.

    ``resolve``: expand ``${OTHER}`` references on read (what an application wants; the default).
    Versions map one to one; labels are keybroker's own."""

    kind = "keybroker"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current", "pending"}))

    def __init__(
        self, service: SecretService, principal: Principal, scope: Scope, *, resolve: bool = True
    ) -> None:
        self.service = service
        self.principal = principal
        self.scope = scope
        self.resolve = resolve

    def __repr__(self) -> str:
        return f"NativeStore({self.location()!r})"

    def location(self) -> str:
        s = self.scope
        org = "" if s.org == "default" else f"?org={s.org}"
        return f"keybroker://{s.project}/{s.environment}{org}"

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        if version is not None:
            read = self.service.get(
                self.principal, self.scope, name, version=_int_version(name, version), resolve=self.resolve
            )
        else:
            read = self.service.get(
                self.principal, self.scope, name, label=check_label(label), resolve=self.resolve
            )
        return read.value

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        lab = check_label(label, ("current", "pending"))
        if lab == "pending":  # rotate: the secret must exist, and the audit says "rotate"
            meta = self.service.rotate(self.principal, self.scope, name, as_secret(value))
        else:
            meta = self.service.put(self.principal, self.scope, name, as_secret(value))
        return str(meta.latest_version)

    def promote(self, name: str) -> None:
        self.service.promote(self.principal, self.scope, name)

    def delete(self, name: str) -> None:
        self.service.delete(self.principal, self.scope, name)

    def list(self, prefix: str = "") -> Names:
        return [m.name for m in self.service.list_secrets(self.principal, self.scope, prefix=prefix)]

    def versions(self, name: str) -> Versions:
        return [
            VersionInfo(
                str(v.version), v.created_at, tuple(lab for lab in LABELS if lab in v.labels), v.state
            )
            for v in self.service.history(self.principal, self.scope, name)
        ]

    def metadata(self, name: str) -> SecretInfo:
        m = self.service.describe(self.principal, self.scope, name)
        return SecretInfo(
            name=m.name,
            store=self.kind,
            current_version=str(m.current_version) if m.current_version is not None else None,
            created_at=m.created_at,
            updated_at=m.updated_at,
            description=m.description,
            tags=dict(m.custom_metadata),
            deleted=m.deleted_at is not None,
        )

    def close(self) -> None:
        return None
