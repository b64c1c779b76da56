"""Pluggable key stores: keybroker on top of what teams already have, and a way to move.

One protocol, :class:`KeyStore`, implemented by keybroker itself (:class:`NativeStore`),
HashiCorp Vault / OpenBao KV v2 (:class:`VaultKVStore`), AWS Secrets Manager
(:class:`AwsSecretsManagerStore`), Azure Key Vault (:class:`AzureKeyVaultStore`), Google Secret
Manager (:class:`GcpSecretManagerStore`), a single encrypted file (:class:`EncryptedFileStore`),
environment variables (:class:`EnvStore`, development only) and memory (:class:`MemoryStore`).
:func:`open_store` opens one from a URL; plug-ins add schemes via the ``keybroker.stores`` entry
points. On top: :class:`CachedStore` (read-through with TTL), :class:`ResolutionChain` (first
hit wins, every hop audited) and :func:`migrate` (resumable, idempotent copy).

Adapters for Vault, AWS, Azure and Google import their SDKs lazily: install the ``backends``
extra (``pip install keybroker[backends]``) to use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybroker.backends._base import (
    LABELS,
    KeyStore,
    RetryPolicy,
    RotatingStore,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    get_many,
)
from keybroker.backends._cache import CachedStore, CacheStats
from keybroker.backends._chain import Hop, ResolutionChain, audit_log_callback
from keybroker.backends._env import EnvStore, EnvStoreWarning
from keybroker.backends._file import EncryptedFileStore
from keybroker.backends._memory import MemoryStore
from keybroker.backends._migrate import MigrationItem, MigrationReport, migrate
from keybroker.backends._native import NativeStore
from keybroker.backends._url import ENTRY_POINT_GROUP, NativeOpener, open_store, set_native_opener

if TYPE_CHECKING:
    from keybroker.backends._aws import AwsSecretsManagerStore
    from keybroker.backends._azure import AzureKeyVaultStore
    from keybroker.backends._gcp import GcpSecretManagerStore
    from keybroker.backends._vault import VaultKVStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "LABELS",
    "AwsSecretsManagerStore",
    "AzureKeyVaultStore",
    "CacheStats",
    "CachedStore",
    "EncryptedFileStore",
    "EnvStore",
    "EnvStoreWarning",
    "GcpSecretManagerStore",
    "Hop",
    "KeyStore",
    "MemoryStore",
    "MigrationItem",
    "MigrationReport",
    "NativeOpener",
    "NativeStore",
    "ResolutionChain",
    "RetryPolicy",
    "RotatingStore",
    "SecretInfo",
    "StoreCapabilities",
    "VaultKVStore",
    "VersionInfo",
    "audit_log_callback",
    "get_many",
    "migrate",
    "open_store",
    "set_native_opener",
]

_LAZY = {
    "AwsSecretsManagerStore": "keybroker.backends._aws",
    "AzureKeyVaultStore": "keybroker.backends._azure",
    "GcpSecretManagerStore": "keybroker.backends._gcp",
    "VaultKVStore": "keybroker.backends._vault",
}


def __getattr__(name: str) -> Any:
    """The SDK-backed adapters load on first use, so keybroker runs without their SDKs."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keybroker.backends' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
