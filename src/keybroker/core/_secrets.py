"""Secret lifecycle: the one service every front end calls.

Writes are check-and-set capable and immutable (each write is a new version). Labels
``current``/``previous``/``pending`` give zero-downtime rotation as in AWS Secrets Manager.
Every operation is audited in the same transaction as its effect; a read whose audit record
cannot be committed returns no value (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from keybroker.core._access import Authorizer, LocalOwnerAuthorizer
from keybroker.core._access_errors import ProxyOnly
from keybroker.core._models import Scope, SecretMeta, SecretRead, VersionMeta
from keybroker.core._names import check_risk, check_scope_name, check_secret_name
from keybroker.core._principal import Principal
from keybroker.core._vault import Vault
from keybroker.crypto import Keyring, Sealed, SecretValue, generate_keypair, keypair_algorithm
from keybroker.errors import (
    AlreadyExists,
    AuditUnavailable,
    CasMismatch,
    DecryptionError,
    EnvironmentNotFound,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    ProjectNotFound,
    ReferenceCycle,
    ReferenceMissing,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)
from keybroker.store import tables

__all__ = ["ChangeEvent", "SecretService"]

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_MAX_REF_DEPTH = 10
_LABELS = ("current", "previous", "pending")

ChangeEvent = dict[str, Any]


def _as_bytes(value: SecretValue | str | bytes) -> bytes:
    if isinstance(value, SecretValue):
        return value.reveal_bytes()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise InvalidInput("a secret value must be text or bytes")


class SecretService:
    def __init__(self, vault: Vault, authorizer: Authorizer | None = None) -> None:
        self.vault = vault
        self.store = vault.store
        self.audit = vault.audit
        self.clock = vault.clock
        self.authorizer: Authorizer = authorizer or LocalOwnerAuthorizer()
        self.listeners: list[Callable[[ChangeEvent], None]] = []
        self._env_cache: dict[Scope, int] = {}

    # ---------------------------------------------------------------- access + scope helpers
    def _authorize(
        self, principal: Principal, action: str, scope: Scope | None, name: str | None, audit_action: str
    ) -> None:
        try:
            self.authorizer.authorize(principal, action, scope, name)
        except KeybrokerError as exc:
            target = scope.path(name) if scope else "vault"
            try:
                self.audit.record(principal, audit_action, target, result=f"denied:{exc.code}")
            except KeybrokerError:
                pass
            raise

    def _env_id(self, conn: Connection, scope: Scope) -> int:
        cached = self._env_cache.get(scope)
        if cached is not None:
            return cached
        o, p, e = tables.orgs, tables.projects, tables.environments
        row = conn.execute(
            sa.select(p.c.id.label("pid"), e.c.id.label("eid"))
            .select_from(
                o.join(p, p.c.org_id == o.c.id).outerjoin(
                    e, sa.and_(e.c.project_id == p.c.id, e.c.name == scope.environment)
                )
            )
            .where(o.c.name == scope.org, p.c.name == scope.project)
        ).first()
        if row is None:
            raise ProjectNotFound(f"no project {scope.project!r} in organization {scope.org!r}")
        if row.eid is None:
            raise EnvironmentNotFound(f"no environment {scope.environment!r} in project {scope.project!r}")
        self._env_cache[scope] = int(row.eid)
        return int(row.eid)

    def _secret_row(
        self, conn: Connection, scope: Scope, name: str, *, lock: bool = False, allow_deleted: bool = False
    ) -> Row[Any]:
        check_secret_name(name)
        env_id = self._env_id(conn, scope)
        s = tables.secrets
        q = sa.select(s).where(s.c.environment_id == env_id, s.c.name == name)
        if lock:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise SecretNotFound(f"no secret {name!r} in {scope.path()}")
        if row.deleted_at is not None and not allow_deleted:
            raise SecretDeleted(f"secret {name!r} in {scope.path()} is deleted (undelete it to use it)")
        return row

    def _meta(self, scope: Scope, row: Row[Any]) -> SecretMeta:
        now = self.clock.now()
        expired = row.expires_at is not None and row.expires_at <= now
        due = False
        if row.rotation_period_s and row.current_version is not None:
            # counted from when the current value became current, not from any metadata edit
            since = row.current_since or row.updated_at
            due = since + timedelta(seconds=int(row.rotation_period_s)) <= now
        return SecretMeta(
            scope=scope,
            name=row.name,
            kind=row.kind,
            description=row.description,
            tags=list(row.tags or []),
            custom_metadata=dict(row.custom_metadata or {}),
            owner=row.owner,
            risk=row.risk,
            provider=row.provider,
            expires_at=row.expires_at,
            rotation_period_s=row.rotation_period_s,
            proxy_only=bool(row.proxy_only),
            max_versions=int(row.max_versions),
            cas_required=bool(row.cas_required),
            latest_version=int(row.latest_version),
            current_version=row.current_version,
            previous_version=row.previous_version,
            pending_version=row.pending_version,
            deleted_at=row.deleted_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            expired=expired,
            rotation_due=due,
        )

    def _emit(self, conn: Connection, scope: Scope, name: str, kind: str, version: int | None) -> ChangeEvent:
        ev: ChangeEvent = {
            "org": scope.org,
            "project": scope.project,
            "environment": scope.environment,
            "name": name,
            "kind": kind,
            "version": version,
            "ts": self.clock.now(),
        }
        ev["id"] = conn.execute(
            sa.insert(tables.events).values(**ev).returning(tables.events.c.id)
        ).scalar_one()
        return ev

    def _notify(self, events: Iterable[ChangeEvent]) -> None:
        for ev in events:
            for fn in list(self.listeners):
                try:
                    fn(ev)
                except Exception:  # noqa: BLE001, S112 - a broken listener must not fail the write
                    continue

    # ---------------------------------------------------------------- projects / environments
    def create_project(
        self,
        principal: Principal,
        project: str,
        *,
        org: str = "default",
        environments: Iterable[str] = ("dev", "staging", "prod"),
        description: str = "",
    ) -> None:
        check_scope_name("project", project)
        envs = [check_scope_name("environment", e) for e in environments]
        self._authorize(principal, "admin", Scope(project, "*", org), None, "project.create")
        now = self.clock.now()
        with self.store.begin() as conn:
            org_id = conn.execute(sa.select(tables.orgs.c.id).where(tables.orgs.c.name == org)).scalar()
            if org_id is None:
                org_id = conn.execute(
                    sa.insert(tables.orgs)
                    .values(name=check_scope_name("organization", org), created_at=now)
                    .returning(tables.orgs.c.id)
                ).scalar_one()
            p = tables.projects
            if conn.execute(sa.select(p.c.id).where(p.c.org_id == org_id, p.c.name == project)).first():
                raise AlreadyExists(f"project {project!r} already exists")
            pid = conn.execute(
                sa.insert(p)
                .values(org_id=org_id, name=project, description=description, created_at=now)
                .returning(p.c.id)
            ).scalar_one()
            for e in envs:
                conn.execute(sa.insert(tables.environments).values(project_id=pid, name=e, created_at=now))
            self.audit.append(
                conn, principal, "project.create", f"{org}/{project}", detail={"environments": envs}
            )

    def create_environment(
        self, principal: Principal, project: str, environment: str, *, org: str = "default"
    ) -> None:
        check_scope_name("environment", environment)
        self._authorize(principal, "admin", Scope(project, environment, org), None, "environment.create")
        with self.store.begin() as conn:
            pid = conn.execute(
                sa.select(tables.projects.c.id)
                .join(tables.orgs, tables.orgs.c.id == tables.projects.c.org_id)
                .where(tables.orgs.c.name == org, tables.projects.c.name == project)
            ).scalar()
            if pid is None:
                raise ProjectNotFound(f"no project {project!r} in organization {org!r}")
            e = tables.environments
            if conn.execute(sa.select(e.c.id).where(e.c.project_id == pid, e.c.name == environment)).first():
                raise AlreadyExists(f"environment {environment!r} already exists in {project!r}")
            conn.execute(sa.insert(e).values(project_id=pid, name=environment, created_at=self.clock.now()))
            self.audit.append(conn, principal, "environment.create", f"{org}/{project}/{environment}")

    def list_projects(self, principal: Principal, *, org: str = "default") -> list[dict[str, Any]]:
        self._authorize(principal, "list", None, None, "project.list")
        o, p, e = tables.orgs, tables.projects, tables.environments
        with self.store.begin() as conn:
            self.audit.append(conn, principal, "project.list", org)
            rows = conn.execute(
                sa.select(p.c.name, p.c.description, e.c.name.label("env"))
                .select_from(o.join(p, p.c.org_id == o.c.id).outerjoin(e, e.c.project_id == p.c.id))
                .where(o.c.name == org)
                .order_by(p.c.name, e.c.id)
            ).all()
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            d = out.setdefault(r.name, {"name": r.name, "description": r.description, "environments": []})
            if r.env:
                d["environments"].append(r.env)
        return list(out.values())

    # ---------------------------------------------------------------- writes
    def put(
        self,
        principal: Principal,
        scope: Scope,
        name: str,
        value: SecretValue | str | bytes,
        *,
        cas: int | None = None,
        label: str = "current",
        kind: str = "generic",
        public_key: str | None = None,
        action: str = "secret.write",
        **metadata: Any,
    ) -> SecretMeta:
        """Store a new version. ``cas=N`` only writes if the latest version is N (0: only if the
        secret does not exist). ``label`` is ``current`` (default) or ``pending`` (rotation).
        Raises CasMismatch, SecretDeleted, InvalidName, InvalidInput, VaultSealed, StoreError."""
        check_secret_name(name)
        raw = _as_bytes(value)
        if label not in ("current", "pending"):
            raise InvalidInput("a new version can be labelled current or pending")
        self._check_metadata(metadata)
        self._authorize(principal, "write", scope, name, action)
        kr = self.vault.keyring()
        now = self.clock.now()
        with self.store.begin() as conn:
            ev, final = self._write(
                conn, kr, principal, scope, name, raw, cas, label, kind, public_key, action, metadata, now
            )
        self._notify([ev])
        return self._meta(scope, final)

    def _write(
        self,
        conn: Connection,
        kr: Keyring,
        principal: Principal,
        scope: Scope,
        name: str,
        raw: bytes,
        cas: int | None,
        label: str,
        kind: str,
        public_key: str | None,
        action: str,
        metadata: dict[str, Any],
        now: datetime,
    ) -> tuple[ChangeEvent, Row[Any]]:
        """One new version inside the caller's transaction (with its audit record and event)."""
        s, sv = tables.secrets, tables.secret_versions
        env_id = self._env_id(conn, scope)
        row = conn.execute(
            sa.select(s).where(s.c.environment_id == env_id, s.c.name == name).with_for_update()
        ).first()
        if row is None:
            if label == "pending":
                raise SecretNotFound(f"no secret {name!r} in {scope.path()} to rotate: set it first")
            if cas not in (None, 0):
                raise CasMismatch(
                    f"check-and-set failed: {name!r} does not exist (expected version {cas})",
                    expected=cas,
                    actual=0,
                )
            values = {"tags": [], "custom_metadata": {}, **metadata}
            sid = conn.execute(
                sa.insert(s)
                .values(
                    environment_id=env_id,
                    name=name,
                    kind=kind,
                    latest_version=0,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
                .returning(s.c.id)
            ).scalar_one()
            latest, current = 0, None
            created = True
        else:
            if row.deleted_at is not None:
                raise SecretDeleted(f"secret {name!r} is deleted: undelete it before writing")
            if (cas is None and row.cas_required) or (cas is not None and cas != row.latest_version):
                raise CasMismatch(
                    f"check-and-set failed for {name!r}: latest version is {row.latest_version}"
                    + (f", not {cas}" if cas is not None else " and this secret requires --cas"),
                    expected=cas,
                    actual=int(row.latest_version),
                )
            sid, latest, current = row.id, int(row.latest_version), row.current_version
            created = False
        version = latest + 1
        sealed = kr.seal(raw, (scope.org, scope.project, scope.environment, name, version))
        conn.execute(
            sa.insert(sv).values(
                secret_id=sid,
                version=version,
                ciphertext=sealed.ciphertext,
                wrapped_dek=sealed.wrapped_dek,
                kek_id=sealed.kek_id,
                public_key=public_key,
                created_at=now,
                created_by=principal.label,
            )
        )
        upd: dict[str, Any] = {"latest_version": version, "updated_at": now}
        if label == "current":
            upd.update(current_version=version, previous_version=current, current_since=now)
            if row is not None and row.pending_version is not None:
                upd["pending_version"] = None
        else:
            upd["pending_version"] = version
        if not created:
            upd.update(metadata)
        conn.execute(sa.update(s).where(s.c.id == sid).values(**upd))
        self._prune(conn, sid, {**dict(row._mapping), **upd} if row is not None else {**upd, **metadata})
        self.audit.append(
            conn,
            principal,
            action,
            scope.path(name),
            version=version,
            value_hmac=kr.audit_hmac(raw),
            detail={"label": label},
        )
        kind_ev = "rotated" if label == "pending" else ("created" if created else "updated")
        ev = self._emit(conn, scope, name, kind_ev, version)
        final = conn.execute(sa.select(s).where(s.c.id == sid)).one()
        return ev, final

    def put_many(
        self,
        principal: Principal,
        scope: Scope,
        items: Mapping[str, SecretValue | str | bytes],
        *,
        action: str = "secret.write",
        skip_existing: bool = False,
    ) -> list[str]:
        """Write many secrets in ONE transaction (all or nothing), each with its own version,
        audit record and event. With ``skip_existing`` names that already exist are left alone.
        Returns the names written."""
        for name in items:
            check_secret_name(name)
            self._authorize(principal, "write", scope, name, action)
        kr = self.vault.keyring()
        now = self.clock.now()
        events: list[ChangeEvent] = []
        written: list[str] = []
        with self.store.begin() as conn:
            existing: set[str] = set()
            if skip_existing:
                env_id = self._env_id(conn, scope)
                s = tables.secrets
                existing = set(
                    conn.execute(
                        sa.select(s.c.name).where(s.c.environment_id == env_id, s.c.name.in_(list(items)))
                    ).scalars()
                )
            for name, value in items.items():
                if name in existing:
                    continue
                ev, _ = self._write(
                    conn,
                    kr,
                    principal,
                    scope,
                    name,
                    _as_bytes(value),
                    None,
                    "current",
                    "generic",
                    None,
                    action,
                    {},
                    now,
                )
                events.append(ev)
                written.append(name)
        self._notify(events)
        return written

    def _prune(self, conn: Connection, sid: int, row: dict[str, Any]) -> None:
        """Keep at most ``max_versions`` versions (labelled versions are always kept)."""
        keep = int(row.get("max_versions") or 0)
        if keep <= 0:
            return
        sv = tables.secret_versions
        versions = [
            int(v)
            for v in conn.execute(
                sa.select(sv.c.version).where(sv.c.secret_id == sid).order_by(sv.c.version.desc())
            ).scalars()
        ]
        labelled = {row.get("current_version"), row.get("previous_version"), row.get("pending_version")}
        drop = [v for v in versions[keep:] if v not in labelled]
        if drop:
            conn.execute(sa.delete(sv).where(sv.c.secret_id == sid, sv.c.version.in_(drop)))

    @staticmethod
    def _check_metadata(md: dict[str, Any]) -> None:
        allowed = {
            "description",
            "tags",
            "custom_metadata",
            "owner",
            "risk",
            "provider",
            "expires_at",
            "rotation_period_s",
            "proxy_only",
            "max_versions",
            "cas_required",
        }
        unknown = set(md) - allowed
        if unknown:
            raise InvalidInput(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        if "risk" in md:
            check_risk(md["risk"])
        if "tags" in md and (
            not isinstance(md["tags"], list) or not all(isinstance(t, str) for t in md["tags"])
        ):
            raise InvalidInput("tags must be a list of strings")
        if "custom_metadata" in md and (
            not isinstance(md["custom_metadata"], dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in md["custom_metadata"].items())
        ):
            raise InvalidInput("custom metadata must map strings to strings")
        if md.get("expires_at") is not None and (
            not isinstance(md["expires_at"], datetime) or md["expires_at"].tzinfo is None
        ):
            raise InvalidInput("expires_at must be a timezone-aware datetime")
        for k in ("rotation_period_s", "max_versions"):
            if md.get(k) is not None and (not isinstance(md[k], int) or md[k] < 0):
                raise InvalidInput(f"{k} must be a non-negative integer")
        if "provider" in md and (
            not isinstance(md["provider"], str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", md["provider"])
        ):
            raise InvalidInput("provider must be a short lowercase name such as openai, anthropic or generic")

    def update_metadata(self, principal: Principal, scope: Scope, name: str, **metadata: Any) -> SecretMeta:
        self._check_metadata(metadata)
        self._authorize(principal, "write", scope, name, "secret.metadata")
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, lock=True, allow_deleted=True)
            if metadata:
                conn.execute(
                    sa.update(tables.secrets)
                    .where(tables.secrets.c.id == row.id)
                    .values(**metadata, updated_at=self.clock.now())
                )
            self.audit.append(
                conn, principal, "secret.metadata", scope.path(name), detail={"fields": sorted(metadata)}
            )
            final = conn.execute(sa.select(tables.secrets).where(tables.secrets.c.id == row.id)).one()
        return self._meta(scope, final)

    def rotate(
        self, principal: Principal, scope: Scope, name: str, value: SecretValue | str | bytes
    ) -> SecretMeta:
        """Write a ``pending`` version; ``current`` keeps working until :meth:`promote`."""
        check_secret_name(name)
        self._authorize(principal, "write", scope, name, "secret.rotate")  # before revealing existence
        with self.store.connect() as conn:
            self._secret_row(conn, scope, name)
        return self.put(principal, scope, name, value, label="pending", action="secret.rotate")

    def promote(self, principal: Principal, scope: Scope, name: str) -> SecretMeta:
        """``pending`` becomes ``current``; the old current stays readable as ``previous``."""
        self._authorize(principal, "write", scope, name, "secret.promote")
        s = tables.secrets
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, lock=True)
            if row.pending_version is None:
                raise VersionNotFound(f"secret {name!r} has no pending version to promote")
            conn.execute(
                sa.update(s)
                .where(s.c.id == row.id)
                .values(
                    current_version=row.pending_version,
                    previous_version=row.current_version,
                    pending_version=None,
                    updated_at=self.clock.now(),
                    current_since=self.clock.now(),
                )
            )
            self.audit.append(
                conn, principal, "secret.promote", scope.path(name), version=row.pending_version
            )
            ev = self._emit(conn, scope, name, "promoted", row.pending_version)
            final = conn.execute(sa.select(s).where(s.c.id == row.id)).one()
        self._notify([ev])
        return self._meta(scope, final)

    def rollback(self, principal: Principal, scope: Scope, name: str, version: int) -> SecretMeta:
        """Write the value of ``version`` again as a new current version (as Vault does)."""
        old = self.get(principal, scope, name, version=version, resolve=False, action="secret.rollback-read")
        # check-and-set against what was read: works with cas_required, and a concurrent write
        # between the read and the write is reported instead of silently overwritten
        return self.put(
            principal, scope, name, old.value, cas=old.meta.latest_version, action="secret.rollback"
        )

    def delete(
        self, principal: Principal, scope: Scope, name: str, versions: list[int] | None = None
    ) -> None:
        """Soft delete: the whole secret, or given versions. Undo with :meth:`undelete`."""
        self._set_deleted(principal, scope, name, versions, self.clock.now(), "secret.delete", "deleted")

    def undelete(
        self, principal: Principal, scope: Scope, name: str, versions: list[int] | None = None
    ) -> None:
        self._set_deleted(principal, scope, name, versions, None, "secret.undelete", "undeleted")

    def _set_deleted(
        self,
        principal: Principal,
        scope: Scope,
        name: str,
        versions: list[int] | None,
        when: datetime | None,
        action: str,
        ev_kind: str,
    ) -> None:
        self._authorize(principal, "write", scope, name, action)
        s, sv = tables.secrets, tables.secret_versions
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, lock=True, allow_deleted=True)
            if versions:
                self._check_versions(conn, row, versions)
                conn.execute(
                    sa.update(sv)
                    .where(sv.c.secret_id == row.id, sv.c.version.in_(versions), sv.c.destroyed_at.is_(None))
                    .values(deleted_at=when)
                )
            else:
                if (row.deleted_at is None) == (when is None):
                    state = "not deleted" if when is None else "already deleted"
                    raise InvalidInput(f"secret {name!r} is {state}")
                conn.execute(sa.update(s).where(s.c.id == row.id).values(deleted_at=when))
            self.audit.append(
                conn, principal, action, scope.path(name), detail={"versions": versions or "all"}
            )
            ev = self._emit(conn, scope, name, ev_kind, None)
        self._notify([ev])

    def _check_versions(self, conn: Connection, row: Row[Any], versions: list[int]) -> None:
        sv = tables.secret_versions
        have = set(conn.execute(sa.select(sv.c.version).where(sv.c.secret_id == row.id)).scalars())
        missing = [v for v in versions if v not in have]
        if missing:
            raise VersionNotFound(f"secret {row.name!r} has no version(s) {', '.join(map(str, missing))}")

    def destroy(self, principal: Principal, scope: Scope, name: str, versions: list[int]) -> None:
        """Erase the data keys and ciphertexts of the given versions: unrecoverable."""
        if not versions:
            raise InvalidInput("name the version(s) to destroy")
        self._authorize(principal, "admin", scope, name, "secret.destroy")
        sv = tables.secret_versions
        now = self.clock.now()
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, lock=True, allow_deleted=True)
            self._check_versions(conn, row, versions)
            conn.execute(
                sa.update(sv)
                .where(sv.c.secret_id == row.id, sv.c.version.in_(versions))
                .values(ciphertext=None, wrapped_dek=None, kek_id=None, destroyed_at=now)
            )
            self.audit.append(
                conn, principal, "secret.destroy", scope.path(name), detail={"versions": versions}
            )
            ev = self._emit(conn, scope, name, "destroyed", None)
        self._notify([ev])

    def purge(self, principal: Principal, scope: Scope, name: str) -> None:
        """Remove the secret, every version and its metadata (Vault's ``kv metadata delete``)."""
        self._authorize(principal, "admin", scope, name, "secret.purge")
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, lock=True, allow_deleted=True)
            conn.execute(
                sa.delete(tables.secret_versions).where(tables.secret_versions.c.secret_id == row.id)
            )
            conn.execute(sa.delete(tables.secrets).where(tables.secrets.c.id == row.id))
            self.audit.append(conn, principal, "secret.purge", scope.path(name))
            ev = self._emit(conn, scope, name, "deleted", None)
        self._notify([ev])

    # ---------------------------------------------------------------- reads
    def get(
        self,
        principal: Principal,
        scope: Scope,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        resolve: bool = True,
        action: str = "secret.read",
        permission: str = "read",
    ) -> SecretRead:
        """Decrypt one version (default: ``current``) and resolve ``${...}`` references with the
        reader's own permissions. Raises SecretNotFound, SecretDeleted, VersionNotFound,
        DecryptionError, ReferenceCycle, ReferenceMissing, AuditUnavailable, VaultSealed."""
        check_secret_name(name)
        self._authorize(principal, permission, scope, name, action)
        kr = self.vault.keyring()
        audits: list[tuple[str, str, int, str]] = []
        stack: list[tuple[Scope, str]] = []
        try:
            # Read without the write lock; then make the audit records durable (group commit
            # with concurrent readers) BEFORE the value leaves: fail closed.
            with self.store.connect() as conn:
                meta, ver, raw = self._read_one(conn, kr, scope, name, version, label, permission)
                audits.append((action, scope.path(name), ver, kr.audit_hmac(raw)))
                refs: list[str] = []
                if resolve and b"${" in raw:
                    stack.append((scope, name))
                    raw = self._resolve(conn, principal, kr, scope, raw, stack, audits, refs, permission)
            try:
                self.audit.commit_durable(
                    [(principal, act, target, "ok", v, None, h) for act, target, v, h in audits]
                )
            except StoreError as exc:
                raise AuditUnavailable(
                    "the audit record could not be made durable, so no value is returned"
                ) from exc
        except KeybrokerError as exc:
            if not isinstance(exc, AuditUnavailable):
                try:
                    self.audit.record(
                        principal, action, scope.path(name), version=version, result=f"error:{exc.code}"
                    )
                except KeybrokerError:
                    pass
            raise
        return SecretRead(name, ver, SecretValue(raw), meta, tuple(refs))

    def _read_one(
        self,
        conn: Connection,
        kr: Any,
        scope: Scope,
        name: str,
        version: int | None,
        label: str | None,
        permission: str = "read",
    ) -> tuple[SecretMeta, int, bytes]:
        row = self._secret_row(conn, scope, name)
        if row.proxy_only and permission == "read":
            # proxy-only values leave only through the gateway (permission "use"), never to a reader
            raise ProxyOnly(
                f"secret {name!r} in {scope.path()} is proxy-only: its value is never shown; "
                "use it through the keybroker gateway"
            )
        if version is None:
            lab = label or "current"
            if lab not in _LABELS:
                raise InvalidInput(f"unknown label {lab!r}: use current, previous or pending")
            version = getattr(row, f"{lab}_version")
            if version is None:
                raise VersionNotFound(f"secret {name!r} has no {lab} version")
        sv = tables.secret_versions
        vrow = conn.execute(sa.select(sv).where(sv.c.secret_id == row.id, sv.c.version == version)).first()
        if vrow is None:
            raise VersionNotFound(f"secret {name!r} has no version {version}", version=version)
        if vrow.destroyed_at is not None:
            raise VersionNotFound(
                f"version {version} of {name!r} was destroyed", version=version, state="destroyed"
            )
        if vrow.deleted_at is not None:
            raise VersionNotFound(
                f"version {version} of {name!r} is deleted", version=version, state="deleted"
            )
        if vrow.kek_id is not None and not kr.has(int(vrow.kek_id)):
            self.vault.ensure_kek(int(vrow.kek_id), conn)  # re-wrapped by another replica's rekey
        try:
            raw = kr.open(
                Sealed(vrow.ciphertext, vrow.wrapped_dek, int(vrow.kek_id)),
                (scope.org, scope.project, scope.environment, name, int(version)),
            )
        except DecryptionError:
            raise DecryptionError(
                f"secret {name!r} version {version} in {scope.path()} could not be decrypted "
                "(corrupted, tampered with, or moved)",
                name=name,
                version=int(version),
            ) from None
        return self._meta(scope, row), int(version), raw

    def _resolve(
        self,
        conn: Connection,
        principal: Principal,
        kr: Any,
        scope: Scope,
        raw: bytes,
        stack: list[tuple[Scope, str]],
        audits: list[tuple[str, str, int, str]],
        refs: list[str],
        permission: str,
    ) -> bytes:
        if len(stack) > _MAX_REF_DEPTH:
            raise ReferenceCycle(f"references nest deeper than {_MAX_REF_DEPTH} levels")
        text = raw.decode("utf-8", errors="surrogateescape")

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            ref = m.group(1).strip()
            parts = ref.split(".")
            if len(parts) == 1:
                target, rname = scope, parts[0]
            elif len(parts) == 3:
                target, rname = Scope(parts[0], parts[1], scope.org), parts[2]
            else:
                raise ReferenceMissing(f"bad reference ${{{ref}}}: use ${{NAME}} or ${{project.env.NAME}}")
            try:
                check_secret_name(rname)
                check_scope_name("project", target.project)
                check_scope_name("environment", target.environment)
            except KeybrokerError as exc:
                raise ReferenceMissing(f"bad reference ${{{ref}}}: {exc.message}") from None
            if (target, rname) in stack:
                chain = " -> ".join(n for _, n in stack) + f" -> {rname}"
                raise ReferenceCycle(f"reference cycle: {chain}")
            self.authorizer.authorize(principal, permission, target, rname)
            try:
                _, v, sub = self._read_one(conn, kr, target, rname, None, None, permission)
            except (SecretNotFound, SecretDeleted, VersionNotFound, ProjectNotFound, EnvironmentNotFound):
                raise ReferenceMissing(
                    f"reference ${{{ref}}} in {stack[-1][1]!r} points to a secret that does not exist"
                ) from None
            audits.append(("secret.read-ref", target.path(rname), v, kr.audit_hmac(sub)))
            refs.append(target.path(rname))
            if b"${" in sub:
                stack.append((target, rname))
                sub = self._resolve(conn, principal, kr, target, sub, stack, audits, refs, permission)
                stack.pop()
            return sub.decode("utf-8", errors="surrogateescape")

        return _REF.sub(repl, text).encode("utf-8", errors="surrogateescape")

    def describe(self, principal: Principal, scope: Scope, name: str) -> SecretMeta:
        self._authorize(principal, "list", scope, name, "secret.describe")
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name, allow_deleted=True)
            self.audit.append(conn, principal, "secret.describe", scope.path(name))
        return self._meta(scope, row)

    def list_secrets(
        self, principal: Principal, scope: Scope, *, prefix: str = "", include_deleted: bool = False
    ) -> list[SecretMeta]:
        self._authorize(principal, "list", scope, None, "secret.list")
        s = tables.secrets
        with self.store.begin() as conn:
            env_id = self._env_id(conn, scope)
            q = sa.select(s).where(s.c.environment_id == env_id).order_by(s.c.name)
            if prefix:
                q = q.where(s.c.name.startswith(prefix, autoescape=True))
            if not include_deleted:
                q = q.where(s.c.deleted_at.is_(None))
            rows = conn.execute(q).all()
            self.audit.append(conn, principal, "secret.list", scope.path(), detail={"count": len(rows)})
        return [self._meta(scope, r) for r in rows]

    def history(self, principal: Principal, scope: Scope, name: str) -> list[VersionMeta]:
        self._authorize(principal, "list", scope, name, "secret.history")
        sv = tables.secret_versions
        with self.store.begin() as conn:
            self.audit.append(conn, principal, "secret.history", scope.path(name))
            row = self._secret_row(conn, scope, name, allow_deleted=True)
            vrows = conn.execute(
                sa.select(sv.c.version, sv.c.created_at, sv.c.created_by, sv.c.deleted_at, sv.c.destroyed_at)
                .where(sv.c.secret_id == row.id)
                .order_by(sv.c.version)
            ).all()
        labels = {lab: getattr(row, f"{lab}_version") for lab in _LABELS}
        return [
            VersionMeta(
                int(v.version),
                v.created_at,
                v.created_by,
                v.deleted_at,
                v.destroyed_at,
                tuple(lab for lab, n in labels.items() if n == v.version),
            )
            for v in vrows
        ]

    def export(
        self, principal: Principal, scope: Scope, *, permission: str = "read", action: str = "secret.export"
    ) -> dict[str, SecretValue]:
        """Every live secret of the scope that the reader may read, with its current value
        (references resolved). Proxy-only secrets and key pairs are left out; so are names the
        reader's scope does not cover (a token limited to ``db/*`` exports only those)."""
        out: dict[str, SecretValue] = {}
        for m in self.list_secrets(principal, scope):
            if m.current_version is None or m.kind == "keypair" or m.proxy_only:
                continue  # proxy-only values never leave in bulk: the gateway is their only way out
            try:
                self.authorizer.authorize(principal, permission, scope, m.name)
            except PermissionDenied:
                continue
            try:
                out[m.name] = self.get(principal, scope, m.name, action=action, permission=permission).value
            except (VersionNotFound, ProxyOnly):
                continue  # (ProxyOnly: a reference to a proxy-only secret)
        return out

    # ---------------------------------------------------------------- key pairs
    def keypair_generate(
        self,
        principal: Principal,
        scope: Scope,
        name: str,
        algorithm: str = "ed25519",
        *,
        rotate: bool = False,
        **metadata: Any,
    ) -> tuple[SecretMeta, str]:
        """Store a new private key as a secret; the public key is kept beside it in clear."""
        check_secret_name(name)
        action = "keypair.rotate" if rotate else "keypair.generate"
        self._authorize(principal, "write", scope, name, action)  # before revealing existence
        with self.store.connect() as conn:
            exists = True
            try:
                row = self._secret_row(conn, scope, name, allow_deleted=True)
                if row.kind != "keypair":
                    raise InvalidInput(f"secret {name!r} exists and is not a key pair")
            except SecretNotFound:
                exists = False
        if exists and not rotate:
            raise AlreadyExists(f"key pair {name!r} exists: use `keypair rotate` for a new one")
        if rotate and not exists:
            raise SecretNotFound(f"no key pair {name!r} in {scope.path()}")
        priv, pub = generate_keypair(algorithm)
        md = {**metadata, "custom_metadata": {**metadata.get("custom_metadata", {}), "algorithm": algorithm}}
        if rotate:  # keep the pair's metadata, but record the algorithm now in use
            md = {"custom_metadata": {**dict(row.custom_metadata or {}), "algorithm": algorithm}}
        meta = self.put(
            principal,
            scope,
            name,
            priv,
            kind="keypair",
            public_key=pub,
            action="keypair.rotate" if rotate else "keypair.generate",
            **md,
        )
        return meta, pub

    def keypair_public(
        self, principal: Principal, scope: Scope, name: str, version: int | None = None
    ) -> tuple[int, str, str]:
        """(version, algorithm, public key PEM) without decrypting anything."""
        self._authorize(principal, "list", scope, name, "keypair.public")
        sv = tables.secret_versions
        with self.store.begin() as conn:
            row = self._secret_row(conn, scope, name)
            if row.kind != "keypair":
                raise InvalidInput(f"secret {name!r} is not a key pair")
            v = version or row.current_version
            pub = conn.execute(
                sa.select(sv.c.public_key).where(sv.c.secret_id == row.id, sv.c.version == v)
            ).scalar()
            if pub is None:
                raise VersionNotFound(f"key pair {name!r} has no version {v}")
            self.audit.append(conn, principal, "keypair.public", scope.path(name), version=v)
        return int(v), keypair_algorithm(str(pub)), str(pub)
