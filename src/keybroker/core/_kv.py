"""How Vault KV v2 data maps onto keybroker secrets, and the per-mount KV settings.

A KV v2 secret is a JSON object (``{"api_key": "...", "org": "..."}``); a keybroker secret is one
value. The mapping is per version and needs no marker, so a secret written with
``keybroker secret set`` reads through the KV API and the other way round:

* reading: a value that is a JSON object reads as that object; a value that is not reads as
  ``{"value": "<value>"}``; a value that is not UTF-8 reads as ``{"value_base64": "..."}``;
* writing: ``{"value": "<text>"}`` alone stores the plain text (so ``kv put p/dev/K value=x`` and
  ``secret set K x`` store the same thing), unless the text itself is a JSON object, which would
  then read back as that object: such a value, and every other object, is stored as its JSON.
  ``{"value_base64": "..."}`` alone stores those bytes.

Round trips through the KV API are exact; a value set with ``secret set`` that happens to be a
JSON object reads through KV as that object (which is what a Vault user would expect of it).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._vault import Vault
from keybroker.errors import InvalidInput, KeybrokerError, PermissionDenied, ProjectNotFound
from keybroker.store import tables

__all__ = ["KvConfig", "KvConfigService", "kv_decode", "kv_encode"]


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def kv_decode(raw: bytes) -> dict[str, Any]:
    """A stored value as KV v2 ``data``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(raw).decode()}
    obj = _json_object(text)
    return obj if obj is not None else {"value": text}


def kv_encode(data: Any) -> bytes:
    """KV v2 ``data`` as the value to store. Raises InvalidInput if it is not an object."""
    if not isinstance(data, dict):
        raise InvalidInput("data must be a JSON object")
    if not data:
        raise InvalidInput("no data provided")
    if set(data) == {"value"} and isinstance(data["value"], str) and _json_object(data["value"]) is None:
        return data["value"].encode("utf-8")
    if set(data) == {"value_base64"} and isinstance(data["value_base64"], str):
        try:
            return base64.b64decode(data["value_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("value_base64 is not valid base64") from None
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError):
        raise InvalidInput("data must be plain JSON") from None


@dataclass(frozen=True, slots=True)
class KvConfig:
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after_s: int = 0

    def to_vault(self) -> dict[str, Any]:
        return {
            "max_versions": self.max_versions,
            "cas_required": self.cas_required,
            "delete_version_after": f"{self.delete_version_after_s}s",
        }


class KvConfigService:
    """The ``{mount}/config`` settings of a project used as a KV v2 mount."""

    def __init__(self, vault: Vault, authorizer: RbacAuthorizer) -> None:
        self.store = vault.store
        self.audit = vault.audit
        self.authorizer = authorizer

    def _project_id(self, conn: sa.Connection, org: str, project: str) -> int:
        p, o = tables.projects, tables.orgs
        pid = conn.execute(
            sa.select(p.c.id).join(o, o.c.id == p.c.org_id).where(o.c.name == org, p.c.name == project)
        ).scalar()
        if pid is None:
            raise ProjectNotFound(f"no project {project!r}")
        return int(pid)

    def _check(self, principal: Principal, action: str, org: str, project: str, audit_action: str) -> None:
        if not self.authorizer.allows(principal, action, Scope(project, "*", org), None):
            try:
                self.audit.record(
                    principal, audit_action, f"{org}/{project}", result="denied:permission_denied"
                )
            except KeybrokerError:
                pass
            raise PermissionDenied(f"{principal.label} may not {action} the settings of {project!r}")

    def get(self, principal: Principal, org: str, project: str, *, check: bool = True) -> KvConfig:
        if check:
            self._check(principal, "list", org, project, "kv.config.read")
        c = tables.kv_config
        with self.store.connect() as conn:
            pid = self._project_id(conn, org, project)
            row = conn.execute(sa.select(c).where(c.c.project_id == pid)).first()
        if row is None:
            return KvConfig()
        return KvConfig(int(row.max_versions), bool(row.cas_required), int(row.delete_version_after_s))

    def set(
        self,
        principal: Principal,
        org: str,
        project: str,
        *,
        max_versions: int | None = None,
        cas_required: bool | None = None,
        delete_version_after_s: int | None = None,
    ) -> KvConfig:
        self._check(principal, "admin", org, project, "kv.config.write")
        if max_versions is not None and (not isinstance(max_versions, int) or max_versions < 0):
            raise InvalidInput("max_versions must be a non-negative integer")
        if delete_version_after_s not in (None, 0):
            raise InvalidInput("delete_version_after is not supported (only 0s)")
        cur = self.get(principal, org, project, check=False)
        new = KvConfig(
            cur.max_versions if max_versions is None else max_versions,
            cur.cas_required if cas_required is None else bool(cas_required),
            0,
        )
        c = tables.kv_config
        with self.store.begin() as conn:
            pid = self._project_id(conn, org, project)
            conn.execute(sa.delete(c).where(c.c.project_id == pid))
            conn.execute(
                sa.insert(c).values(
                    project_id=pid,
                    max_versions=new.max_versions,
                    cas_required=new.cas_required,
                    delete_version_after_s=0,
                )
            )
            self.audit.append(
                conn,
                principal,
                "kv.config.write",
                f"{org}/{project}",
                detail={"max_versions": new.max_versions, "cas_required": new.cas_required},
            )
        return new
