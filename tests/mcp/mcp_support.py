"""MCP test support: a vault on ``store_url`` with an agent, its tool and a few secrets of each risk,
and an in-process MCP client (the official ``ClientSession``) over the SDK's memory transport.

Real-time clock throughout: the stdio and HTTP tests share the store with other processes and
threads, and ``access_status`` waits in real time.
"""

from __future__ import annotations

import json
import os
import secrets as _random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client._memory import InMemoryTransport

from keybroker.core import PassphraseRoot, Principal, Scope, SystemClock, Vault, local_principal
from keybroker.crypto import Argon2Params
from keybroker.mcp import AgentCredentials, AgentLogin, AgentServices, KeybrokerMCP, McpSettings
from keybroker.store import Store
from mcp import ClientSession

PASSPHRASE = "correct horse battery staple"
FAST_KDF = {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}
SRC = Path(__file__).resolve().parents[2] / "src"


ElicitFn = Callable[[Any, types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]


@dataclass
class World:
    store_url: str
    vault: Vault
    services: AgentServices
    owner: Principal
    agent: str
    agent_id: str
    client_id: str
    client_secret: str
    #: every secret value in the vault, ref -> value (what no MCP result may ever contain)
    values: dict[str, str] = field(default_factory=dict)

    def approver(self, name: str = "alice") -> Principal:
        """A person who may approve (the vault owner's power, under another name)."""
        return Principal(id=name, kind="user", client="keybroker-cli", local=True)

    def approve(self, request_id: str, name: str = "alice") -> Any:
        return self.services.access.approve(self.approver(name), request_id)

    def credentials(self) -> AgentCredentials:
        from keybroker.crypto import SecretValue

        return AgentCredentials(
            "test", client_id=self.client_id, client_secret=SecretValue(self.client_secret)
        )

    def write_credentials(self, path: Path) -> Path:
        path.write_text(json.dumps({"client_id": self.client_id, "client_secret": self.client_secret}))
        path.chmod(0o600)
        return path

    def mcp(self, settings: McpSettings | None = None, **kw: Any) -> KeybrokerMCP:
        login = AgentLogin(self.services, self.credentials())
        return KeybrokerMCP(self.services, settings or McpSettings(), login=login, **kw)


def _value(prefix: str) -> str:
    return f"{prefix}-{_random.token_hex(20)}"


def make_world(store_url: str, *, upstream_url: str | None = None, agent: str = "agent1") -> World:
    store = Store(store_url)
    vault = Vault(store, SystemClock())
    owner = local_principal("test")
    vault.initialize(PassphraseRoot(PASSPHRASE, Argon2Params(os.urandom(16), **FAST_KDF)), owner)
    services = AgentServices.build(vault)
    sc = Scope("default", "dev", "default")
    w = World(store_url, vault, services, owner, agent, "", "", "")
    openai_md = {"gateway.base_url": upstream_url} if upstream_url else {}
    for name, risk, provider, md in (
        ("OPENAI_API_KEY", "medium", "openai", openai_md),
        ("ANTHROPIC_API_KEY", "high", "anthropic", {}),
        ("WEATHER_KEY", "low", "generic", {"gateway.base_url": "https://weather.example.com"}),
        ("DB_PASSWORD", "high", "generic", {"gateway.base_url": "https://db.example.com"}),
    ):
        value = _value(f"sk-{name.lower()}")
        services.secrets.put(
            owner,
            sc,
            name,
            value,
            risk=risk,
            provider=provider,
            description=f"{name} for tests",
            custom_metadata=md,
        )
        w.values[f"default/dev/{name}"] = value
    # a secret no tool may ask for
    services.secrets.put(owner, Scope("default", "prod", "default"), "PROD_KEY", (v := _value("sk-prod")))
    w.values["default/prod/PROD_KEY"] = v
    ident = services.identities.create(owner, agent, "agent", org="default")
    creds = services.identities.new_client_secret(owner, agent, org="default")
    services.tools.register(
        owner,
        agent,
        "chat",
        allowed_secrets=["default/*"],
        environments=["dev"],
        max_risk="low",
        max_session_s=3600,
        org="default",
    )
    w.agent_id, w.client_id, w.client_secret = ident.id, creds.client_id, creds.client_secret.reveal()
    return w


@dataclass
class Client:
    portal: Any
    session: ClientSession

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        result = self.portal.call(self.session.call_tool, tool, arguments)
        assert isinstance(result, types.CallToolResult)
        return result

    def tools(self) -> list[types.Tool]:
        return list(self.portal.call(self.session.list_tools).tools)


@asynccontextmanager
async def connect(
    mcp: KeybrokerMCP,
    *,
    elicitation: ElicitFn | None = None,
    client_name: str = "pytest-client",
    client_version: str = "1.0",
) -> AsyncIterator[ClientSession]:
    """An official MCP ClientSession connected in process (legacy handshake, like stdio)."""
    async with InMemoryTransport(mcp.server) as (read, write):
        async with ClientSession(
            read,
            write,
            client_info=types.Implementation(name=client_name, version=client_version),
            elicitation_callback=elicitation,
        ) as session:
            await session.initialize()
            yield session


def body(result: types.CallToolResult) -> dict[str, Any]:
    """The JSON a tool returned (text and structured content agree)."""
    assert result.content and isinstance(result.content[0], types.TextContent)
    parsed = json.loads(result.content[0].text)
    assert parsed == result.structured_content
    assert isinstance(parsed, dict)
    return parsed


def ok(result: types.CallToolResult) -> dict[str, Any]:
    b = body(result)
    assert not result.is_error, b
    return b


def err(result: types.CallToolResult) -> str:
    b = body(result)
    assert result.is_error, b
    code = b["error"]["code"]
    assert isinstance(code, str)
    return code


def all_text(result: types.CallToolResult) -> str:
    """Everything a client could show or hand to a model from this result."""
    parts = [result.model_dump_json()]
    for c in result.content:
        if isinstance(c, types.TextContent):
            parts.append(c.text)
    return "\n".join(parts)
