"""Unseal sessions that outlive one CLI process, like ``op signin``.

Every CLI command is a new process, so an unsealed vault must be remembered somewhere between
them. ``keybroker unseal`` writes ``$KEYBROKER_HOME/session.json`` (mode 0600) holding the root
key AES-256-GCM-encrypted under a random 256-bit *session key* (AAD binds the vault id and the
session id), plus when it expires and when it was last used. The session key is kept apart from
that file: in a 0600 file under ``$XDG_RUNTIME_DIR/keybroker/`` (a tmpfs that dies with the
login session; fallback ``/tmp/keybroker-<uid>/``, which must be a 0700 directory we own), or
only in the caller's environment as ``KEYBROKER_SESSION`` (``unseal --print-session``). Either
file alone is useless. ``keybroker seal`` deletes both; an idle or expired session is deleted
by the first command that finds it so.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets as _random
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keybroker.core import Clock
from keybroker.crypto import aad_for, decrypt, encrypt, new_key
from keybroker.errors import DecryptionError, InvalidInput

__all__ = ["SESSION_PREFIX", "Session", "SessionInfo", "SessionStore", "write_private"]

SESSION_PREFIX = "kbs_"
SESSION_FILE = "session.json"
_FORMAT = 1


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (never through a symlink)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_random.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _parse_dt(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if isinstance(v, str) and v else None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What ``status`` shows about a session, read without decrypting anything."""

    vault_id: str
    root_kind: str
    created_at: datetime
    expires_at: datetime | None
    idle_timeout_s: float | None
    last_used: datetime
    key_source: str  # "file" or "env"

    def to_dict(self) -> dict[str, Any]:
        return {
            "vault_id": self.vault_id,
            "root_kind": self.root_kind,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "idle_timeout_minutes": self.idle_timeout_s / 60 if self.idle_timeout_s else None,
            "last_used": _iso(self.last_used),
            "key_source": self.key_source,
        }


@dataclass(frozen=True, slots=True)
class Session:
    """A loaded session: the root key (keep it short-lived) and its info."""

    root: bytes
    info: SessionInfo

    def __repr__(self) -> str:
        return f"Session(vault_id={self.info.vault_id!r}, [secret])"


class SessionStore:
    """Reads and writes the session file and the session key. ``env_token`` is the value of
    ``KEYBROKER_SESSION`` if set (it then takes the place of the key file)."""

    def __init__(self, home: Path, key_dir: Path, clock: Clock, env_token: str | None = None) -> None:
        self.home = home
        self.key_dir = key_dir
        self.clock = clock
        self.env_token = env_token

    @property
    def path(self) -> Path:
        return self.home / SESSION_FILE

    def key_path(self, vault_id: str) -> Path:
        return self.key_dir / f"{vault_id}.key"

    # -- writing -------------------------------------------------------------------------------
    def _private_key_dir(self) -> Path:
        d = self.key_dir
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = d.lstat()
        except OSError as exc:
            raise InvalidInput(f"cannot create the session key directory {d}: {exc.strerror}") from None
        uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise InvalidInput(f"the session key directory {d} is not a directory owned by you; remove it")
        if st.st_mode & 0o077:
            os.chmod(d, 0o700)
        return d

    def create(
        self,
        vault_id: str,
        root: bytes,
        root_kind: str,
        *,
        ttl_s: float | None,
        idle_s: float | None,
        key_in_env: bool = False,
    ) -> str:
        """Write a new session; returns the session token (``kbs_...``). Unless ``key_in_env``
        the session key is also written to the key file; otherwise only the caller gets it."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        session_key = new_key()
        session_id = _random.token_hex(16)
        now = self.clock.now()
        blob = encrypt(session_key, root, aad_for("keybroker-session", vault_id, session_id))
        doc = {
            "format": _FORMAT,
            "vault_id": vault_id,
            "session_id": session_id,
            "root_kind": root_kind,
            "created_at": _iso(now),
            "expires_at": _iso(now + timedelta(seconds=ttl_s)) if ttl_s else None,
            "idle_timeout_s": idle_s,
            "wrapped_root": base64.b64encode(blob).decode(),
        }
        token = SESSION_PREFIX + base64.urlsafe_b64encode(session_key).decode().rstrip("=")
        key_path = self.key_path(vault_id)
        if key_in_env:
            _unlink(key_path)
        else:
            write_private(self._private_key_dir() / key_path.name, token.encode() + b"\n")
        write_private(self.path, json.dumps(doc, indent=2).encode() + b"\n")
        return token

    def delete(self, vault_id: str | None = None) -> bool:
        """Remove the session file and the session key file. True if anything was removed."""
        removed = False
        doc = self._read_doc()
        ids = {vault_id} if vault_id else set()
        if doc and isinstance(doc.get("vault_id"), str):
            ids.add(doc["vault_id"])
        for vid in ids:
            removed |= _unlink(self.key_path(vid))
        removed |= _unlink(self.path)
        return removed

    # -- reading -------------------------------------------------------------------------------
    def _read_doc(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _info(self, doc: dict[str, Any]) -> SessionInfo:
        # the file's mtime is the last use (see load)
        try:
            last_used = datetime.fromtimestamp(self.path.stat().st_mtime, UTC)
        except OSError:
            last_used = self.clock.now()
        return SessionInfo(
            vault_id=str(doc["vault_id"]),
            root_kind=str(doc.get("root_kind", "?")),
            created_at=_parse_dt(doc.get("created_at")) or self.clock.now(),
            expires_at=_parse_dt(doc.get("expires_at")),
            idle_timeout_s=float(doc["idle_timeout_s"]) if doc.get("idle_timeout_s") else None,
            last_used=last_used,
            key_source="env" if self.env_token else "file",
        )

    def _expired(self, info: SessionInfo) -> str | None:
        now = self.clock.now()
        if info.expires_at is not None and now >= info.expires_at:
            return "the unseal session expired"
        if info.idle_timeout_s and (now - info.last_used).total_seconds() >= info.idle_timeout_s:
            minutes = info.idle_timeout_s / 60
            return f"auto-sealed after {minutes:g} minute{'s' if minutes != 1 else ''} idle"
        return None

    def peek(self, vault_id: str) -> tuple[SessionInfo | None, str | None]:
        """(info, None) for a live session of this vault, else (None, why not). Deletes an
        expired session. Decrypts nothing and does not count as use."""
        doc = self._read_doc()
        if doc is None:
            return None, None
        if doc.get("format") != _FORMAT or doc.get("vault_id") != vault_id:
            return None, "the session file belongs to another vault or is damaged"
        try:
            info = self._info(doc)
        except (KeyError, ValueError, TypeError):
            return None, "the session file is damaged"
        why = self._expired(info)
        if why:
            self.delete(vault_id)
            return None, why
        return info, None

    @staticmethod
    def _decode_token(token: str) -> bytes | None:
        token = token.strip()
        if not token.startswith(SESSION_PREFIX):
            return None
        body = token[len(SESSION_PREFIX) :]
        try:
            key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        return key if len(key) == 32 else None

    def _session_keys(self, vault_id: str) -> tuple[list[bytes], str]:
        """Candidate session keys (KEYBROKER_SESSION first, then the key file) and, should
        none work, why."""
        keys: list[bytes] = []
        why = "the session key is missing"
        if self.env_token:
            key = self._decode_token(self.env_token)
            if key is None:
                why = "KEYBROKER_SESSION is malformed"
            else:
                keys.append(key)
        try:
            file_key = self._decode_token(self.key_path(vault_id).read_text())
        except OSError:
            file_key = None
        if file_key is not None:
            keys.append(file_key)
        return keys, why

    def load(self, vault_id: str, *, touch: bool = True) -> tuple[Session | None, str | None]:
        """(session, None) or (None, why there is none). ``touch`` records this use, which
        restarts the idle timer."""
        info, why = self.peek(vault_id)
        if info is None:
            return None, why
        doc = self._read_doc() or {}
        keys, why = self._session_keys(vault_id)
        aad = aad_for("keybroker-session", vault_id, str(doc.get("session_id", "")))
        try:
            blob = base64.b64decode(str(doc.get("wrapped_root", "")))
        except (binascii.Error, ValueError):
            return None, "the session file is damaged"
        root = None
        for key in keys:
            try:
                root = decrypt(key, blob, aad)
                break
            except DecryptionError:
                why = "the session key does not match the session (stale KEYBROKER_SESSION?)"
        if root is None:
            return None, why
        if touch:
            # The file's mtime is the idle timer. Touching it (rather than rewriting the file)
            # cannot resurrect a session that `seal` deleted meanwhile.
            ts = self.clock.now().timestamp()
            with contextlib.suppress(OSError):
                os.utime(self.path, (ts, ts))
        return Session(root, info), None
