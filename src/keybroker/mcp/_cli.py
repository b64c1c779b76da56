"""``keybroker mcp``: serve MCP (stdio or streamable HTTP), print client configs, write an agent's
credentials file. Wired into the main CLI with :func:`register`; ``python -m keybroker.mcp`` runs
the same commands on their own."""

from __future__ import annotations

import json
import os
import shutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from keybroker.errors import AlreadyExists, InvalidInput

__all__ = ["register"]


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


class Client(StrEnum):
    claude_desktop = "claude-desktop"
    claude_code = "claude-code"
    cursor = "cursor"


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip() + "\n")
    sys.stderr.flush()


def _serve(
    ctx: typer.Context,
    transport: Annotated[
        Transport, typer.Option("--transport", "-t", help="stdio (default) or http.")
    ] = Transport.stdio,
    host: Annotated[
        str | None, typer.Option("--host", help="HTTP: address to bind (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP: port (default 8271).")] = None,
    path: Annotated[str | None, typer.Option("--path", help="HTTP: endpoint path (default /mcp).")] = None,
    gateway_url: Annotated[
        str | None,
        typer.Option(
            "--gateway-url", help="Where agents reach the gateway (default http://127.0.0.1:8270/gw)."
        ),
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            "--credentials", help="stdio: the agent's credentials file (else KEYBROKER_AGENT_CREDENTIALS)."
        ),
    ] = None,
) -> None:
    """Serve MCP for agents (stdio by default; subcommands: config, credentials).

    Agents list secrets, ask for access, wait for a person's approval, get proxy credentials for
    the gateway and revoke. Secret values never cross MCP. Over stdio the server acts as the
    agent whose credential KEYBROKER_AGENT_CREDENTIALS (or KEYBROKER_AGENT_TOKEN) names; over
    HTTP every request carries the agent's bearer token."""
    if ctx.invoked_subcommand is not None:
        return
    import anyio

    from keybroker.cli._state import get_state
    from keybroker.mcp._auth import AgentLogin, load_credentials
    from keybroker.mcp._server import KeybrokerMCP
    from keybroker.mcp._services import AgentServices, notifier_from_settings
    from keybroker.mcp._settings import load_mcp_settings

    overrides: dict[str, Any] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("path", path),
        ("gateway_url", gateway_url),
        ("agent_credentials", credentials),
    ):
        if value is not None:
            overrides[key] = value
    settings = load_mcp_settings(**overrides)
    state = get_state(ctx)
    # without a reveal allow-list nothing here decrypts, so the vault stays sealed in this process
    vault = state.unsealed() if settings.reveal else state.initialized_vault()
    services = AgentServices.build(
        vault, notifier=notifier_from_settings(settings), proxy_token_ttl_s=settings.proxy_token_ttl_s
    )
    try:
        if transport is Transport.stdio:
            login = AgentLogin(services, load_credentials(settings), client="mcp:stdio")
            login.principal()  # fail now, with a clear error, rather than on the first call
            mcp = KeybrokerMCP(services, settings, transport="stdio", login=login)
            from keybroker.mcp import serve_stdio

            anyio.run(serve_stdio, mcp)
        else:
            import uvicorn

            from keybroker.mcp._http import McpHttpApp

            app = McpHttpApp(KeybrokerMCP(services, settings, transport="http"))
            _err(
                f"keybroker MCP on http://{settings.host}:{settings.port}{settings.path} "
                "(agents send Bearer kbt_...)"
            )
            uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    finally:
        services.close()


def _default_command() -> list[str]:
    exe = shutil.which("keybroker")
    if exe:
        return [str(Path(exe).resolve()), "mcp"]
    return [sys.executable, "-m", "keybroker.mcp"]


def _config(
    ctx: typer.Context,
    client: Annotated[Client, typer.Option("--client", help="claude-desktop, claude-code or cursor.")],
    transport: Annotated[
        Transport, typer.Option("--transport", "-t", help="stdio (default) or http.")
    ] = Transport.stdio,
    credentials: Annotated[
        Path | None,
        typer.Option("--credentials", help="stdio: the agent's credentials file (an absolute path)."),
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="http: the MCP endpoint URL.")] = None,
    token_env: Annotated[
        str, typer.Option("--token-env", help="http: the environment variable that holds the agent's token.")
    ] = "KEYBROKER_AGENT_TOKEN",  # noqa: S107 - a variable name, not a token
    name: Annotated[str, typer.Option("--name", help="The server's name in the client.")] = "keybroker",
) -> None:
    """Print the MCP client configuration to paste.

    It references the agent's own credential (a file path, or a variable name for HTTP) and never
    holds a secret."""
    from keybroker.cli._state import get_state
    from keybroker.mcp._config import client_config, credentials_path_ok, safe_db_url
    from keybroker.mcp._settings import DEFAULT_GATEWAY_URL, load_mcp_settings

    env: dict[str, str] = {}
    if transport is Transport.stdio:
        state = get_state(ctx)
        mcp_settings = load_mcp_settings()
        cred = credentials or mcp_settings.agent_credentials
        if cred is None:
            raise InvalidInput(
                "give --credentials PATH (the agent's credentials file; "
                "`keybroker mcp credentials AGENT --out PATH` writes one)"
            )
        warning = credentials_path_ok(cred)
        if warning:
            _err(f"warning: {warning}")
        env["KEYBROKER_AGENT_CREDENTIALS"] = str(cred)
        s = state.settings
        if s.db_url:
            db, stripped = safe_db_url(s.db_url)
            env["KEYBROKER_DB_URL"] = db
            if stripped:
                _err("warning: the database password is left out: put it in ~/.pgpass (or PGPASSFILE)")
        else:
            env["KEYBROKER_HOME"] = str(s.home.expanduser().resolve())
        if mcp_settings.gateway_url != DEFAULT_GATEWAY_URL:
            env["KEYBROKER_MCP_GATEWAY_URL"] = mcp_settings.gateway_url
    out = client_config(
        client.value,
        transport=transport.value,
        command=_default_command(),
        env=env,
        url=url,
        token_env=token_env,
        name=name,
    )
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


def _credentials(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="The agent identity's name.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the credentials file (mode 0600).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write an agent's credentials file (mode 0600) with a new client secret.

    The agent's previous client secret stops working. The secret is never printed."""
    from keybroker.cli._state import get_state
    from keybroker.core._identity import IdentityService
    from keybroker.core._rbac import RbacAuthorizer
    from keybroker.core._tokens import TokenService

    state = get_state(ctx)
    out = out.expanduser().resolve()
    if out.exists() and not force:
        raise AlreadyExists(f"{out} exists: pass --force to replace it")
    vault = state.initialized_vault()
    rbac = RbacAuthorizer()
    ids = IdentityService(vault, TokenService(vault, rbac), rbac)
    org = state.scope().org
    ident = ids.get(state.principal, agent, org=org)
    if ident.kind != "agent":
        raise InvalidInput(f"{agent!r} is a {ident.kind} identity, not an agent")
    creds = ids.new_client_secret(state.principal, agent, org=org)
    body = json.dumps(
        {
            "agent": agent,
            "org": org,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret.reveal(),
        },
        indent=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _err(
        f"wrote {out} for agent {agent} (client id {creds.client_id}); "
        "point KEYBROKER_AGENT_CREDENTIALS at it"
    )


def register(app: typer.Typer) -> None:
    """Add ``mcp`` (serve), ``mcp config`` and ``mcp credentials`` to ``app``."""
    mcp_app = typer.Typer(
        name="mcp",
        help="MCP server for agents (stdio or HTTP); client configs and agent credentials.",
        epilog=(
            "Agents list secrets, ask for access, wait for a person's approval and call providers "
            "through the gateway with proxy tokens. Secret values never cross MCP. See docs/mcp.md."
        ),
        no_args_is_help=False,
        add_completion=False,
    )
    mcp_app.callback(invoke_without_command=True)(_serve)
    mcp_app.command("config")(_config)
    mcp_app.command("credentials")(_credentials)
    app.add_typer(mcp_app, name="mcp")
