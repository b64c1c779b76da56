"""Helpers for the agent-access and gateway tests (fixtures in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.core import ManualClock, Principal, Scope, SecretService, Vault
from keybroker.core._access_requests import AccessPolicy, AccessRequestService, MemoryNotifier
from keybroker.core._agents import ToolRegistry
from keybroker.core._identity import IdentityService
from keybroker.core._proxy_tokens import ProxyTokenService
from keybroker.core._sessions import SessionService
from keybroker.core._tokens import TokenService

REAL_KEY = "sk-live-REALKEY-0123456789abcdefghijklmnop"
ALICE = Principal(id="alice", kind="user", client="test", local=True)
BOB = Principal(id="bob", kind="user", client="test", local=True)


@dataclass
class Access:
    vault: Vault
    clock: ManualClock
    secrets: SecretService
    sessions: SessionService
    tokens: ProxyTokenService
    tools: ToolRegistry
    requests: AccessRequestService
    notifier: MemoryNotifier
    identities: IdentityService

    def agent(self, name: str = "bot") -> Principal:
        """An agent identity and the principal its login token would give."""
        ident = self.identities.create(ALICE, name, "agent", description="test agent")
        return Principal(
            id=f"default/{name}",
            kind="agent",
            client="test",
            attrs={"org": "default", "identity_id": ident.id},
        )


def make_access(vault: Vault, clock: ManualClock) -> Access:
    secrets = SecretService(vault)
    sessions = SessionService(secrets)
    tokens = ProxyTokenService(sessions)
    tools = ToolRegistry(sessions)
    notifier = MemoryNotifier()
    requests = AccessRequestService(tools, notifier=notifier, policy=AccessPolicy(pending_ttl_s=600))
    identities = IdentityService(vault, TokenService(vault))
    return Access(vault, clock, secrets, sessions, tokens, tools, requests, notifier, identities)


def put_key(
    access: Access,
    name: str = "OPENAI_API_KEY",
    value: str = REAL_KEY,
    *,
    provider: str = "openai",
    risk: str = "low",
    scope: Scope | None = None,
    **custom: str,
) -> None:
    access.secrets.put(
        ALICE, scope or Scope(), name, value, provider=provider, risk=risk, custom_metadata=dict(custom)
    )
