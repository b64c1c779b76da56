"""The audit trail as an organization sees it.

Every record keybroker writes about an organization's things has a target starting with
``<org>/`` (secrets ``org/project/env/name``, identities ``org/_identities/name``, tokens
``org/_tokens/accessor``), so an organization admin reads exactly its own records. Records about
the system (``vault``, ``_sys/...``, failed logins of unknown clients ``_auth/...``) and the
chain verification (which counts every record of every organization) are for the system
operator only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa

from keybroker.core._audit import AuditEntry, AuditLog, VerifyResult
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.core._rbac import AuthPrincipal, RbacAuthorizer, org_scope
from keybroker.errors import InvalidInput, KeybrokerError, PermissionDenied
from keybroker.store import tables

__all__ = ["OrgAudit"]


class OrgAudit:
    def __init__(self, audit: AuditLog, authorizer: RbacAuthorizer) -> None:
        self.audit = audit
        self.authorizer = authorizer

    def _prefix(self, principal: Principal, everything: bool, action: str) -> str | None:
        if everything:
            if not self.authorizer.allows(principal, "admin", Scope("*", "*", "*"), None):
                self._deny(principal, action, "_sys/audit")
                raise PermissionDenied("only the system operator may read the whole audit trail")
            return None
        org = principal.grant.org if isinstance(principal, AuthPrincipal) and principal.grant else "default"
        if not self.authorizer.allows(principal, "admin", org_scope(org), None):
            self._deny(principal, action, f"{org}/_audit")
            raise PermissionDenied(f"{principal.label} may not read the audit trail of {org!r}")
        return f"{org}/"

    def _deny(self, principal: Principal, action: str, target: str) -> None:
        try:
            self.audit.record(principal, action, target, result="denied:permission_denied")
        except KeybrokerError:
            pass

    def query(
        self,
        principal: Principal,
        *,
        since: datetime | None = None,
        action: str | None = None,
        actor: str | None = None,
        target_prefix: str | None = None,
        limit: int = 100,
        everything: bool = False,
    ) -> list[AuditEntry]:
        """The last ``limit`` records matching the filters (oldest first)."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be between 1 and 10000")
        prefix = self._prefix(principal, everything, "audit.query")
        if target_prefix:
            if prefix and not target_prefix.startswith(prefix):
                target_prefix = prefix + target_prefix
        else:
            target_prefix = prefix
        entries = self._last(limit, since=since, action=action, actor=actor, target_prefix=target_prefix)
        self.audit.record(principal, "audit.query", (prefix or "") + "_audit", detail={"count": len(entries)})
        return entries

    def _last(
        self,
        limit: int,
        *,
        since: datetime | None,
        action: str | None,
        actor: str | None,
        target_prefix: str | None,
    ) -> list[AuditEntry]:
        """The newest ``limit`` matching records, oldest first (one indexed query)."""
        t = tables.audit_log
        q = sa.select(t).order_by(t.c.seq.desc()).limit(limit)
        if since is not None:
            q = q.where(t.c.ts >= since.isoformat(timespec="microseconds").replace("+00:00", "Z"))
        if action:
            q = q.where(t.c.action == action)
        if actor:
            q = q.where(t.c.actor == actor)
        if target_prefix:
            q = q.where(t.c.target.startswith(target_prefix, autoescape=True))
        with self.audit.store.connect() as conn:
            rows = conn.execute(q).all()
        return [AuditEntry(**r._asdict()) for r in reversed(rows)]

    def export(
        self, principal: Principal, fmt: str, *, since: datetime | None = None, everything: bool = False
    ) -> Iterator[str]:
        """JSON lines or CSV (header first). Checks and records access before the first line."""
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"unknown audit export format {fmt[:20]!r}; use jsonl or csv")
        prefix = self._prefix(principal, everything, "audit.export")
        self.audit.record(principal, "audit.export", (prefix or "") + "_audit", detail={"format": fmt})
        return self._lines(fmt, since, prefix)

    def _lines(self, fmt: str, since: datetime | None, prefix: str | None) -> Iterator[str]:
        cols = list(AuditEntry.__dataclass_fields__)
        if fmt == "csv":
            buf = io.StringIO()
            csv.writer(buf).writerow(cols)
            yield buf.getvalue()
        for e in self.audit.iter_entries(since=since, target_prefix=prefix):
            if fmt == "jsonl":
                yield json.dumps(e.to_dict(), sort_keys=True) + "\n"
            else:
                buf = io.StringIO()
                csv.writer(buf).writerow(["" if getattr(e, c) is None else getattr(e, c) for c in cols])
                yield buf.getvalue()

    def verify(self, principal: Principal) -> VerifyResult:
        self._prefix(principal, True, "audit.verify")
        result = self.audit.verify()
        self.audit.record(principal, "audit.verify", "_sys/audit", result="ok" if result.ok else "broken")
        return result
