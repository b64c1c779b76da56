"""Plain data returned by the core services. None of them ever holds a plaintext value except
:class:`SecretRead`, whose value is a :class:`SecretValue` (repr ``[secret]``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from keybroker.crypto import SecretValue

__all__ = ["Scope", "SecretMeta", "SecretRead", "VersionMeta"]


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a secret lives: organization / project / environment."""

    project: str = "default"
    environment: str = "dev"
    org: str = "default"

    def path(self, name: str | None = None) -> str:
        base = f"{self.org}/{self.project}/{self.environment}"
        return f"{base}/{name}" if name else base


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass(frozen=True, slots=True)
class VersionMeta:
    version: int
    created_at: datetime
    created_by: str
    deleted_at: datetime | None = None
    destroyed_at: datetime | None = None
    labels: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        if self.destroyed_at:
            return "destroyed"
        if self.deleted_at:
            return "deleted"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "deleted_at": _iso(self.deleted_at),
            "destroyed_at": _iso(self.destroyed_at),
            "state": self.state,
            "labels": list(self.labels),
        }


@dataclass(frozen=True, slots=True)
class SecretMeta:
    scope: Scope
    name: str
    kind: str
    description: str
    tags: list[str]
    custom_metadata: dict[str, str]
    owner: str
    risk: str
    provider: str
    expires_at: datetime | None
    rotation_period_s: int | None
    proxy_only: bool
    max_versions: int
    cas_required: bool
    latest_version: int
    current_version: int | None
    previous_version: int | None
    pending_version: int | None
    deleted_at: datetime | None
    created_at: datetime
    updated_at: datetime
    expired: bool = False
    rotation_due: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scope"] = asdict(self.scope)
        for k in ("expires_at", "deleted_at", "created_at", "updated_at"):
            d[k] = _iso(getattr(self, k))
        return d


@dataclass(frozen=True, slots=True)
class SecretRead:
    """A value read from the vault, with the version it came from and its metadata."""

    name: str
    version: int
    value: SecretValue
    meta: SecretMeta
    references: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return f"SecretRead(name={self.name!r}, version={self.version}, value=[secret])"
