"""Azure Key Vault secrets as a key store, through ``azure-keyvault-secrets``.

NOT VERIFIED AGAINST THE REAL SERVICE: tested against a local HTTPS server that follows the
documented Key Vault REST API (7.x). See docs/backends.md.

Names: Key Vault allows only letters, digits and ``-``. A keybroker name maps to a Key Vault name
by ``/`` -> ``--`` and ``_`` -> ``-``, with the exact keybroker name kept in the tag
``keybroker-name`` (so ``list`` gives names back unchanged). Two names that map to the same Key
Vault name (``A_B`` and ``A-B``) are refused as a conflict rather than overwriting each other.

Versions are Key Vault's version ids. Labels: ``current`` is the newest enabled version (what Key
Vault returns without a version), ``previous`` the enabled one before it. There is no staging, so
``pending`` is refused. ``delete`` is Key Vault's soft delete (recoverable for the retention
period). Credentials: any ``azure.core`` token credential (``DefaultAzureCredential`` when none is
given: environment, managed identity, Azure CLI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from azure.core import exceptions as az_exc
from azure.keyvault.secrets import SecretClient

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
    AlreadyExists,
    AuthenticationError,
    InvalidInput,
    InvalidName,
    KeybrokerError,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

__all__ = ["AzureKeyVaultStore", "open_azure_url"]

T = TypeVar("T")
NAME_TAG = "keybroker-name"
_AZ_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")


def azure_name(prefix: str, name: str) -> str:
    check_store_name(name)
    out = prefix + name.replace("/", "--").replace("_", "-")
    if not _AZ_NAME.fullmatch(out):
        raise InvalidName(f"{name!r} cannot be a Key Vault secret name (letters, digits, '-', '_', '/')")
    return out


class AzureKeyVaultStore:
    """One Key Vault (optionally only names starting with ``prefix``)."""

    kind = "azure-kv"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current"}))

    def __init__(self, client: SecretClient, *, prefix: str = "", retry: RetryPolicy | None = None) -> None:
        if prefix and not re.fullmatch(r"[0-9A-Za-z-]*", prefix):
            raise InvalidInput("a Key Vault name prefix is letters, digits and '-'")
        self.client = client
        self.prefix = prefix
        self.retry = retry or RetryPolicy()

    @classmethod
    def connect(
        cls,
        vault_url: str,
        *,
        credential: Any = None,
        prefix: str = "",
        retry: RetryPolicy | None = None,
        **client_kwargs: Any,
    ) -> AzureKeyVaultStore:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = SecretClient(vault_url, credential, **client_kwargs)
        return cls(client, prefix=prefix, retry=retry)

    def __repr__(self) -> str:
        return f"AzureKeyVaultStore({self.location()!r})"

    def location(self) -> str:
        host = urlsplit(self.client.vault_url).netloc
        return f"azure-kv://{host}/{self.prefix}"

    def _call(self, fn: Callable[[], T], what: str, name: str, *, read: bool) -> T:
        def once() -> T:
            try:
                return fn()
            except az_exc.AzureError as exc:
                raise _translate(exc, what, name, self.location()) from exc

        return (self.retry if read else NO_RETRY).call(once)

    # ------------------------------------------------------------------ protocol
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        az = azure_name(self.prefix, name)
        if version is None:
            lab = check_label(label)
            if lab == "pending":
                raise VersionNotFound(f"secret {name!r} has no pending version (Key Vault has no staging)")
            if lab == "previous":
                live = [v for v in self.versions(name) if v.readable]
                if len(live) < 2:
                    raise VersionNotFound(f"secret {name!r} has no previous version")
                version = live[-2].version
        try:
            secret = self._call(lambda: self.client.get_secret(az, version), "read", name, read=True)
        except SecretNotFound:
            if version is not None:
                self.metadata(name)
                raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
            self._raise_if_deleted(az, name)
            raise
        if secret.properties.enabled is False:
            raise SecretDeleted(f"secret {name!r} is disabled in {self.location()}")
        return SecretValue(secret.value or "")

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        lab = check_label(label)
        if lab != "current":
            raise InvalidInput(f"Key Vault has no {lab} stage: a new version always becomes current")
        az = azure_name(self.prefix, name)
        try:
            existing = self._call(lambda: self.client.get_secret(az), "read", name, read=True)
            owner = (existing.properties.tags or {}).get(NAME_TAG)
            if owner is not None and owner != name:
                raise AlreadyExists(f"{name!r} and {owner!r} map to the same Key Vault name {az!r}")
        except (SecretNotFound, SecretDeleted):
            pass
        raw = as_secret(value).reveal_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("Key Vault secrets are text: this value is not UTF-8") from None
        secret = self._call(
            lambda: self.client.set_secret(az, text, tags={NAME_TAG: name}), "write", name, read=False
        )
        return str(secret.properties.version)

    def delete(self, name: str) -> None:
        """Key Vault's soft delete: recoverable until the retention period ends."""
        az = azure_name(self.prefix, name)
        poller = self._call(lambda: self.client.begin_delete_secret(az), "delete", name, read=False)
        self._call(lambda: poller.result(), "delete", name, read=True)

    def list(self, prefix: str = "") -> Names:
        def run() -> list[str]:
            out = []
            for p in self.client.list_properties_of_secrets():
                az = p.name or ""
                if not az.startswith(self.prefix) or p.enabled is False:
                    continue
                name = (p.tags or {}).get(NAME_TAG) or az[len(self.prefix) :].replace("--", "/")
                if name.startswith(prefix):
                    out.append(name)
            return sorted(out)

        return self._call(run, "list", prefix or "*", read=True)

    def versions(self, name: str) -> Versions:
        az = azure_name(self.prefix, name)

        def run() -> list[Any]:
            return list(self.client.list_properties_of_secret_versions(az))

        props = self._call(run, "list versions of", name, read=True)
        if not props:
            raise SecretNotFound(f"no secret {name!r} in {self.location()}")
        props.sort(key=lambda p: (p.created_on is None, p.created_on))
        live = [p for p in props if p.enabled is not False]
        labels = {}
        if live:
            labels[live[-1].version] = ("current",)
            if len(live) > 1:
                labels[live[-2].version] = ("previous",)
        return [
            VersionInfo(
                str(p.version),
                p.created_on,
                labels.get(p.version, ()),
                "active" if p.enabled is not False else "deleted",
            )
            for p in props
        ]

    def _raise_if_deleted(self, az: str, name: str) -> None:
        try:
            self._call(lambda: self.client.get_deleted_secret(az), "read", name, read=True)
        except (SecretNotFound, PermissionDenied):
            return
        raise SecretDeleted(f"secret {name!r} in {self.location()} is deleted (recoverable)")

    def metadata(self, name: str) -> SecretInfo:
        az = azure_name(self.prefix, name)
        try:
            s = self._call(lambda: self.client.get_secret(az), "describe", name, read=True)
        except SecretDeleted:
            return SecretInfo(name, self.kind, None, deleted=True)
        except SecretNotFound:
            try:
                self._raise_if_deleted(az, name)
            except SecretDeleted:
                return SecretInfo(name, self.kind, None, deleted=True)
            raise
        p = s.properties
        tags = {k: v for k, v in (p.tags or {}).items() if k != NAME_TAG}
        return SecretInfo(
            name, self.kind, p.version, p.created_on, p.updated_on, "", tags, p.enabled is False
        )

    def close(self) -> None:
        self.client.close()


def _translate(exc: az_exc.AzureError, what: str, name: str, where: str) -> KeybrokerError:
    if isinstance(exc, az_exc.ClientAuthenticationError):
        status = getattr(exc, "status_code", None)
        if status == 403:
            return PermissionDenied(f"Key Vault denied permission to {what} {name!r} in {where}")
        return AuthenticationError(f"Key Vault refused the credentials to {what} {name!r}")
    if isinstance(exc, az_exc.ResourceNotFoundError):
        return SecretNotFound(f"no secret {name!r} in {where}")
    if isinstance(exc, az_exc.HttpResponseError):
        status = exc.status_code or 0
        code = str(getattr(exc.error, "code", "") or "")
        if status == 429:
            return throttled(f"Key Vault is throttling requests ({what} {name!r})")
        inner = str(getattr(getattr(exc.error, "innererror", None), "get", lambda *_: "")("code") or "")
        text = str(getattr(exc.error, "message", "") or "").lower()
        if status == 409 and ("Deleted" in code or "Deleted" in inner or "deleted" in text):
            return SecretDeleted(f"secret {name!r} in {where} is deleted (recover or purge it first)")
        if status == 401:
            return AuthenticationError(f"Key Vault refused the credentials to {what} {name!r}")
        if status == 403:
            return PermissionDenied(f"Key Vault denied permission to {what} {name!r} in {where}")
        if status == 400:
            return InvalidInput(f"Key Vault rejected the request to {what} {name!r} ({code or 400})")
        return StoreError(f"Key Vault failed to {what} {name!r} ({code or status})")
    if isinstance(exc, az_exc.ServiceRequestError | az_exc.ServiceResponseError):
        return StoreError(f"{where} is unreachable ({type(exc).__name__})")
    return StoreError(f"Key Vault call to {what} {name!r} failed ({type(exc).__name__})")


def open_azure_url(url: str, environ: Mapping[str, str], retry: RetryPolicy | None) -> AzureKeyVaultStore:
    """``azure-kv://NAME.vault.azure.net/PREFIX``; credentials by ``DefaultAzureCredential``."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    if set(params) - {"ca_cert"}:
        raise InvalidInput(f"unknown azure-kv:// option(s): {', '.join(sorted(set(params) - {'ca_cert'}))}")
    if not parts.netloc:
        raise InvalidInput("an azure-kv:// URL names the vault host: azure-kv://myvault.vault.azure.net/")
    kwargs: dict[str, Any] = {}
    if "ca_cert" in params:
        kwargs["connection_verify"] = params["ca_cert"]
    return AzureKeyVaultStore.connect(
        f"https://{parts.netloc}", prefix=parts.path.strip("/"), retry=retry, **kwargs
    )
