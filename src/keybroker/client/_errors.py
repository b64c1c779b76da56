"""Errors and warnings that only the SDK raises.

``ServerUnavailable`` joins the one tree (it subclasses :class:`~keybroker.errors.KeybrokerError`
and registers its code, so ``from_code("server_unavailable")`` rebuilds it).
"""

from __future__ import annotations

from keybroker.errors import ServerUnavailable

__all__ = ["ServerUnavailable", "StaleValueWarning"]


class StaleValueWarning(UserWarning):
    """The server was unreachable, so the SDK served the last value it knew (within
    ``max_stale``). The message names the secret and the value's age, never the value."""
