"""Core services: the one layer under every front end (CLI, REST, KV API, MCP, gateway)."""

from keybroker.core._access import ACTIONS, Authorizer, LocalOwnerAuthorizer
from keybroker.core._access_requests import (
    AccessPolicy,
    AccessRequestInfo,
    AccessRequestService,
    MemoryNotifier,
    Notifier,
    WebhookNotifier,
    sign_webhook,
    verify_webhook,
)
from keybroker.core._agents import ToolInfo, ToolRegistry
from keybroker.core._audit import AuditEntry, AuditLog, VerifyResult
from keybroker.core._clock import Clock, ManualClock, SystemClock
from keybroker.core._events import Event, EventBus, EventFilter, Subscription, SubscriptionLagged
from keybroker.core._models import Scope, SecretMeta, SecretRead, VersionMeta
from keybroker.core._names import RISK_LEVELS, check_risk, check_scope_name, check_secret_name
from keybroker.core._principal import Principal, local_principal
from keybroker.core._providers import PROVIDERS, AuthTemplate, Provider, Upstream, upstream_for
from keybroker.core._proxy_tokens import IssuedProxyToken, ProxyEnv, ProxyGrant, ProxyTokenService
from keybroker.core._secrets import ChangeEvent, SecretService
from keybroker.core._sessions import Budget, Revocation, SessionAuthorizer, SessionInfo, SessionService
from keybroker.core._vault import (
    DEFAULT_ENVIRONMENTS,
    KeychainRoot,
    KeyFileRoot,
    PassphraseRoot,
    RawRoot,
    RekeyResult,
    RootKeySource,
    Vault,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_ENVIRONMENTS",
    "PROVIDERS",
    "RISK_LEVELS",
    "AccessPolicy",
    "AccessRequestInfo",
    "AccessRequestService",
    "AuditEntry",
    "AuditLog",
    "AuthTemplate",
    "Authorizer",
    "Budget",
    "ChangeEvent",
    "Clock",
    "Event",
    "EventBus",
    "EventFilter",
    "IssuedProxyToken",
    "KeyFileRoot",
    "KeychainRoot",
    "LocalOwnerAuthorizer",
    "ManualClock",
    "MemoryNotifier",
    "Notifier",
    "PassphraseRoot",
    "Principal",
    "Provider",
    "ProxyEnv",
    "ProxyGrant",
    "ProxyTokenService",
    "RawRoot",
    "RekeyResult",
    "Revocation",
    "RootKeySource",
    "Scope",
    "SecretMeta",
    "SecretRead",
    "SecretService",
    "SessionAuthorizer",
    "SessionInfo",
    "SessionService",
    "Subscription",
    "SubscriptionLagged",
    "SystemClock",
    "ToolInfo",
    "ToolRegistry",
    "Upstream",
    "Vault",
    "VerifyResult",
    "VersionMeta",
    "WebhookNotifier",
    "check_risk",
    "check_scope_name",
    "check_secret_name",
    "local_principal",
    "sign_webhook",
    "upstream_for",
    "verify_webhook",
]
