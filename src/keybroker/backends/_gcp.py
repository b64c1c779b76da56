"""Google Secret Manager as a key store, through ``google-cloud-secret-manager``.

NOT VERIFIED AGAINST THE REAL SERVICE: tested against a local HTTP server that follows the
documented Secret Manager REST API (v1), with the client's REST transport. See docs/backends.md.

Names: secret ids allow letters, digits, ``_`` and ``-``; a keybroker path name maps ``/`` to
``--`` (so names containing ``--`` are refused). Versions are Secret Manager's integers; states
map ENABLED -> active, DISABLED -> deleted, DESTROYED -> destroyed. Labels: ``current`` is the
newest enabled version, ``previous`` the enabled one before it; there is no staging, so
``pending`` is refused. ``delete`` disables every enabled version and marks the secret with the
label ``keybroker-deleted`` (Secret Manager's own delete is immediate and final; this one can be
undone by enabling a version).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from google.api_core import exceptions as g_exc
from google.cloud import secretmanager
from google.protobuf import field_mask_pb2

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

__all__ = ["GcpSecretManagerStore", "open_gcp_url"]

T = TypeVar("T")
DELETED_LABEL = "keybroker-deleted"
_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_STATE = {"ENABLED": "active", "DISABLED": "deleted", "DESTROYED": "destroyed"}


def gcp_id(prefix: str, name: str) -> str:
    check_store_name(name)
    if "--" in name:
        raise InvalidName(f"{name!r} cannot be a Secret Manager id here ('--' stands for '/')")
    out = prefix + name.replace("/", "--")
    if not _ID.fullmatch(out):
        raise InvalidName(f"{name!r} cannot be a Secret Manager id (letters, digits, '_', '-', '/')")
    return out


def _state_name(v: Any) -> str:
    st = getattr(v, "state", None)
    return str(getattr(st, "name", st) or "")


class GcpSecretManagerStore:
    """The secrets of one Google Cloud project (optionally only ids starting with ``prefix``)."""

    kind = "gcp-sm"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current"}))

    def __init__(
        self,
        client: secretmanager.SecretManagerServiceClient,
        project: str,
        *,
        prefix: str = "",
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}|\d+", project):
            raise InvalidInput(f"{project!r} is not a Google Cloud project id or number")
        if prefix and not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
            raise InvalidInput("a Secret Manager id prefix is letters, digits, '_' and '-'")
        self.client = client
        self.project = project
        self.prefix = prefix
        self.retry = retry or RetryPolicy()
        self.timeout = timeout

    @classmethod
    def connect(
        cls,
        project: str,
        *,
        prefix: str = "",
        credentials: Any = None,
        api_endpoint: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
    ) -> GcpSecretManagerStore:
        """Credentials: given, else Application Default Credentials."""
        options = {"api_endpoint": api_endpoint} if api_endpoint else None
        client = secretmanager.SecretManagerServiceClient(
            credentials=credentials, transport="rest", client_options=options
        )
        return cls(client, project, prefix=prefix, retry=retry, timeout=timeout)

    def __repr__(self) -> str:
        return f"GcpSecretManagerStore({self.location()!r})"

    def location(self) -> str:
        return f"gcp-sm://{self.project}/{self.prefix}"

    def _secret_path(self, name: str) -> str:
        return f"projects/{self.project}/secrets/{gcp_id(self.prefix, name)}"

    def _call(self, fn: Callable[[], T], what: str, name: str, *, read: bool) -> T:
        def once() -> T:
            try:
                return fn()
            except g_exc.GoogleAPIError as exc:
                raise _translate(exc, what, name, self.location()) from exc
            except Exception as exc:
                from google.auth import exceptions as auth_exc
                from requests import RequestException

                if isinstance(exc, auth_exc.DefaultCredentialsError):
                    raise AuthenticationError("no Google credentials found (ADC)") from exc
                if isinstance(exc, auth_exc.GoogleAuthError):
                    raise AuthenticationError(
                        f"Google refused the credentials ({type(exc).__name__})"
                    ) from exc
                if isinstance(exc, RequestException):
                    raise StoreError(f"{self.location()} is unreachable ({type(exc).__name__})") from exc
                raise

        return (self.retry if read else NO_RETRY).call(once)

    def _kw(self) -> dict[str, Any]:
        # the client's own retries are off: reads retry here on throttling, writes never
        return {"retry": None, "timeout": self.timeout}

    # ------------------------------------------------------------------ protocol
    def _access(self, name: str, version: str) -> SecretValue:
        path = f"{self._secret_path(name)}/versions/{version}"
        resp = self._call(
            lambda: self.client.access_secret_version(name=path, **self._kw()), "read", name, read=True
        )
        return SecretValue(bytes(resp.payload.data))

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        if version is not None:
            if not version.isdigit():
                raise VersionNotFound(f"secret {name!r} has no version {version!r}")
            try:
                return self._access(name, version)
            except SecretNotFound:
                self.metadata(name)
                raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
            except SecretDeleted:
                raise VersionNotFound(f"version {version} of {name!r} is disabled or destroyed") from None
        lab = check_label(label)
        if lab == "pending":
            raise VersionNotFound(f"secret {name!r} has no pending version (Secret Manager has no staging)")
        if lab == "current":
            try:
                return self._access(name, "latest")
            except SecretDeleted:
                pass  # the newest version is disabled: fall back to the newest enabled one
            except SecretNotFound:
                self.metadata(name)  # SecretNotFound if there is no such secret
                raise SecretDeleted(f"secret {name!r} has no enabled version") from None
        live = [v for v in self.versions(name) if v.readable]
        want = -1 if lab == "current" else -2
        if len(live) < -want:
            if lab == "current":
                raise SecretDeleted(f"secret {name!r} in {self.location()} has no enabled version")
            raise VersionNotFound(f"secret {name!r} has no previous version")
        return self._access(name, live[want].version)

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        lab = check_label(label)
        if lab != "current":
            raise InvalidInput(f"Secret Manager has no {lab} stage: a new version always becomes current")
        path = self._secret_path(name)
        raw = as_secret(value).reveal_bytes()
        try:
            secret = self._call(
                lambda: self.client.get_secret(name=path, **self._kw()), "read", name, read=True
            )
            if DELETED_LABEL in dict(secret.labels):
                raise SecretDeleted(
                    f"secret {name!r} in {self.location()} is deleted (enable a version first)"
                )
        except SecretNotFound:
            try:
                self._call(
                    lambda: self.client.create_secret(
                        parent=f"projects/{self.project}",
                        secret_id=gcp_id(self.prefix, name),
                        secret=secretmanager.Secret(
                            replication=secretmanager.Replication(
                                automatic=secretmanager.Replication.Automatic()
                            )
                        ),
                        **self._kw(),
                    ),
                    "create",
                    name,
                    read=False,
                )
            except AlreadyExists:
                pass  # created meanwhile by someone else: add our version to it
        v = self._call(
            lambda: self.client.add_secret_version(
                parent=path, payload=secretmanager.SecretPayload(data=raw), **self._kw()
            ),
            "write",
            name,
            read=False,
        )
        return str(v.name).rsplit("/", 1)[-1]

    def delete(self, name: str) -> None:
        """Disable every enabled version and label the secret deleted (recoverable)."""
        path = self._secret_path(name)
        for v in self.versions(name):
            if v.readable:
                vpath = f"{path}/versions/{v.version}"
                self._call(
                    lambda vpath=vpath: self.client.disable_secret_version(name=vpath, **self._kw()),  # type: ignore[misc]
                    "delete",
                    name,
                    read=False,
                )
        self._call(
            lambda: self.client.update_secret(
                secret=secretmanager.Secret(name=path, labels={DELETED_LABEL: "true"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                **self._kw(),
            ),
            "delete",
            name,
            read=False,
        )

    def list(self, prefix: str = "") -> Names:
        def run() -> list[str]:
            out = []
            pager = self.client.list_secrets(parent=f"projects/{self.project}", **self._kw())
            for s in pager:
                sid = str(s.name).rsplit("/", 1)[-1]
                if not sid.startswith(self.prefix) or DELETED_LABEL in dict(s.labels):
                    continue
                name = sid[len(self.prefix) :].replace("--", "/")
                if name.startswith(prefix):
                    out.append(name)
            return sorted(out)

        return self._call(run, "list", prefix or "*", read=True)

    def versions(self, name: str) -> Versions:
        path = self._secret_path(name)

        def run() -> list[Any]:
            return list(self.client.list_secret_versions(parent=path, **self._kw()))

        vs = self._call(run, "list versions of", name, read=True)
        vs.sort(key=lambda v: int(str(v.name).rsplit("/", 1)[-1]))
        live = [v for v in vs if _state_name(v) == "ENABLED"]
        labels: dict[str, tuple[str, ...]] = {}
        if live:
            labels[str(live[-1].name)] = ("current",)
            if len(live) > 1:
                labels[str(live[-2].name)] = ("previous",)
        return [
            VersionInfo(
                str(v.name).rsplit("/", 1)[-1],
                v.create_time if getattr(v, "create_time", None) else None,
                labels.get(str(v.name), ()),
                _STATE.get(_state_name(v), "deleted"),
            )
            for v in vs
        ]

    def metadata(self, name: str) -> SecretInfo:
        path = self._secret_path(name)
        s = self._call(lambda: self.client.get_secret(name=path, **self._kw()), "describe", name, read=True)
        labels = dict(s.labels)
        deleted = DELETED_LABEL in labels
        current = None
        if not deleted:
            live = [v for v in self.versions(name) if v.readable]
            current = live[-1].version if live else None
        return SecretInfo(
            name,
            self.kind,
            current,
            s.create_time if getattr(s, "create_time", None) else None,
            None,
            "",
            {k: v for k, v in labels.items() if k != DELETED_LABEL},
            deleted or current is None,
        )

    def close(self) -> None:
        transport = getattr(self.client, "transport", None)
        close = getattr(transport, "close", None)
        if callable(close):
            close()


def _rest_status(exc: g_exc.GoogleAPIError) -> str:
    """The canonical status name of a REST error body ("FAILED_PRECONDITION"): over REST the
    client picks the exception class by HTTP status alone, and 400 covers several of them."""
    try:
        body = exc.response.json()  # type: ignore[attr-defined]
        return str(body.get("error", {}).get("status", ""))
    except Exception:  # noqa: BLE001 - no JSON body: nothing more to learn
        return ""


def _translate(exc: g_exc.GoogleAPIError, what: str, name: str, where: str) -> KeybrokerError:
    if isinstance(exc, g_exc.FailedPrecondition) or _rest_status(exc) == "FAILED_PRECONDITION":
        return SecretDeleted(f"the version of {name!r} asked for is disabled or destroyed")
    if isinstance(exc, g_exc.NotFound):
        return SecretNotFound(f"no secret {name!r} in {where}")
    if isinstance(exc, g_exc.Unauthenticated | g_exc.Unauthorized):
        return AuthenticationError(f"Google refused the credentials to {what} {name!r}")
    if isinstance(exc, g_exc.PermissionDenied | g_exc.Forbidden):
        return PermissionDenied(f"Google denied permission to {what} {name!r} in {where}")
    if isinstance(exc, g_exc.TooManyRequests | g_exc.ResourceExhausted):
        return throttled(f"Secret Manager is throttling requests ({what} {name!r})")
    if isinstance(exc, g_exc.AlreadyExists):
        return AlreadyExists(f"secret {name!r} already exists in {where}")
    if isinstance(exc, g_exc.InvalidArgument | g_exc.BadRequest):
        return InvalidInput(f"Secret Manager rejected the request to {what} {name!r}")
    return StoreError(f"Secret Manager failed to {what} {name!r} ({type(exc).__name__})")


def open_gcp_url(url: str, environ: Mapping[str, str], retry: RetryPolicy | None) -> GcpSecretManagerStore:
    """``gcp-sm://PROJECT/PREFIX?api_endpoint=...``; Application Default Credentials."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    unknown = set(params) - {"api_endpoint"}
    if unknown:
        raise InvalidInput(f"unknown gcp-sm:// option(s): {', '.join(sorted(unknown))}")
    if not parts.netloc:
        raise InvalidInput("a gcp-sm:// URL names the project: gcp-sm://my-project/prefix")
    return GcpSecretManagerStore.connect(
        parts.netloc, prefix=parts.path.strip("/"), api_endpoint=params.get("api_endpoint"), retry=retry
    )
