"""Core services: the one layer under every front end (CLI, REST, KV API, MCP, gateway)."""

from keybroker.core._access import ACTIONS, Authorizer, LocalOwnerAuthorizer
from keybroker.core._audit import AuditEntry, AuditLog, VerifyResult
from keybroker.core._clock import Clock, ManualClock, SystemClock
from keybroker.core._events import Event, EventBus, EventFilter, Subscription, SubscriptionLagged
from keybroker.core._models import Scope, SecretMeta, SecretRead, VersionMeta
from keybroker.core._names import RISK_LEVELS, check_risk, check_scope_name, check_secret_name
from keybroker.core._principal import Principal, local_principal
from keybroker.core._secrets import ChangeEvent, SecretService
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
    "RISK_LEVELS",
    "AuditEntry",
    "AuditLog",
    "Authorizer",
    "ChangeEvent",
    "Clock",
    "Event",
    "EventBus",
    "EventFilter",
    "KeyFileRoot",
    "KeychainRoot",
    "LocalOwnerAuthorizer",
    "ManualClock",
    "PassphraseRoot",
    "Principal",
    "RawRoot",
    "RekeyResult",
    "RootKeySource",
    "Scope",
    "SecretMeta",
    "SecretRead",
    "SecretService",
    "Subscription",
    "SubscriptionLagged",
    "SystemClock",
    "Vault",
    "VerifyResult",
    "VersionMeta",
    "check_risk",
    "check_scope_name",
    "check_secret_name",
    "local_principal",
]
