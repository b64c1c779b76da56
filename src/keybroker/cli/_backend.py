"""The one seam between the secret commands and where secrets live.

:class:`SecretsBackend` is what ``secret ...``, ``import``, ``export`` and ``run`` call. The
:class:`LocalBackend` drives core's :class:`~keybroker.core.SecretService` over the local vault
(as the CLI always did); the :class:`RemoteBackend` drives the SDK :class:`keybroker.Client`
against ``keybroker serve`` (``--addr``/``KEYBROKER_ADDR`` with ``KEYBROKER_TOKEN`` or
``KEYBROKER_TOKEN_FILE``). Both hand back core's data types, so every command prints the same
text tables and JSON whichever it talks to; the server's errors come back as the same
:mod:`keybroker.errors` classes, so the CLI's error boundary reports them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from keybroker.core import Principal, Scope, SecretMeta, SecretRead, SecretService, VersionMeta
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput

if TYPE_CHECKING:
    from keybroker.client import Client

__all__ = [
    "DEFAULT_GATEWAY_URL",
    "LocalBackend",
    "ProxyEnvironment",
    "RemoteBackend",
    "SecretsBackend",
    "meta_from_dict",
    "version_from_dict",
]


#: where ``keybroker run`` points proxy-only secrets of a local vault (``keybroker serve``'s /gw)
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8270/gw"


@dataclass(frozen=True, slots=True)
class ProxyEnvironment:
    """What a child gets instead of proxy-only values: a proxy token per secret name, and the
    variables pointing the providers' SDKs at the gateway (``OPENAI_BASE_URL``, ...)."""

    tokens: dict[str, SecretValue]
    extra: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ProxyEnvironment(names={sorted(self.tokens)}, extra={sorted(self.extra)}, tokens=[secret])"


class SecretsBackend(Protocol):
    """What the secret commands need, wherever the secrets are."""

    #: True when talking to a server (which audits on its side)
    remote: bool

    def put(
        self,
        scope: Scope,
        name: str,
        value: SecretValue,
        *,
        cas: int | None = None,
        action: str = "secret.write",
        **metadata: Any,
    ) -> SecretMeta: ...

    def get(
        self, scope: Scope, name: str, *, version: int | None, label: str | None, resolve: bool
    ) -> SecretRead: ...

    def list_secrets(
        self, scope: Scope, *, prefix: str = "", include_deleted: bool = False
    ) -> list[SecretMeta]: ...

    def history(self, scope: Scope, name: str) -> list[VersionMeta]: ...

    def describe(self, scope: Scope, name: str) -> SecretMeta: ...

    def rotate(self, scope: Scope, name: str, value: SecretValue) -> SecretMeta: ...

    def promote(self, scope: Scope, name: str) -> SecretMeta: ...

    def rollback(self, scope: Scope, name: str, version: int) -> SecretMeta: ...

    def delete(self, scope: Scope, name: str, versions: list[int] | None) -> None: ...

    def undelete(self, scope: Scope, name: str, versions: list[int] | None) -> None: ...

    def destroy(self, scope: Scope, name: str, versions: list[int]) -> None: ...

    def export(self, scope: Scope, *, for_use: bool = False) -> dict[str, SecretValue]: ...

    def proxy_env(
        self, scope: Scope, names: Iterable[str], *, ttl_s: int, gateway_url: str | None
    ) -> ProxyEnvironment:
        """Proxy tokens for proxy-only secrets (a use-only session over ``names``). ``gateway_url``
        None: the backend's own default (a server answers with its own gateway's URL)."""
        ...

    def audit(self, scope: Scope, action: str, detail: dict[str, Any], result: str = "ok") -> None: ...

    def close(self) -> None: ...


# -- local ------------------------------------------------------------------------------------------
class LocalBackend:
    """Core's :class:`SecretService` over the local vault, as the given principal."""

    remote = False

    def __init__(self, service: SecretService, principal: Principal) -> None:
        self.svc = service
        self.principal = principal

    def put(
        self,
        scope: Scope,
        name: str,
        value: SecretValue,
        *,
        cas: int | None = None,
        action: str = "secret.write",
        **metadata: Any,
    ) -> SecretMeta:
        return self.svc.put(self.principal, scope, name, value, cas=cas, action=action, **metadata)

    def get(
        self, scope: Scope, name: str, *, version: int | None, label: str | None, resolve: bool
    ) -> SecretRead:
        return self.svc.get(self.principal, scope, name, version=version, label=label, resolve=resolve)

    def list_secrets(
        self, scope: Scope, *, prefix: str = "", include_deleted: bool = False
    ) -> list[SecretMeta]:
        return self.svc.list_secrets(self.principal, scope, prefix=prefix, include_deleted=include_deleted)

    def history(self, scope: Scope, name: str) -> list[VersionMeta]:
        return self.svc.history(self.principal, scope, name)

    def describe(self, scope: Scope, name: str) -> SecretMeta:
        return self.svc.describe(self.principal, scope, name)

    def rotate(self, scope: Scope, name: str, value: SecretValue) -> SecretMeta:
        return self.svc.rotate(self.principal, scope, name, value)

    def promote(self, scope: Scope, name: str) -> SecretMeta:
        return self.svc.promote(self.principal, scope, name)

    def rollback(self, scope: Scope, name: str, version: int) -> SecretMeta:
        return self.svc.rollback(self.principal, scope, name, version)

    def delete(self, scope: Scope, name: str, versions: list[int] | None) -> None:
        self.svc.delete(self.principal, scope, name, versions)

    def undelete(self, scope: Scope, name: str, versions: list[int] | None) -> None:
        self.svc.undelete(self.principal, scope, name, versions)

    def destroy(self, scope: Scope, name: str, versions: list[int]) -> None:
        self.svc.destroy(self.principal, scope, name, versions)

    def export(self, scope: Scope, *, for_use: bool = False) -> dict[str, SecretValue]:
        if for_use:
            return self.svc.export(self.principal, scope, permission="use", action="secret.use")
        return self.svc.export(self.principal, scope)

    def proxy_env(
        self, scope: Scope, names: Iterable[str], *, ttl_s: int, gateway_url: str | None
    ) -> ProxyEnvironment:
        from keybroker.core._proxy_tokens import ProxyTokenService
        from keybroker.core._sessions import SessionService

        # core audits the session and every token it issues
        pe = ProxyTokenService(SessionService(self.svc)).proxy_env(
            self.principal, scope, names, gateway_url=gateway_url or DEFAULT_GATEWAY_URL, ttl_s=ttl_s
        )
        return ProxyEnvironment(dict(pe.tokens), dict(pe.extra))

    def audit(self, scope: Scope, action: str, detail: dict[str, Any], result: str = "ok") -> None:
        self.svc.vault.audit.record(self.principal, action, scope.path(), result=result, detail=detail)

    def close(self) -> None:
        pass


# -- remote -----------------------------------------------------------------------------------------
def _dt(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if isinstance(v, str) and v else None


def meta_from_dict(d: Mapping[str, Any], scope: Scope | None = None) -> SecretMeta:
    """A :class:`SecretMeta` back from its ``to_dict()`` form (as the server sends it)."""
    sd = d.get("scope")
    if isinstance(sd, Mapping):
        scope = Scope(
            str(sd.get("project", "default")),
            str(sd.get("environment", "dev")),
            str(sd.get("org", "default")),
        )
    rp = d.get("rotation_period_s")
    return SecretMeta(
        scope=scope or Scope(),
        name=str(d.get("name", "")),
        kind=str(d.get("kind") or "generic"),
        description=str(d.get("description") or ""),
        tags=[str(t) for t in d.get("tags") or []],
        custom_metadata={str(k): str(v) for k, v in (d.get("custom_metadata") or {}).items()},
        owner=str(d.get("owner") or ""),
        risk=str(d.get("risk") or ""),
        provider=str(d.get("provider") or ""),
        expires_at=_dt(d.get("expires_at")),
        rotation_period_s=int(rp) if rp is not None else None,
        proxy_only=bool(d.get("proxy_only")),
        max_versions=int(d.get("max_versions") or 0),
        cas_required=bool(d.get("cas_required")),
        latest_version=int(d.get("latest_version") or 0),
        current_version=d.get("current_version"),
        previous_version=d.get("previous_version"),
        pending_version=d.get("pending_version"),
        deleted_at=_dt(d.get("deleted_at")),
        created_at=_dt(d.get("created_at")) or datetime.fromtimestamp(0).astimezone(),
        updated_at=_dt(d.get("updated_at")) or datetime.fromtimestamp(0).astimezone(),
        expired=bool(d.get("expired")),
        rotation_due=bool(d.get("rotation_due")),
    )


def version_from_dict(d: Mapping[str, Any]) -> VersionMeta:
    return VersionMeta(
        version=int(d["version"]),
        created_at=_dt(d.get("created_at")) or datetime.fromtimestamp(0).astimezone(),
        created_by=str(d.get("created_by") or ""),
        deleted_at=_dt(d.get("deleted_at")),
        destroyed_at=_dt(d.get("destroyed_at")),
        labels=tuple(str(x) for x in d.get("labels") or ()),
    )


def _text(value: SecretValue) -> str:
    try:
        return value.reveal_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a value sent to a keybroker server must be UTF-8 text") from None


def _wire(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in metadata.items()}


class RemoteBackend:
    """The SDK :class:`~keybroker.Client` against a ``keybroker serve``. The organization comes
    from the token; reads go straight to the server (no cache, no stale fallback)."""

    remote = True

    def __init__(self, client: Client) -> None:
        self.client = client

    def put(
        self,
        scope: Scope,
        name: str,
        value: SecretValue,
        *,
        cas: int | None = None,
        action: str = "secret.write",
        **metadata: Any,
    ) -> SecretMeta:
        md = self.client.set(
            name,
            _text(value),
            cas=cas,
            project=scope.project,
            environment=scope.environment,
            **_wire(metadata),
        )
        return meta_from_dict(md, scope)

    def get(
        self, scope: Scope, name: str, *, version: int | None, label: str | None, resolve: bool
    ) -> SecretRead:
        body = self.client.read(
            name,
            project=scope.project,
            environment=scope.environment,
            version=version,
            label=label,
            resolve=resolve,
        )
        return SecretRead(
            name=str(body.get("name") or name),
            version=int(body.get("version") or 0),
            value=body["value"],
            meta=meta_from_dict(body.get("metadata") or {"name": name}, scope),
            references=tuple(str(r) for r in body.get("references") or ()),
        )

    def list_secrets(
        self, scope: Scope, *, prefix: str = "", include_deleted: bool = False
    ) -> list[SecretMeta]:
        rows = self.client.list_secrets(
            project=scope.project, environment=scope.environment, prefix=prefix, deleted=include_deleted
        )
        return [meta_from_dict(m, scope) for m in rows]

    def history(self, scope: Scope, name: str) -> list[VersionMeta]:
        rows = self.client.history(name, project=scope.project, environment=scope.environment)
        return [version_from_dict(v) for v in rows]

    def describe(self, scope: Scope, name: str) -> SecretMeta:
        return meta_from_dict(
            self.client.describe(name, project=scope.project, environment=scope.environment), scope
        )

    def rotate(self, scope: Scope, name: str, value: SecretValue) -> SecretMeta:
        md = self.client.rotate(name, _text(value), project=scope.project, environment=scope.environment)
        return meta_from_dict(md, scope)

    def promote(self, scope: Scope, name: str) -> SecretMeta:
        return meta_from_dict(
            self.client.promote(name, project=scope.project, environment=scope.environment), scope
        )

    def rollback(self, scope: Scope, name: str, version: int) -> SecretMeta:
        md = self.client.rollback(name, version, project=scope.project, environment=scope.environment)
        return meta_from_dict(md, scope)

    def delete(self, scope: Scope, name: str, versions: list[int] | None) -> None:
        self.client.delete(name, project=scope.project, environment=scope.environment, versions=versions)

    def undelete(self, scope: Scope, name: str, versions: list[int] | None) -> None:
        self.client.undelete(name, project=scope.project, environment=scope.environment, versions=versions)

    def destroy(self, scope: Scope, name: str, versions: list[int]) -> None:
        self.client.destroy(name, versions, project=scope.project, environment=scope.environment)

    def export(self, scope: Scope, *, for_use: bool = False) -> dict[str, SecretValue]:
        # the server audits the export itself (for `run` as well as `export`) and, like core,
        # leaves proxy-only secrets out
        return self.client.export(project=scope.project, environment=scope.environment)

    def proxy_env(
        self, scope: Scope, names: Iterable[str], *, ttl_s: int, gateway_url: str | None
    ) -> ProxyEnvironment:
        body = self.client.proxy_env(
            list(names), project=scope.project, environment=scope.environment, ttl_s=ttl_s
        )
        tokens = {str(k): SecretValue(str(v)) for k, v in (body.get("tokens") or {}).items()}
        extra = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
        theirs = extra.get("KEYBROKER_GATEWAY_URL", "").rstrip("/")
        if gateway_url and theirs:
            # the caller names the gateway explicitly: point the base URLs there instead
            ours = gateway_url.rstrip("/")
            extra = {
                k: ours + v[len(theirs) :] if v == theirs or v.startswith(theirs + "/") else v
                for k, v in extra.items()
            }
        return ProxyEnvironment(tokens, extra)

    def audit(self, scope: Scope, action: str, detail: dict[str, Any], result: str = "ok") -> None:
        """The server keeps the audit trail of every request it answers."""

    def close(self) -> None:
        self.client.close()
