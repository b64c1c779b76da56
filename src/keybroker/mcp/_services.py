"""The core services the MCP server calls, wired once per process.

The MCP server is a front end: every decision (who may ask for what, which policy approves, who
may use a session, what a proxy token may reach) is made by core. This module only builds the
services, or reuses those of a running ``keybroker serve`` (:meth:`AgentServices.from_server`), so
that a revocation made through MCP reaches the gateway's in-process caches at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from keybroker.core import SecretService, Vault
from keybroker.core._access_requests import (
    AccessPolicy,
    AccessRequestService,
    MemoryNotifier,
    Notifier,
    WebhookNotifier,
)
from keybroker.core._agents import ToolRegistry
from keybroker.core._identity import IdentityService
from keybroker.core._proxy_tokens import ProxyTokenService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._sessions import SessionAuthorizer, SessionService
from keybroker.core._tokens import TokenService
from keybroker.mcp._settings import McpSettings

__all__ = ["AgentServices", "notifier_from_settings"]


def notifier_from_settings(settings: McpSettings) -> Notifier:
    """The signed webhook when ``KEYBROKER_WEBHOOK_URL`` is set (it then needs a signing secret),
    else an in-memory notifier. Raises InvalidInput."""
    if settings.webhook_url:
        secret = settings.webhook_signing_secret()
        if not secret:
            from keybroker.errors import InvalidInput

            raise InvalidInput(
                "KEYBROKER_WEBHOOK_URL needs a signing secret: set KEYBROKER_WEBHOOK_SECRET_FILE "
                "(or KEYBROKER_WEBHOOK_SECRET)"
            )
        return WebhookNotifier(settings.webhook_url, secret)
    return MemoryNotifier()


@dataclass
class AgentServices:
    """Everything the MCP server needs from core."""

    vault: Vault
    authorizer: RbacAuthorizer
    secrets: SecretService
    tokens: TokenService
    identities: IdentityService
    sessions: SessionService
    tools: ToolRegistry
    access: AccessRequestService
    proxies: ProxyTokenService
    owned: list[Any] = field(default_factory=list)
    _session_secrets: SecretService | None = None

    @property
    def clock(self) -> Any:
        return self.vault.clock

    @property
    def audit(self) -> Any:
        return self.vault.audit

    @classmethod
    def build(
        cls,
        vault: Vault,
        *,
        notifier: Notifier | None = None,
        policy: AccessPolicy | None = None,
        token_rate: float = 0.0,
        proxy_token_ttl_s: int = 900,
    ) -> AgentServices:
        """A fresh set over ``vault`` (``keybroker mcp`` on its own, tests)."""
        authorizer = RbacAuthorizer()
        tokens = TokenService(vault, authorizer, token_rate=token_rate)
        identities = IdentityService(vault, tokens, authorizer)
        secrets = SecretService(vault, authorizer)
        sessions = SessionService(secrets)
        tools = ToolRegistry(sessions)
        access = AccessRequestService(tools, notifier=notifier, policy=policy)
        proxies = ProxyTokenService(sessions, default_ttl_s=proxy_token_ttl_s)
        owned: list[Any] = [notifier] if notifier is not None else []
        return cls(vault, authorizer, secrets, tokens, identities, sessions, tools, access, proxies, owned)

    @classmethod
    def from_server(cls, kb: Any, *, notifier: Notifier | None = None) -> AgentServices:
        """Reuse a server's services (``keybroker.server.Services``). Agent services it already
        keeps in ``kb.extras`` (``sessions``, ``tools``, ``access``, ``proxy_tokens``) are shared;
        missing ones are built over its secret service."""
        extras: dict[str, Any] = getattr(kb, "extras", {}) or {}
        sessions = extras.get("sessions") or SessionService(kb.secrets)
        tools = extras.get("tools") or ToolRegistry(sessions)
        access = extras.get("access") or AccessRequestService(tools, notifier=notifier)
        proxies = extras.get("proxy_tokens") or ProxyTokenService(sessions)
        for key, value in (
            ("sessions", sessions),
            ("tools", tools),
            ("access", access),
            ("proxy_tokens", proxies),
        ):
            extras.setdefault(key, value)
        return cls(
            kb.vault, kb.authorizer, kb.secrets, kb.tokens, kb.identities, sessions, tools, access, proxies
        )

    def session_secrets(self) -> SecretService:
        """A secret service that lets a principal acting through a session *use* the session's
        secrets (the rule lives in core's :class:`SessionAuthorizer`); for ``reveal_secret``."""
        if self._session_secrets is None:
            self._session_secrets = SecretService(
                self.vault, SessionAuthorizer(self.sessions, self.authorizer)
            )
        return self._session_secrets

    def close(self) -> None:
        """Flush the webhook notifier (pending notifications are delivered or given up on)."""
        for thing in self.owned:
            close = getattr(thing, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
