"""HashiCorp Vault / OpenBao KV version 2 as a key store, through ``hvac``.

Layout: secret ``NAME`` lives at ``<mount>/data/<prefix>/NAME`` with its value in one field
(``value`` by default). Secrets written by other tools with several fields are read as the field
named ``value``, else their only field, else the whole map as JSON (sorted keys).

Versions map one to one (KV's integers). Labels: ``current`` is KV's current version (the latest,
unless it is deleted); ``previous`` is the newest live version before it. KV has no staging, so
``put(label="pending")`` is refused (InvalidInput) rather than silently made current.

Auth: a token, or AppRole (role id + secret id, logged in at connect). Vault answers 403 both
for a bad token and for a missing policy, so a 403 is classified by asking ``lookup-self``:
if the token itself is refused it is :class:`AuthenticationError`, else :class:`PermissionDenied`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvac_exc
import requests

from keybroker.backends._base import (
    NO_RETRY,
    Names,
    RetryPolicy,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    as_secret,
    check_label,
    check_store_name,
    throttled,
)
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AuthenticationError,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

__all__ = ["VaultKVStore"]

T = TypeVar("T")


def _parse_time(s: Any) -> datetime | None:
    if not s:
        return None
    text = str(s)
    # Vault prints nanoseconds; Python's fromisoformat takes at most microseconds.
    if "." in text:
        head, _, frac = text.partition(".")
        digits = "".join(c for c in frac if c.isdigit())
        tz = frac[len(digits) :]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class VaultKVStore:
    """A KV v2 mount (optionally under a path prefix, in a namespace) as a key store.

    Build with :meth:`connect` (which authenticates and checks the mount is KV v2) or pass a
    ready ``hvac.Client``. Reads are retried with back-off when Vault answers 429; writes never
    are. Raises the protocol's errors; see :class:`~keybroker.backends.KeyStore`."""

    kind = "vault"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current"}))

    def __init__(
        self,
        client: hvac.Client,
        *,
        mount: str = "secret",
        prefix: str = "",
        field: str = "value",
        retry: RetryPolicy | None = None,
        check_mount: bool = True,
        reauth: Callable[[hvac.Client], None] | None = None,
    ) -> None:
        self.client = client
        self.mount = mount.strip("/")
        self.prefix = prefix.strip("/")
        self.field = field
        self.retry = retry or RetryPolicy()
        self._reauth = reauth
        if not self.mount:
            raise InvalidInput("a Vault mount path is required (for example 'secret')")
        if check_mount:
            self.check_kv2()

    # ------------------------------------------------------------------ construction
    @classmethod
    def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str = "approle",
        namespace: str | None = None,
        mount: str = "secret",
        prefix: str = "",
        field: str = "value",
        verify: bool | str = True,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> VaultKVStore:
        """Authenticate (token, or AppRole when ``role_id`` is given) and check the mount.

        Raises AuthenticationError (wrong token or AppRole credentials), StoreError
        (unreachable), InvalidInput (the mount is not KV v2)."""
        client = hvac.Client(url=url, namespace=namespace or None, verify=verify, timeout=timeout)
        where = f"Vault at {url}"
        reauth: Callable[[hvac.Client], None] | None = None
        if role_id:
            if not secret_id:
                raise InvalidInput("AppRole login needs a secret id as well as a role id")

            def reauth(c: hvac.Client) -> None:
                try:
                    c.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=approle_mount)
                except hvac_exc.VaultError as exc:
                    if isinstance(exc, hvac_exc.InvalidRequest | hvac_exc.Forbidden | hvac_exc.Unauthorized):
                        raise AuthenticationError(
                            f"AppRole login to {where} was refused (wrong role id or secret id)"
                        ) from exc
                    raise _translate(exc, "log in to", where) from exc
                except requests.RequestException as exc:
                    raise _unreachable(exc, where) from exc

            reauth(client)
        elif token:
            client.token = token
        else:
            raise AuthenticationError(f"no Vault credentials: give a token or an AppRole role id ({where})")
        store = cls(
            client, mount=mount, prefix=prefix, field=field, retry=retry, check_mount=False, reauth=reauth
        )
        store._check_token()
        store.check_kv2()
        return store

    def __repr__(self) -> str:
        return f"VaultKVStore({self.location()!r})"

    def location(self) -> str:
        base = str(getattr(self.client.adapter, "base_uri", "vault"))
        host = base.split("://", 1)[-1]
        ns = getattr(self.client.adapter, "namespace", None)
        q = f"?namespace={ns}" if ns else ""
        return f"vault://{host}/{self.mount}/{self.prefix}{q}".replace("//?", "/?")

    # ------------------------------------------------------------------ checks
    def _check_token(self) -> None:
        try:
            self.client.auth.token.lookup_self()
        except hvac_exc.Forbidden as exc:
            raise AuthenticationError(f"{self.location()} refused the token (wrong or expired)") from exc
        except hvac_exc.VaultError as exc:
            raise _translate(exc, "check the token with", self.location()) from exc
        except requests.RequestException as exc:
            raise _unreachable(exc, self.location()) from exc

    def check_kv2(self) -> None:
        """Raise InvalidInput unless the mount is a KV version 2 engine."""
        try:
            resp = self._call(
                lambda: self.client.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}"),
                "look up the mount at",
                self.mount,
                read=True,
            )
        except PermissionDenied as exc:
            raise InvalidInput(
                f"no KV v2 engine that this token may use is mounted at {self.mount!r}/",
                mount=self.mount,
            ) from exc
        data = (resp or {}).get("data") or {}
        kind = data.get("type")
        version = str((data.get("options") or {}).get("version") or "1")
        if kind not in ("kv", "generic") or version != "2":
            what = f"a KV version {version} engine" if kind in ("kv", "generic") else f"a {kind!r} engine"
            raise InvalidInput(
                f"{self.mount!r}/ is {what}, not KV version 2: enable one with "
                f"`bao secrets enable -path={self.mount} kv-v2` or pick another mount",
                mount=self.mount,
            )

    # ------------------------------------------------------------------ plumbing
    def _path(self, name: str) -> str:
        check_store_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, fn: Callable[[], T], what: str, name: str, *, read: bool) -> T:
        """Run one hvac call, translating its errors; reads retry on 429 (writes never)."""

        def once() -> T:
            try:
                return fn()
            except hvac_exc.RateLimitExceeded as exc:
                raise throttled(f"Vault is throttling requests ({what} {name!r})") from exc
            except hvac_exc.Forbidden as exc:
                err = self._classify_forbidden(exc, what, name)
                if not (isinstance(err, AuthenticationError) and self._reauth is not None):
                    raise err from exc
            except hvac_exc.VaultError as exc:
                raise _translate(exc, what, f"{name!r} in {self.location()}") from exc
            except requests.RequestException as exc:
                raise _unreachable(exc, self.location()) from exc
            # The AppRole token expired: a 403 means nothing was applied, so log in again and
            # repeat the call once (safe for writes too).
            assert self._reauth is not None
            self._reauth(self.client)
            try:
                return fn()
            except hvac_exc.Forbidden as exc:
                raise self._classify_forbidden(exc, what, name) from exc
            except hvac_exc.VaultError as exc:
                raise _translate(exc, what, f"{name!r} in {self.location()}") from exc
            except requests.RequestException as exc:
                raise _unreachable(exc, self.location()) from exc

        return (self.retry if read else NO_RETRY).call(once)

    def _classify_forbidden(self, exc: hvac_exc.Forbidden, what: str, name: str) -> KeybrokerError:
        try:
            self.client.auth.token.lookup_self()
        except hvac_exc.Forbidden:
            return AuthenticationError(f"{self.location()} refused the token (wrong or expired)")
        except (hvac_exc.VaultError, requests.RequestException):
            pass
        return PermissionDenied(f"Vault denied permission to {what} {name!r} in {self.location()}")

    def _value_of(self, name: str, data: dict[str, Any]) -> SecretValue:
        if self.field in data and isinstance(data[self.field], str):
            return SecretValue(data[self.field])
        b64 = data.get(f"{self.field}_b64")
        if isinstance(b64, str) and len(data) == 1:
            try:
                return SecretValue(base64.b64decode(b64, validate=True))
            except binascii.Error:
                pass
        if len(data) == 1:
            (only,) = data.values()
            if isinstance(only, str):
                return SecretValue(only)
        return SecretValue(json.dumps(data, sort_keys=True, separators=(",", ":")))

    def _read(self, name: str, version: int | None) -> dict[str, Any]:
        path = self._path(name)
        resp = self._call(
            lambda: self.client.secrets.kv.v2.read_secret_version(
                path=path, version=version, mount_point=self.mount, raise_on_deleted_version=False
            ),
            "read",
            name,
            read=True,
        )
        body: dict[str, Any] = (resp or {}).get("data") or {}
        return body

    def _meta(self, name: str) -> dict[str, Any]:
        path = self._path(name)
        resp = self._call(
            lambda: self.client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=self.mount),
            "read metadata of",
            name,
            read=True,
        )
        meta: dict[str, Any] = (resp or {}).get("data") or {}
        return meta

    @staticmethod
    def _alive(v: dict[str, Any]) -> bool:
        return not v.get("destroyed") and not v.get("deletion_time")

    def _previous(self, meta: dict[str, Any]) -> int | None:
        cur = int(meta.get("current_version") or 0)
        versions = meta.get("versions") or {}
        live = [int(k) for k, v in versions.items() if int(k) < cur and self._alive(v)]
        return max(live) if live else None

    # ------------------------------------------------------------------ protocol
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        if version is not None:
            try:
                n: int | None = int(version)
            except ValueError:
                raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
        else:
            lab = check_label(label)
            if lab == "pending":
                raise VersionNotFound(f"secret {name!r} has no pending version (KV v2 has no staging)")
            n = None
            if lab == "previous":
                n = self._previous(self._meta(name))
                if n is None:
                    raise VersionNotFound(f"secret {name!r} has no previous version")
        try:
            body = self._read(name, n)
        except SecretNotFound:
            meta = self._meta(name)  # SecretNotFound if the whole secret is missing
            if n is None:
                raise SecretDeleted(
                    f"the current version of {name!r} in {self.location()} is deleted or destroyed"
                ) from None
            v = (meta.get("versions") or {}).get(str(n))
            if v is None:
                raise VersionNotFound(f"secret {name!r} has no version {n}") from None
            state = "destroyed" if v.get("destroyed") else "deleted"
            raise VersionNotFound(f"version {n} of {name!r} is {state}", state=state) from None
        data = body.get("data")
        if data is None:
            meta = body.get("metadata") or {}
            if n is None:
                raise SecretDeleted(f"the current version of {name!r} in {self.location()} is deleted")
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise VersionNotFound(f"version {n} of {name!r} is {state}", state=state)
        return self._value_of(name, data)

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        lab = check_label(label)
        if lab != "current":
            raise InvalidInput(f"Vault KV v2 has no {lab} stage: a new version always becomes current")
        path = self._path(name)
        raw = as_secret(value).reveal_bytes()
        try:
            payload = {self.field: raw.decode("utf-8")}
        except UnicodeDecodeError:
            payload = {f"{self.field}_b64": base64.b64encode(raw).decode("ascii")}
        resp = self._call(
            lambda: self.client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=payload, mount_point=self.mount
            ),
            "write",
            name,
            read=False,
        )
        return str(((resp or {}).get("data") or {}).get("version", ""))

    def delete(self, name: str) -> None:
        """Soft-delete the current version (``kv delete``): recoverable with ``kv undelete``."""
        self._meta(name)
        path = self._path(name)
        self._call(
            lambda: self.client.secrets.kv.v2.delete_latest_version_of_secret(
                path=path, mount_point=self.mount
            ),
            "delete",
            name,
            read=False,
        )

    def list(self, prefix: str = "") -> Names:
        """Every secret under the store's prefix (walking sub-folders), sorted."""
        out: list[str] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            folder = "/".join(p for p in (self.prefix, rel.rstrip("/")) if p)
            try:
                resp = self._call(
                    functools.partial(
                        self.client.secrets.kv.v2.list_secrets, path=folder, mount_point=self.mount
                    ),
                    "list",
                    folder or "/",
                    read=True,
                )
            except SecretNotFound:
                continue
            for key in (resp or {}).get("data", {}).get("keys", []):
                full = f"{rel}{key}"
                if key.endswith("/"):
                    if full.startswith(prefix) or prefix.startswith(full):
                        stack.append(full)
                elif full.startswith(prefix):
                    out.append(full)
        return sorted(out)

    def versions(self, name: str) -> Versions:
        meta = self._meta(name)
        cur = int(meta.get("current_version") or 0)
        prev = self._previous(meta)
        out = []
        for k, v in sorted((meta.get("versions") or {}).items(), key=lambda kv: int(kv[0])):
            n = int(k)
            labels: tuple[str, ...] = ()
            if self._alive(v) and n == cur:
                labels = ("current",)
            elif n == prev:
                labels = ("previous",)
            state = "destroyed" if v.get("destroyed") else ("deleted" if v.get("deletion_time") else "active")
            out.append(VersionInfo(str(n), _parse_time(v.get("created_time")), labels, state))
        return out

    def metadata(self, name: str) -> SecretInfo:
        meta = self._meta(name)
        cur = int(meta.get("current_version") or 0)
        versions = meta.get("versions") or {}
        alive = cur > 0 and self._alive(versions.get(str(cur), {}))
        return SecretInfo(
            name=name,
            store=self.kind,
            current_version=str(cur) if alive else None,
            created_at=_parse_time(meta.get("created_time")),
            updated_at=_parse_time(meta.get("updated_time")),
            tags={str(k): str(v) for k, v in (meta.get("custom_metadata") or {}).items()},
            deleted=not alive,
        )

    def close(self) -> None:
        adapter = getattr(self.client, "adapter", None)
        session = getattr(adapter, "session", None)
        if session is not None:
            session.close()


def _translate(exc: hvac_exc.VaultError, what: str, where: str) -> KeybrokerError:
    """hvac's exception (by HTTP status) to ours. Vault's own error text names paths and
    reasons, never values; we still keep only our own words plus the status class."""
    if isinstance(exc, hvac_exc.InvalidPath):
        return SecretNotFound(f"nothing at {where}")
    if isinstance(exc, hvac_exc.Unauthorized):
        return AuthenticationError(f"Vault refused the credentials to {what} {where}")
    if isinstance(exc, hvac_exc.Forbidden):
        return PermissionDenied(f"Vault denied permission to {what} {where}")
    if isinstance(exc, hvac_exc.InvalidRequest):
        reason = "; ".join(str(e) for e in (exc.errors or []))[:200]
        return InvalidInput(f"Vault rejected the request to {what} {where}: {reason or 'bad request'}")
    if isinstance(exc, hvac_exc.VaultDown):
        return StoreError(f"Vault is sealed or in maintenance; could not {what} {where}")
    if isinstance(exc, hvac_exc.PreconditionFailed):
        return StoreError(f"Vault is not ready (a standby node?); could not {what} {where}")
    return StoreError(f"Vault failed to {what} {where} ({type(exc).__name__})")


def _unreachable(exc: requests.RequestException, where: str) -> StoreError:
    kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
    return StoreError(f"{where} {kind} ({type(exc).__name__})")
