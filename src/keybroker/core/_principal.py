"""Who is acting. Every core call takes a Principal; the audit trail records it."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field

__all__ = ["Principal", "local_principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated actor. ``kind`` is user, service or agent. ``local`` marks the owner
    of an embedded vault, who holds the root key and so may do everything."""

    id: str
    kind: str = "user"
    client: str = "keybroker"
    local: bool = False
    request_id: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.id}"


def local_principal(client: str = "cli") -> Principal:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return Principal(id=user, kind="user", client=client, local=True)
