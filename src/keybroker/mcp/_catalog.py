"""What an agent may ask for: the secrets its registered tools' allow-lists name.

Core decides what a tool may request (:meth:`keybroker.core._agents.ToolInfo.allows`, deny by
default); this module only lists the secrets that rule admits, with their metadata (never a value).

Stop-gap: core has no "secrets this agent may request" query yet, and an agent identity usually
holds no ``list`` role, so the metadata is read as a catalog principal acting for the agent
(named in every audit record it makes, ``service:mcp-catalog/<agent>``) and filtered through the
tools' own ``allows``. When core gains such a query, this module shrinks to a call to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keybroker.core import Principal, Scope, SecretMeta
from keybroker.core._agents import ToolInfo
from keybroker.core._providers import upstream_for
from keybroker.core._sessions import principal_identity, principal_org
from keybroker.errors import KeybrokerError, PermissionDenied
from keybroker.mcp._services import AgentServices

__all__ = ["CatalogEntry", "agent_tools", "requestable"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    meta: SecretMeta
    tools: tuple[str, ...]

    @property
    def ref(self) -> str:
        s = self.meta.scope
        return f"{s.project}/{s.environment}/{self.meta.name}"

    def to_dict(self) -> dict[str, Any]:
        m = self.meta
        try:
            up = upstream_for(m)
            upstream: dict[str, Any] | None = {"provider": up.route, "hosts": list(up.hosts)}
        except KeybrokerError:
            upstream = None
        return {
            "secret": self.ref,
            "project": m.scope.project,
            "environment": m.scope.environment,
            "name": m.name,
            "description": m.description,
            "risk": m.risk,
            "provider": m.provider,
            "upstream": upstream,
            "proxy_only": m.proxy_only,
            "expired": m.expired,
            "requestable_by": list(self.tools),
        }


def agent_tools(services: AgentServices, principal: Principal) -> list[ToolInfo]:
    """The agent's own live tools."""
    ident = principal_identity(principal)
    if ident is None:
        raise PermissionDenied("only an agent identity has tools")
    return services.tools.list_tools(principal, ident)


def requestable(
    services: AgentServices,
    principal: Principal,
    tools: list[ToolInfo],
    *,
    project: str | None = None,
    environment: str | None = None,
) -> list[CatalogEntry]:
    """Every live secret some tool of the agent may request, sorted by ref."""
    if not tools:
        return []
    org = principal_org(principal)
    reader = Principal(
        id=f"mcp-catalog/{principal.id}"[:200],
        kind="service",
        client=principal.client,
        local=True,
        request_id=principal.request_id,
    )
    out: list[CatalogEntry] = []
    for proj in services.secrets.list_projects(reader, org=org):
        pname = str(proj["name"])
        if project is not None and pname != project:
            continue
        for env in proj["environments"]:
            if environment is not None and env != environment:
                continue
            if not any("*" in t.environments or env in t.environments for t in tools):
                continue
            for meta in services.secrets.list_secrets(reader, Scope(pname, env, org)):
                ids = tuple(t.tool_id for t in tools if t.allows(pname, env, meta.name))
                if ids:
                    out.append(CatalogEntry(meta, ids))
    out.sort(key=lambda e: e.ref)
    return out
