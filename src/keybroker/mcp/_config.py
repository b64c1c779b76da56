"""``keybroker mcp config``: the JSON to paste into an MCP client, holding no secret.

What goes in is a *reference* to the agent's own scoped credential: the path of its credentials
file (stdio) or the name of an environment variable holding its token (HTTP, expanded by the
client), plus where the vault is. A database URL's password is left out (psycopg reads it from
``~/.pgpass`` or ``PGPASSFILE``).

Formats:

* Claude Desktop (``claude_desktop_config.json``): ``{"mcpServers": {name: {command, args, env}}}``
  (stdio only; remote servers are added in its settings instead).
* Claude Code (``.mcp.json``): ``{"mcpServers": {name: {"type": "stdio", ...}}}`` or
  ``{"type": "http", "url", "headers"}`` with ``${VAR}`` expansion.
* Cursor (``~/.cursor/mcp.json``): ``{"mcpServers": {name: {command, args, env}}}`` or
  ``{"url", "headers"}`` with ``${env:VAR}`` expansion.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keybroker.errors import InvalidInput

__all__ = ["CLIENTS", "client_config", "safe_db_url"]

CLIENTS = ("claude-desktop", "claude-code", "cursor")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def safe_db_url(url: str) -> tuple[str, bool]:
    """The URL without its password, and whether one was removed. Raises InvalidInput."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidInput("KEYBROKER_DB_URL is not a database URL") from None
    if u.password is None:
        return url, False
    # URL.set() ignores None; _replace is the documented NamedTuple way to drop a field
    stripped = u._replace(password=None)
    if stripped.password is not None:  # pragma: no cover - defensive
        raise InvalidInput("cannot remove the password from KEYBROKER_DB_URL")
    return stripped.render_as_string(hide_password=False), True


def client_config(
    client: str,
    *,
    transport: str = "stdio",
    command: list[str],
    env: dict[str, str],
    url: str | None = None,
    token_env: str = "KEYBROKER_AGENT_TOKEN",  # noqa: S107 - a variable name, not a token
    name: str = "keybroker",
) -> dict[str, Any]:
    """The client's configuration object. Raises InvalidInput for a combination a client does
    not support."""
    if client not in CLIENTS:
        raise InvalidInput(f"--client is one of {', '.join(CLIENTS)}")
    if transport not in ("stdio", "http"):
        raise InvalidInput("--transport is stdio or http")
    if not _ENV_NAME.fullmatch(token_env):
        raise InvalidInput("--token-env must be an environment variable name (A-Z, 0-9, _)")
    if transport == "stdio":
        entry: dict[str, Any] = {"command": command[0], "args": command[1:], "env": dict(env)}
        if client == "claude-code":
            entry = {"type": "stdio", **entry}
        return {"mcpServers": {name: entry}}
    if client == "claude-desktop":
        raise InvalidInput(
            "Claude Desktop's config file takes stdio servers only: use --transport stdio, or add "
            "the HTTP server as a connector in its settings"
        )
    if not url:
        raise InvalidInput("--url is required with --transport http")
    ref = f"${{{token_env}}}" if client == "claude-code" else f"${{env:{token_env}}}"
    http: dict[str, Any] = {"url": url, "headers": {"Authorization": f"Bearer {ref}"}}
    if client == "claude-code":
        http = {"type": "http", **http}
    return {"mcpServers": {name: http}}


def credentials_path_ok(path: Path) -> str | None:
    """A warning about the credentials file, or None."""
    if not path.is_absolute():
        return (
            f"{path} is relative: MCP clients start servers in a directory of their own; "
            "give an absolute path"
        )
    if not path.exists():
        return f"{path} does not exist yet: create it with `keybroker mcp credentials AGENT --out {path}`"
    return None
