"""keybroker: a secret and API-key manager for AI agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybroker.errors import KeybrokerError

if TYPE_CHECKING:
    from keybroker.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "KeybrokerError", "__version__"]


def __getattr__(name: str) -> Any:
    # The SDK (httpx, pydantic-settings) loads on first use, so `import keybroker` stays light
    # for the CLI and the server.
    if name in ("Client", "AsyncClient"):
        from keybroker import client

        return getattr(client, name)
    raise AttributeError(f"module 'keybroker' has no attribute {name!r}")
