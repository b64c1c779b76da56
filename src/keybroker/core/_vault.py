"""The vault: initialisation, unseal/seal, the in-memory keyring, KEK rotation (rekey)."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keybroker.core._audit import AuditLog
from keybroker.core._clock import Clock, SystemClock
from keybroker.core._names import check_scope_name
from keybroker.core._principal import Principal
from keybroker.crypto import (
    Argon2Params,
    Keyring,
    Sealed,
    aad_for,
    decrypt,
    derive_argon2id,
    encrypt,
    new_key,
)
from keybroker.errors import (
    AlreadyInitialized,
    DecryptionError,
    InvalidInput,
    KeybrokerError,
    NotInitialized,
    UnsealFailed,
    VaultSealed,
)
from keybroker.store import Store, tables

__all__ = [
    "DEFAULT_ENVIRONMENTS",
    "KeyFileRoot",
    "KeychainRoot",
    "PassphraseRoot",
    "RawRoot",
    "RekeyResult",
    "RootKeySource",
    "Vault",
]

DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")
_CHECK = b"keybroker-root-check-v1"
FORMAT = "1"


class RootKeySource(Protocol):
    """Where the root key comes from. ``create`` makes a new one at init (returning the
    parameters to store with the vault); ``derive`` gives it back at unseal."""

    kind: str

    def create(self, vault_id: str) -> tuple[bytes, dict[str, Any]]: ...

    def derive(self, vault_id: str, params: dict[str, Any]) -> bytes: ...


class PassphraseRoot:
    """Argon2id over a passphrase; the salt and costs are stored with the vault."""

    kind = "passphrase"

    def __init__(self, passphrase: str, params: Argon2Params | None = None) -> None:
        if not passphrase:
            raise InvalidInput("the passphrase is empty")
        self._passphrase = passphrase
        self._params = params

    def __repr__(self) -> str:
        return "PassphraseRoot([secret])"

    def create(self, vault_id: str) -> tuple[bytes, dict[str, Any]]:
        params = self._params or Argon2Params.fresh()
        return derive_argon2id(self._passphrase, params), params.to_dict()

    def derive(self, vault_id: str, params: dict[str, Any]) -> bytes:
        return derive_argon2id(self._passphrase, Argon2Params.from_dict(params))


class KeyFileRoot:
    """A 256-bit key in a file (base64). ``create`` writes it with mode 0600 if absent."""

    kind = "keyfile"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self, vault_id: str) -> tuple[bytes, dict[str, Any]]:
        if self.path.exists():
            return self._read(), {"path_hint": self.path.name}
        key = new_key()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        return key, {"path_hint": self.path.name}

    def derive(self, vault_id: str, params: dict[str, Any]) -> bytes:
        return self._read()

    def _read(self) -> bytes:
        try:
            raw = self.path.read_text().strip()
        except OSError as exc:
            raise UnsealFailed(f"cannot read the key file {self.path}: {exc.strerror}") from exc
        try:
            key = base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise UnsealFailed(f"the key file {self.path} is not a base64 256-bit key") from exc
        if len(key) != 32:
            raise UnsealFailed(f"the key file {self.path} is not a base64 256-bit key")
        return key


class KeychainRoot:
    """The root key kept in the OS keychain (``keyring``), for a personal machine."""

    kind = "keychain"

    def __init__(self, service: str = "keybroker") -> None:
        self.service = service

    def create(self, vault_id: str) -> tuple[bytes, dict[str, Any]]:
        import keyring
        from keyring.errors import KeyringError

        key = new_key()
        try:
            keyring.set_password(self.service, vault_id, base64.b64encode(key).decode())
        except KeyringError as exc:
            raise UnsealFailed(f"the OS keychain is not available: {type(exc).__name__}") from exc
        return key, {"service": self.service}

    def derive(self, vault_id: str, params: dict[str, Any]) -> bytes:
        import keyring
        from keyring.errors import KeyringError

        try:
            raw = keyring.get_password(str(params.get("service", self.service)), vault_id)
        except KeyringError as exc:
            raise UnsealFailed(f"the OS keychain is not available: {type(exc).__name__}") from exc
        if not raw:
            raise UnsealFailed("the OS keychain holds no root key for this vault")
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise UnsealFailed("the OS keychain entry for this vault is not a base64 key") from exc


class RawRoot:
    """A root key given directly (dev mode from an environment variable, or a session cache)."""

    def __init__(self, key: bytes, kind: str = "dev-env") -> None:
        if len(key) != 32:
            raise UnsealFailed("the root key must be 32 bytes (base64 of 32 random bytes)")
        self._key = key
        self.kind = kind

    def __repr__(self) -> str:
        return f"RawRoot(kind={self.kind!r}, [secret])"

    def create(self, vault_id: str) -> tuple[bytes, dict[str, Any]]:
        return self._key, {}

    def derive(self, vault_id: str, params: dict[str, Any]) -> bytes:
        return self._key


@dataclass(frozen=True, slots=True)
class RekeyResult:
    kek_id: int
    rewrapped: int
    resumed: bool


class Vault:
    """One vault over one store. Holds the keyring only while unsealed; nothing decrypts while
    sealed. ``auto_seal_after`` (seconds, default off) seals after that much idle time."""

    def __init__(self, store: Store, clock: Clock | None = None, *, auto_seal_after: float | None = None):
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.audit = AuditLog(store, self.clock)
        self.auto_seal_after = auto_seal_after
        self._keyring: Keyring | None = None
        self._root: bytes | None = None
        self._last_used: datetime | None = None
        self._lock = threading.Lock()
        self._meta_cache: dict[str, str] | None = None

    # -- metadata ------------------------------------------------------------------------------
    def _meta(self, refresh: bool = False) -> dict[str, str]:
        if self._meta_cache is None or refresh:
            try:
                with self.store.connect() as conn:
                    rows = conn.execute(sa.select(tables.meta)).all()
            except KeybrokerError as exc:
                if "no such table" in str(exc.__cause__) or "does not exist" in str(exc.__cause__):
                    raise NotInitialized("no vault here yet: run `keybroker init`") from exc
                raise
            self._meta_cache = {r.key: r.value for r in rows}
        return self._meta_cache

    def is_initialized(self) -> bool:
        try:
            return "vault_id" in self._meta(refresh=True)
        except NotInitialized:
            return False

    @property
    def vault_id(self) -> str:
        meta = self._meta()
        if "vault_id" not in meta:
            raise NotInitialized("no vault here yet: run `keybroker init`")
        return meta["vault_id"]

    # -- lifecycle -----------------------------------------------------------------------------
    def initialize(
        self,
        source: RootKeySource,
        principal: Principal,
        *,
        org: str = "default",
        project: str = "default",
        environments: tuple[str, ...] = DEFAULT_ENVIRONMENTS,
    ) -> str:
        """Create the schema, the root-key check, the first KEK and a default project.
        Leaves the vault unsealed."""
        check_scope_name("organization", org)
        check_scope_name("project", project)
        for e in environments:
            check_scope_name("environment", e)
        self.store.migrate()
        if self.is_initialized():
            raise AlreadyInitialized("a vault already exists here; nothing was changed")
        vault_id = uuid.uuid4().hex
        root, params = source.create(vault_id)
        kek = new_key()
        now = self.clock.now()
        with self.store.begin() as conn:
            # re-check under the write lock, so two racing inits cannot both succeed
            if conn.execute(sa.select(tables.meta.c.value).where(tables.meta.c.key == "vault_id")).first():
                raise AlreadyInitialized("a vault already exists here; nothing was changed")
            check = encrypt(root, _CHECK, aad_for("root-check", vault_id))
            rows = {
                "format": FORMAT,
                "vault_id": vault_id,
                "created_at": now.isoformat(),
                "root_kind": source.kind,
                "root_params": json.dumps(params, sort_keys=True),
                "root_check": check.hex(),
            }
            conn.execute(sa.insert(tables.meta), [{"key": k, "value": v} for k, v in rows.items()])
            conn.execute(
                sa.insert(tables.keks).values(
                    id=1, wrapped=Keyring.wrap_kek(root, vault_id, 1, kek), created_at=now
                )
            )
            org_id = conn.execute(
                sa.insert(tables.orgs).values(name=org, created_at=now).returning(tables.orgs.c.id)
            ).scalar_one()
            pid = conn.execute(
                sa.insert(tables.projects)
                .values(org_id=org_id, name=project, description="", created_at=now)
                .returning(tables.projects.c.id)
            ).scalar_one()
            for e in environments:
                conn.execute(sa.insert(tables.environments).values(project_id=pid, name=e, created_at=now))
            self._meta_cache = None
            self._root = root
            self._keyring = Keyring(vault_id, root, {1: kek}, 1)
            self._last_used = now
            self.audit.append(
                conn, principal, "vault.init", "vault", detail={"root_kind": source.kind, "org": org}
            )
        return vault_id

    def unseal(self, source: RootKeySource, principal: Principal) -> None:
        """Derive the root key, check it, and load the keyring. A wrong key changes nothing."""
        meta = self._meta(refresh=True)
        if "vault_id" not in meta:
            raise NotInitialized("no vault here yet: run `keybroker init`")
        vault_id = meta["vault_id"]
        try:
            root = source.derive(vault_id, json.loads(meta["root_params"]))
            decrypt(root, bytes.fromhex(meta["root_check"]), aad_for("root-check", vault_id))
        except (DecryptionError, UnsealFailed, InvalidInput) as exc:
            self._safe_record(principal, "vault.unseal", "denied")
            if isinstance(exc, UnsealFailed):
                raise
            what = "passphrase" if meta.get("root_kind") == "passphrase" else "root key"
            raise UnsealFailed(f"wrong {what}: the vault stays sealed and nothing was changed") from None
        before = (self._keyring, self._root)
        self._load_keyring(vault_id, root, meta)
        try:
            self._safe_record(principal, "vault.unseal", "ok")
        except KeybrokerError:
            with self._lock:  # an unseal that cannot be audited does not happen (fail closed)
                self._keyring, self._root = before
            raise

    def _safe_record(self, principal: Principal, action: str, result: str) -> None:
        try:
            self.audit.record(principal, action, "vault", result=result)
        except KeybrokerError:
            if result == "ok":
                raise

    def _load_keyring(self, vault_id: str, root: bytes, meta: dict[str, str]) -> None:
        with self.store.connect() as conn:
            rows = conn.execute(sa.select(tables.keks).order_by(tables.keks.c.id)).all()
        keks = {int(r.id): Keyring.unwrap_kek(root, vault_id, int(r.id), r.wrapped) for r in rows}
        if not keks:
            raise DecryptionError("the vault holds no key-encryption key")
        target = meta.get("rekey_target")
        current = int(target) if target and int(target) in keks else max(keks)
        with self._lock:
            self._root = root
            self._keyring = Keyring(vault_id, root, keks, current)
            self._last_used = self.clock.now()

    def ensure_kek(self, kek_id: int, conn: Connection) -> None:
        """Load a KEK created since unseal (another replica's rekey) so reads keep working."""
        kr, root = self._keyring, self._root
        if kr is None or root is None or kr.has(kek_id):
            return
        rows = conn.execute(sa.select(tables.keks).where(tables.keks.c.id == kek_id)).all()
        for r in rows:
            kr.add_kek(int(r.id), Keyring.unwrap_kek(root, kr.vault_id, int(r.id), r.wrapped), False)

    def seal(self, principal: Principal) -> None:
        with self._lock:
            self._keyring = None
            self._root = None
        self._safe_record(principal, "vault.seal", "ok")

    @property
    def sealed(self) -> bool:
        self._check_idle()
        return self._keyring is None

    def _check_idle(self) -> None:
        if self._keyring is not None and self.auto_seal_after and self._last_used is not None:
            idle = (self.clock.now() - self._last_used).total_seconds()
            if idle >= self.auto_seal_after:
                with self._lock:
                    self._keyring = None
                    self._root = None

    def keyring(self) -> Keyring:
        """The unsealed keyring (touches the idle timer). Raises :class:`VaultSealed`."""
        self._check_idle()
        kr = self._keyring
        if kr is None:
            raise VaultSealed("the vault is sealed: run `keybroker unseal`")
        self._last_used = self.clock.now()
        return kr

    def root_key(self) -> bytes:
        """The root key, for caching an unseal session wrapped under a session key."""
        self.keyring()
        assert self._root is not None
        return self._root

    def status(self) -> dict[str, Any]:
        meta = self._meta(refresh=True)
        out: dict[str, Any] = {
            "initialized": "vault_id" in meta,
            "sealed": self.sealed,
            "store": self.store.dialect,
        }
        if "vault_id" in meta:
            out["vault_id"] = meta["vault_id"]
            out["root_kind"] = meta.get("root_kind")
            out["rekey_in_progress"] = "rekey_target" in meta
            with self.store.connect() as conn:
                out["keks"] = conn.execute(sa.select(sa.func.count()).select_from(tables.keks)).scalar_one()
                out["secrets"] = conn.execute(
                    sa.select(sa.func.count()).select_from(tables.secrets)
                ).scalar_one()
                head = conn.execute(sa.select(tables.audit_head.c.seq)).scalar()
            out["audit_records"] = int(head or 0)
            if self._keyring is not None:
                out["current_kek"] = self._keyring.current
        out["auto_seal_after"] = self.auto_seal_after
        return out

    # -- rekey ---------------------------------------------------------------------------------
    def rekey(
        self,
        principal: Principal,
        *,
        progress: Callable[[int, int], None] | None = None,
        batch: int = 500,
        stop_after_batches: int | None = None,
    ) -> RekeyResult:
        """Make a new KEK current and re-wrap every data key under it (values untouched).

        Each batch commits on its own and the target KEK is recorded first, so an interrupted
        rekey resumes (``rekey`` again) with the same KEK instead of starting another one.
        ``stop_after_batches`` exists to test interruption.
        """
        kr = self.keyring()
        root = self.root_key()
        vault_id = kr.vault_id
        meta = self._meta(refresh=True)
        resumed = "rekey_target" in meta and kr.has(int(meta["rekey_target"]))
        now = self.clock.now()
        if resumed:
            target = int(meta["rekey_target"])
        else:
            kek = new_key()
            with self.store.begin() as conn:
                target = int(conn.execute(sa.select(sa.func.max(tables.keks.c.id))).scalar_one() or 0) + 1
                conn.execute(
                    sa.insert(tables.keks).values(
                        id=target, wrapped=Keyring.wrap_kek(root, vault_id, target, kek), created_at=now
                    )
                )
                conn.execute(sa.insert(tables.meta).values(key="rekey_target", value=str(target)))
                self.audit.append(
                    conn, principal, "vault.rekey", "vault", result="started", detail={"kek_id": target}
                )
            kr.add_kek(target, kek)
        kr.current = target
        self._meta_cache = None
        sv, s, e, p, o = (
            tables.secret_versions,
            tables.secrets,
            tables.environments,
            tables.projects,
            tables.orgs,
        )
        pending_q = (
            sa.select(sa.func.count())
            .select_from(sv)
            .where(sv.c.kek_id != target, sv.c.wrapped_dek.is_not(None))
        )
        with self.store.connect() as conn:
            total = int(conn.execute(pending_q).scalar_one())
        done = 0
        batches = 0
        if progress:
            progress(0, total)
        while True:
            with self.store.begin() as conn:
                rows = conn.execute(
                    sa.select(
                        sv.c.secret_id,
                        sv.c.version,
                        sv.c.ciphertext,
                        sv.c.wrapped_dek,
                        sv.c.kek_id,
                        s.c.name,
                        e.c.name.label("env"),
                        p.c.name.label("project"),
                        o.c.name.label("org"),
                    )
                    .join(s, s.c.id == sv.c.secret_id)
                    .join(e, e.c.id == s.c.environment_id)
                    .join(p, p.c.id == e.c.project_id)
                    .join(o, o.c.id == p.c.org_id)
                    .where(sv.c.kek_id != target, sv.c.wrapped_dek.is_not(None))
                    .order_by(sv.c.secret_id, sv.c.version)
                    .limit(batch)
                ).all()
                for r in rows:
                    ctx = (r.org, r.project, r.env, r.name, int(r.version))
                    new = kr.rewrap(Sealed(r.ciphertext, r.wrapped_dek, int(r.kek_id)), ctx)
                    conn.execute(
                        sa.update(sv)
                        .where(sv.c.secret_id == r.secret_id, sv.c.version == r.version)
                        .values(wrapped_dek=new.wrapped_dek, kek_id=new.kek_id)
                    )
            done += len(rows)
            batches += 1
            if progress:
                progress(done, max(total, done))
            if len(rows) < batch:
                break
            if stop_after_batches is not None and batches >= stop_after_batches:
                return RekeyResult(target, done, resumed)
        with self.store.begin() as conn:
            conn.execute(
                sa.update(tables.keks)
                .where(tables.keks.c.id != target, tables.keks.c.retired_at.is_(None))
                .values(retired_at=now)
            )
            conn.execute(sa.delete(tables.meta).where(tables.meta.c.key == "rekey_target"))
            self.audit.append(
                conn,
                principal,
                "vault.rekey",
                "vault",
                result="ok",
                detail={"kek_id": target, "rewrapped": done, "resumed": resumed},
            )
        self._meta_cache = None
        return RekeyResult(target, done, resumed)
