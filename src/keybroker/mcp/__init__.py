"""keybroker's MCP server: agents discover secrets, ask for access and use keys without seeing them.

Built on the official ``mcp`` SDK (low-level :class:`mcp.server.lowlevel.Server`), over stdio and
streamable HTTP, always acting as one agent identity. Tools: ``list_secrets``,
``request_access``, ``access_status``, ``get_proxy_credentials``, ``list_sessions``,
``revoke_access`` (and ``reveal_secret`` only when the operator allowed specific low-risk
secrets). See ``docs/mcp.md``.

Mounting in ``keybroker serve``: ``create_app(..., extensions=[keybroker.mcp.install])`` routes
``/mcp`` to the MCP endpoint over the server's own services.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keybroker.mcp._auth import AgentCredentials, AgentLogin, load_credentials
    from keybroker.mcp._config import CLIENTS, client_config
    from keybroker.mcp._http import McpHttpApp
    from keybroker.mcp._server import INSTRUCTIONS, KeybrokerMCP, RevealNotAllowed, TooManyPending
    from keybroker.mcp._services import AgentServices
    from keybroker.mcp._settings import McpSettings, load_mcp_settings
    from keybroker.mcp._tools import TOOLS, UnknownTool

# Imported on first use: the CLI imports keybroker.mcp._cli for every command, and the MCP SDK
# (with Starlette and friends) is too heavy to load for `keybroker secret get`.
_LAZY = {
    "AgentCredentials": "_auth",
    "AgentLogin": "_auth",
    "load_credentials": "_auth",
    "CLIENTS": "_config",
    "client_config": "_config",
    "McpHttpApp": "_http",
    "INSTRUCTIONS": "_server",
    "KeybrokerMCP": "_server",
    "RevealNotAllowed": "_server",
    "TooManyPending": "_server",
    "AgentServices": "_services",
    "McpSettings": "_settings",
    "load_mcp_settings": "_settings",
    "TOOLS": "_tools",
    "UnknownTool": "_tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CLIENTS",
    "INSTRUCTIONS",
    "TOOLS",
    "AgentCredentials",
    "AgentLogin",
    "AgentServices",
    "KeybrokerMCP",
    "McpHttpApp",
    "McpSettings",
    "RevealNotAllowed",
    "TooManyPending",
    "UnknownTool",
    "client_config",
    "install",
    "load_credentials",
    "load_mcp_settings",
    "serve_stdio",
]


async def serve_stdio(mcp: KeybrokerMCP) -> None:
    """Serve ``mcp`` on this process's stdin/stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await mcp.server.run(read, write, mcp.server.create_initialization_options())


def install(app: Any, kb: Any, settings: McpSettings | None = None) -> McpHttpApp:
    """A ``keybroker serve`` extension: route ``settings.path`` (``/mcp``) to the MCP endpoint,
    over the server's services (shared with the gateway through ``kb.extras``)."""
    from keybroker.mcp._http import McpHttpApp
    from keybroker.mcp._server import KeybrokerMCP
    from keybroker.mcp._services import AgentServices, notifier_from_settings
    from keybroker.mcp._settings import load_mcp_settings

    settings = settings or load_mcp_settings()
    notifier = notifier_from_settings(settings) if settings.webhook_url else None
    services = AgentServices.from_server(kb, notifier=notifier)
    if notifier is not None:
        services.owned.append(notifier)
    from keybroker.mcp._http import security_for

    # the Host check follows where serve listens, not the standalone MCP server's default
    host = str(getattr(getattr(kb, "settings", None), "host", settings.host))
    http = McpHttpApp(
        KeybrokerMCP(services, settings, transport="http"),
        path=settings.path,
        security=security_for(host, settings.allowed_hosts),
    )
    app.add_route(settings.path, http, include_in_schema=False)
    app.state.on_shutdown.append(http.close_nowait)
    app.state.on_shutdown.append(services.close)
    return http
