"""The services one app serves, built once and kept on ``app.state.kb``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from keybroker.core import SecretService, Vault
from keybroker.core._identity import IdentityService, LockoutPolicy
from keybroker.core._kv import KvConfigService
from keybroker.core._orgaudit import OrgAudit
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.server._metrics import Metrics
from keybroker.server._settings import ServerSettings

__all__ = ["Services", "services"]


@dataclass
class Services:
    """Everything a route needs. Routes call these core services and nothing below them."""

    vault: Vault
    settings: ServerSettings
    authorizer: RbacAuthorizer
    secrets: SecretService
    tokens: TokenService
    identities: IdentityService
    kv_config: KvConfigService
    audit: OrgAudit
    metrics: Metrics
    owns_store: bool = False
    #: free room for extensions (the events router keeps its bus here)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, vault: Vault, settings: ServerSettings, *, owns_store: bool = False) -> Services:
        authorizer = RbacAuthorizer()
        tokens = TokenService(
            vault,
            authorizer,
            token_rate=settings.token_rate,
            token_burst=settings.token_burst,
            address_rate=settings.address_rate,
            address_burst=settings.address_burst,
            login_ttl_s=settings.login_ttl_s,
            login_max_ttl_s=settings.login_max_ttl_s,
        )
        identities = IdentityService(
            vault,
            tokens,
            authorizer,
            lockout=LockoutPolicy(
                settings.lockout_threshold, settings.lockout_base_s, settings.lockout_max_s
            ),
        )
        return cls(
            vault=vault,
            settings=settings,
            authorizer=authorizer,
            secrets=SecretService(vault, authorizer),
            tokens=tokens,
            identities=identities,
            kv_config=KvConfigService(vault, authorizer),
            audit=OrgAudit(vault.audit, authorizer),
            metrics=Metrics(),
            owns_store=owns_store,
        )


def services(request: Request) -> Services:
    kb = request.app.state.kb
    assert isinstance(kb, Services)
    return kb
