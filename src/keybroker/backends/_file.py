"""A single encrypted file as a key store: portable, for edge and offline use.

Same crypto as the core vault: a root key from a passphrase (Argon2id, parameters kept in the
file), a key file or a raw key; a key-encryption key wrapped by the root key; a fresh data key
per secret version (:class:`keybroker.crypto.Keyring`), with the file id, name and version bound
into the AAD. Names and version numbers are in clear (as in the core's database); values never
are. The whole document carries an HMAC under a subkey of the root, so labels, version lists and
names cannot be edited unnoticed: any mismatch is a :class:`DecryptionError`.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the old file
(and the directory fsynced), so a crash leaves either the old or the new file, never half of one.
A lock file serialises writers between processes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from keybroker.backends._base import (
    LABELS,
    Names,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    as_secret,
    check_label,
    check_store_name,
)
from keybroker.backends._fs import atomic_write
from keybroker.core import Clock, RootKeySource, SystemClock
from keybroker.crypto import (
    Keyring,
    Sealed,
    SecretValue,
    aad_for,
    constant_time_equal,
    decrypt,
    encrypt,
    keyed_hash,
    new_key,
)
from keybroker.errors import (
    DecryptionError,
    InvalidInput,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    UnsealFailed,
    VersionNotFound,
)

try:  # POSIX advisory locks; elsewhere a single process is assumed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["EncryptedFileStore"]

FORMAT = "keybroker-file/1"
_CHECK = b"keybroker-file-root-check-v1"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


class EncryptedFileStore:
    """Secrets in one file at ``path``, encrypted under ``root`` (a core root-key source:
    :class:`~keybroker.core.PassphraseRoot`, :class:`~keybroker.core.KeyFileRoot`,
    :class:`~keybroker.core.RawRoot`).

    Versions are integers; labels are keybroker's current/previous/pending. ``delete`` marks the
    secret deleted (its versions stay in the file; like the core, a deleted secret refuses new
    writes). The file is created on the first write when ``create`` is true; until then the
    store is empty."""

    kind = "file"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current", "pending"}))

    def __init__(
        self, path: str | Path, root: RootKeySource, *, create: bool = True, clock: Clock | None = None
    ) -> None:
        self.path = Path(path)
        self._root_source = root
        self._create = create
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._keyring: Keyring | None = None
        self._keyring_for: tuple[str, str] | None = None  # (file_id, root params) it was derived for

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.path)!r})"

    def location(self) -> str:
        return f"file://{self.path.resolve()}"

    # ------------------------------------------------------------------ file I/O
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        with self._lock:
            if fcntl is None or (not exclusive and not self.path.parent.exists()):
                yield
                return
            lock_path = self.path.with_name(self.path.name + ".lock")
            try:
                if exclusive:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _read_doc(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DecryptionError(f"{self.path} is not a keybroker secrets file (corrupted?)") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidInput(f"{self.path} is not a keybroker secrets file (format {FORMAT})")
        kr = self._keyring_of(doc)
        mac = keyed_hash(kr.subkey("file-mac"), _canonical(doc))
        if not constant_time_equal(mac, str(doc.get("mac", ""))):
            raise DecryptionError(f"{self.path} failed its integrity check (tampered with or corrupted)")
        return doc

    def _write_doc(self, doc: dict[str, Any]) -> None:
        kr = self._keyring_of(doc)
        doc["mac"] = keyed_hash(kr.subkey("file-mac"), _canonical(doc))
        atomic_write(self.path, json.dumps(doc, sort_keys=True, indent=1).encode("utf-8"))

    def _new_doc(self) -> dict[str, Any]:
        file_id = uuid.uuid4().hex
        root, params = self._root_source.create(file_id)
        kek = new_key()
        now = self._clock.now().isoformat()
        doc: dict[str, Any] = {
            "format": FORMAT,
            "file_id": file_id,
            "created_at": now,
            "root": {"kind": self._root_source.kind, "params": params},
            "root_check": _b64(encrypt(root, _CHECK, aad_for("file-root-check", file_id))),
            "keks": {"1": _b64(Keyring.wrap_kek(root, file_id, 1, kek))},
            "current_kek": 1,
            "secrets": {},
        }
        self._keyring = Keyring(file_id, root, {1: kek}, 1)
        self._keyring_for = (file_id, json.dumps(params, sort_keys=True))
        return doc

    def _keyring_of(self, doc: dict[str, Any]) -> Keyring:
        file_id = str(doc["file_id"])
        params = doc["root"].get("params") or {}
        key = (file_id, json.dumps(params, sort_keys=True))
        if self._keyring is not None and self._keyring_for == key:
            return self._keyring
        try:
            root = self._root_source.derive(file_id, params)
            decrypt(root, _unb64(doc["root_check"]), aad_for("file-root-check", file_id))
            keks = {
                int(i): Keyring.unwrap_kek(root, file_id, int(i), _unb64(w)) for i, w in doc["keks"].items()
            }
        except (DecryptionError, InvalidInput, ValueError, KeyError, TypeError):
            what = "passphrase" if doc["root"].get("kind") == "passphrase" else "key"
            raise UnsealFailed(f"wrong {what} for {self.path}: nothing was read or changed") from None
        self._keyring = Keyring(file_id, root, keks, int(doc["current_kek"]))
        self._keyring_for = key
        return self._keyring

    def _load(self) -> dict[str, Any]:
        with self._locked(exclusive=False):
            doc = self._read_doc()
        return doc if doc is not None else {"secrets": {}}

    # ------------------------------------------------------------------ protocol
    def _secret(self, doc: dict[str, Any], name: str, *, allow_deleted: bool = False) -> dict[str, Any]:
        s: dict[str, Any] | None = doc["secrets"].get(name)
        if s is None:
            raise SecretNotFound(f"no secret {name!r} in {self.path}")
        if s.get("deleted") and not allow_deleted:
            raise SecretDeleted(f"secret {name!r} in {self.path} is deleted")
        return s

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        doc = self._load()
        s = self._secret(doc, name)
        if version is None:
            lab = check_label(label)
            n = s.get(lab)
            if n is None:
                raise VersionNotFound(f"secret {name!r} has no {lab} version")
            version = str(n)
        v = s["versions"].get(version)
        if v is None:
            raise VersionNotFound(f"secret {name!r} has no version {version!r}")
        kr = self._keyring_of(doc)
        try:
            raw = kr.open(
                Sealed(_unb64(v["ct"]), _unb64(v["dek"]), int(v["kek"])), ("file", name, int(version))
            )
        except (DecryptionError, ValueError, KeyError) as exc:
            raise DecryptionError(
                f"secret {name!r} version {version} in {self.path} could not be decrypted", name=name
            ) from exc
        return SecretValue(raw)

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        check_store_name(name)
        lab = check_label(label, ("current", "pending"))
        raw = as_secret(value).reveal_bytes()
        with self._locked(exclusive=True):
            doc = self._read_doc()
            if doc is None:
                if not self._create:
                    raise StoreError(f"{self.path} does not exist (and creating it was not asked for)")
                doc = self._new_doc()
            kr = self._keyring_of(doc)
            now = self._clock.now().isoformat()
            s = doc["secrets"].get(name)
            if s is None:
                if lab == "pending":
                    raise SecretNotFound(f"no secret {name!r} to stage a pending version for")
                s = doc["secrets"][name] = {
                    "created_at": now,
                    "versions": {},
                    "current": None,
                    "previous": None,
                    "pending": None,
                }
            elif s.get("deleted"):
                raise SecretDeleted(f"secret {name!r} in {self.path} is deleted")
            n = max((int(k) for k in s["versions"]), default=0) + 1
            sealed = kr.seal(raw, ("file", name, n))
            s["versions"][str(n)] = {
                "created_at": now,
                "ct": _b64(sealed.ciphertext),
                "dek": _b64(sealed.wrapped_dek),
                "kek": sealed.kek_id,
            }
            s["updated_at"] = now
            if lab == "current":
                s["previous"], s["current"], s["pending"] = s["current"], n, None
            else:
                s["pending"] = n
            self._write_doc(doc)
            return str(n)

    def promote(self, name: str) -> None:
        with self._locked(exclusive=True):
            doc = self._read_doc() or {"secrets": {}}
            s = self._secret(doc, name)
            if s.get("pending") is None:
                raise VersionNotFound(f"secret {name!r} has no pending version to promote")
            s["previous"], s["current"], s["pending"] = s["current"], s["pending"], None
            s["updated_at"] = self._clock.now().isoformat()
            self._write_doc(doc)

    def delete(self, name: str) -> None:
        with self._locked(exclusive=True):
            doc = self._read_doc() or {"secrets": {}}
            s = self._secret(doc, name)
            s["deleted"] = True
            s["updated_at"] = self._clock.now().isoformat()
            self._write_doc(doc)

    def list(self, prefix: str = "") -> Names:
        doc = self._load()
        return sorted(n for n, s in doc["secrets"].items() if not s.get("deleted") and n.startswith(prefix))

    def versions(self, name: str) -> Versions:
        s = self._secret(self._load(), name, allow_deleted=True)
        out = []
        for k in sorted(s["versions"], key=int):
            labels = tuple(lab for lab in LABELS if s.get(lab) == int(k))
            out.append(VersionInfo(k, datetime.fromisoformat(s["versions"][k]["created_at"]), labels))
        return out

    def metadata(self, name: str) -> SecretInfo:
        s = self._secret(self._load(), name, allow_deleted=True)
        cur = s.get("current")
        return SecretInfo(
            name,
            self.kind,
            str(cur) if cur is not None else None,
            datetime.fromisoformat(s["created_at"]),
            datetime.fromisoformat(s.get("updated_at") or s["created_at"]),
            deleted=bool(s.get("deleted")),
        )

    def close(self) -> None:
        self._keyring = None
        self._keyring_for = None
