"""``keybroker gateway`` (the gateway on its own) and ``keybroker access list|show|approve|deny``,
for the CLI to mount with :func:`register`.

``access`` works against a server when ``KEYBROKER_ADDR`` (with ``KEYBROKER_TOKEN``) is set, and
against the local vault otherwise (as its owner). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

__all__ = ["register"]

T = TypeVar("T")

access_app = typer.Typer(help="Agents' access requests: list, show, approve, deny.", no_args_is_help=True)

StatusOpt = Annotated[
    str | None,
    typer.Option("--status", help="pending, approved, denied, expired or cancelled (default: all)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


# ---------------------------------------------------------------------------- backends
class _Local:
    """The local vault, as its owner."""

    def __init__(self, ctx: typer.Context) -> None:
        from keybroker.cli._state import get_state
        from keybroker.core._access_requests import AccessRequestService
        from keybroker.core._agents import ToolRegistry
        from keybroker.core._sessions import SessionService

        state = get_state(ctx)
        self.principal = state.principal
        secrets = state.unsealed_service()
        self.requests = AccessRequestService(ToolRegistry(SessionService(secrets)))

    def close(self) -> None:
        return None

    def list(self, status: str | None) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.requests.list_requests(self.principal, status=status)]

    def show(self, rid: str) -> dict[str, Any]:
        return self.requests.get(self.principal, rid).to_dict()

    def approve(self, rid: str, duration_s: int | None, comment: str) -> dict[str, Any]:
        return self.requests.approve(self.principal, rid, duration_s=duration_s, comment=comment).to_dict()

    def deny(self, rid: str, reason: str) -> dict[str, Any]:
        return self.requests.deny(self.principal, rid, reason=reason).to_dict()


class _Remote:
    """A keybroker server (``KEYBROKER_ADDR``), with ``KEYBROKER_TOKEN``."""

    def __init__(self, addr: str, token: str) -> None:
        import httpx

        self.http = httpx.Client(
            base_url=addr.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        from keybroker.core import _access_errors  # noqa: F401 - registers the codes for from_code
        from keybroker.errors import StoreError, from_code

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise StoreError(f"cannot reach the keybroker server: {type(exc).__name__}") from None
        body = r.json() if r.content else {}
        if r.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise from_code(str(err.get("code", "error")), str(err.get("message", f"HTTP {r.status_code}")))
        return body

    def list(self, status: str | None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list(self._call("GET", "/v1/access-requests", params=params)["requests"])

    def show(self, rid: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/access-requests/{rid}")["request"])

    def approve(self, rid: str, duration_s: int | None, comment: str) -> dict[str, Any]:
        body = {"comment": comment} | ({"duration_s": duration_s} if duration_s else {})
        return dict(self._call("POST", f"/v1/access-requests/{rid}/approve", json=body)["request"])

    def deny(self, rid: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/access-requests/{rid}/deny", json={"reason": reason})["request"])


def _backend(ctx: typer.Context) -> _Local | _Remote:
    from keybroker.config import load_settings

    settings = load_settings()
    if settings.addr:
        if settings.token is None:
            from keybroker.errors import AuthenticationError

            raise AuthenticationError("KEYBROKER_ADDR is set: set KEYBROKER_TOKEN too")
        return _Remote(settings.addr, settings.token.get_secret_value())
    return _Local(ctx)


def _run(ctx: typer.Context, fn: Callable[[_Local | _Remote], T]) -> T:
    backend = _backend(ctx)
    try:
        return fn(backend)
    finally:
        backend.close()


def _seconds(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    from keybroker.cli._io import parse_duration

    return int(parse_duration(text).total_seconds())


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _line(r: dict[str, Any]) -> str:
    secrets = ", ".join(
        f"{s['project']}/{s['environment']}/{s['name']}({s.get('risk', '?')})" for s in r["secrets"]
    )
    approvals = f"{len(r['approvals'])}/{r['required_approvals']}"
    return f"{r['id']}  {r['status']:<9} {approvals:<5} {r['requested_by']}  tool={r['tool_id']}  {secrets}"


def _safe(text: str) -> str:
    """Agent-written text, printed as data: control characters (terminal escapes) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _show(r: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"request      {r['id']}\nstatus       {r['status']}  ({r['policy']})\n")
    w(f"requested by {r['requested_by']}  tool {r['tool_id']}\n")
    for s in r["secrets"]:
        w(f"secret       {s['project']}/{s['environment']}/{s['name']}  risk {s.get('risk', '?')}\n")
    # printed as data, on lines of their own: the agent wrote these
    w(
        f"duration     {r['duration_s']} s"
        + (f" (granted {r['granted_duration_s']} s)" if r["granted_duration_s"] else "")
        + "\n"
    )
    w("justification:\n")
    for line in str(r["justification"]).splitlines() or [""]:
        w(f"  | {_safe(line)}\n")
    if r["context"]:
        w(f"context      {json.dumps(r['context'], sort_keys=True)}\n")  # JSON escapes control characters
    w(f"approvals    {len(r['approvals'])}/{r['required_approvals']}\n")
    for a in r["approvals"]:
        w(
            f"  - {a['approver']} at {a['created_at']}"
            + (f" ({a['duration_s']} s)" if a["duration_s"] else "")
            + "\n"
        )
    w(f"created      {r['created_at']}  expires {r['expires_at']}\n")
    if r["decided_at"]:
        w(
            f"decided      {r['decided_at']} by {r['decided_by']}"
            + (f": {r['reason']}" if r["reason"] else "")
            + "\n"
        )
    if r["session_id"]:
        w(f"session      {r['session_id']}\n")


# ---------------------------------------------------------------------------- access commands
@access_app.command("list")
def access_list(ctx: typer.Context, status: StatusOpt = None, as_json: JsonOpt = False) -> None:
    """Access requests you may see, newest first."""
    rows = _run(ctx, lambda b: b.list(status))
    if as_json:
        _print({"requests": rows}, True)
        return
    if not rows:
        sys.stdout.write("no access requests\n")
    for r in rows:
        sys.stdout.write(_line(r) + "\n")


@access_app.command("show")
def access_show(ctx: typer.Context, request_id: str, as_json: JsonOpt = False) -> None:
    """One request: secrets and their risk, the agent's justification and context, approvals."""
    r = _run(ctx, lambda b: b.show(request_id))
    if as_json:
        _print({"request": r}, True)
    else:
        _show(r)


@access_app.command("approve")
def access_approve(
    ctx: typer.Context,
    request_id: str,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Shorten the session (seconds, or 15m, 2h)")
    ] = None,
    comment: Annotated[str, typer.Option("--comment", help="Why you approve")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending request (high-risk secrets need a second approver)."""
    r = _run(ctx, lambda b: b.approve(request_id, _seconds(duration), comment))
    if as_json:
        _print({"request": r}, True)
    elif r["status"] == "approved":
        sys.stdout.write(f"approved {r['id']}: session {r['session_id']} for {r['granted_duration_s']} s\n")
    else:
        sys.stdout.write(
            f"approval recorded ({len(r['approvals'])}/{r['required_approvals']}); still pending\n"
        )


@access_app.command("deny")
def access_deny(
    ctx: typer.Context,
    request_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (the agent sees it)")],
    as_json: JsonOpt = False,
) -> None:
    """Deny a pending request, with a reason."""
    r = _run(ctx, lambda b: b.deny(request_id, reason))
    if as_json:
        _print({"request": r}, True)
    else:
        sys.stdout.write(f"denied {r['id']}\n")


# ---------------------------------------------------------------------------- gateway command
def gateway_cmd(
    host: Annotated[
        str | None, typer.Option(help="Address [default: KEYBROKER_GATEWAY_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: KEYBROKER_GATEWAY_PORT or 8271]")] = None,
    db_url: Annotated[
        str | None, typer.Option("--db-url", help="Store URL (default: the embedded SQLite)")
    ] = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="Unseal at start with this passphrase")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="Unseal at start with this root key")
    ] = None,
) -> None:
    """Run the key-injecting gateway on its own (the same one `serve` mounts at /gw).

    Agents point their SDK at http://HOST:PORT/<provider>/... with a proxy token as API key."""
    import uvicorn

    from keybroker.core import SecretService
    from keybroker.core._rbac import RbacAuthorizer
    from keybroker.errors import KeybrokerError, VaultSealed
    from keybroker.gateway._settings import GatewaySettings
    from keybroker.server._access_api import AccessServices
    from keybroker.server._serve import prepare_vault
    from keybroker.server._settings import ServerSettings

    def echo(msg: str) -> None:
        typer.echo(msg, err=True)

    try:
        overrides: dict[str, Any] = {
            k: v
            for k, v in {"db_url": db_url, "passphrase_file": passphrase_file, "key_file": key_file}.items()
            if v
        }
        vault = prepare_vault(ServerSettings(**overrides), echo)
        if vault.sealed:
            raise VaultSealed("the gateway needs an unsealed vault: give --passphrase-file or --key-file")
        gs = GatewaySettings()
        gs = gs.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
        acc = AccessServices.build(SecretService(vault, RbacAuthorizer()), gs)
    except KeybrokerError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    acc.cleanup.start()
    echo(f"keybroker gateway listening on http://{gs.host}:{gs.port} (routes /openai, /anthropic, ...)")
    try:
        uvicorn.run(
            acc.gateway,
            host=gs.host,
            port=gs.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ws="none",
        )
    finally:
        acc.cleanup.stop()
        vault.store.dispose()


def register(app: typer.Typer) -> None:
    """Add ``gateway`` and ``access list|show|approve|deny`` to the keybroker CLI."""
    app.command("gateway")(gateway_cmd)
    app.add_typer(access_app, name="access")
