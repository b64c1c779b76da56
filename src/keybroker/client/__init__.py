"""The Python SDK: :class:`Client` and :class:`AsyncClient` over one I/O-free core.

Both speak the HTTP API of ``keybroker serve`` (docs/http-api.md), cache values in memory with a
TTL that the live change stream invalidates, fall back to the last known value (with a
:class:`StaleValueWarning`) when the server is unreachable, and raise the same
:mod:`keybroker.errors` classes the server names.
"""

from keybroker.client._async import AsyncClient
from keybroker.client._base import (
    DEFAULT_ADDR,
    DEFAULT_MAX_STALE,
    DEFAULT_TTL,
    Event,
    SecretCache,
    env_var_name,
)
from keybroker.client._errors import ServerUnavailable, StaleValueWarning
from keybroker.client._settings import KeybrokerSettingsSource
from keybroker.client._sync import Client

__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_MAX_STALE",
    "DEFAULT_TTL",
    "AsyncClient",
    "Client",
    "Event",
    "KeybrokerSettingsSource",
    "SecretCache",
    "ServerUnavailable",
    "StaleValueWarning",
    "env_var_name",
]
