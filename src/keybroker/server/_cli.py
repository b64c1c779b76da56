"""``keybroker serve``, for the CLI to mount with :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the keybroker CLI."""

    @app.command("serve")
    def serve_cmd(
        host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1]")] = None,
        port: Annotated[int | None, typer.Option(help="Port [default: 8270]")] = None,
        tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM)")] = None,
        tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM)")] = None,
        db_url: Annotated[
            str | None, typer.Option("--db-url", help="Store URL (default: the embedded SQLite)")
        ] = None,
        passphrase_file: Annotated[
            Path | None, typer.Option("--passphrase-file", help="Unseal at start with this passphrase")
        ] = None,
        key_file: Annotated[
            Path | None, typer.Option("--key-file", help="Unseal at start with this root key")
        ] = None,
        keychain: Annotated[
            bool, typer.Option("--keychain", help="Unseal with the key in the OS keychain")
        ] = False,
        new_root_token: Annotated[
            bool,
            typer.Option("--new-root-token", help="Write a fresh root token to $KEYBROKER_HOME/root-token"),
        ] = False,
    ) -> None:
        """Run the keybroker server (REST API v1, Vault-compatible KV v2, /metrics)."""
        from pydantic import ValidationError

        from keybroker.errors import KeybrokerError
        from keybroker.server._serve import serve
        from keybroker.server._settings import ServerSettings

        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "host": host,
                "port": port,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "db_url": db_url,
                "passphrase_file": passphrase_file,
                "key_file": key_file,
            }.items()
            if v is not None
        }
        if keychain:
            overrides["keychain"] = True

        def echo(msg: str) -> None:
            typer.echo(msg, err=True)

        try:
            settings = ServerSettings(**overrides)
            serve(settings, echo, new_root=new_root_token)
        except KeybrokerError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            bad = ", ".join(f"KEYBROKER_{str(e['loc'][0]).upper()}" for e in exc.errors() if e.get("loc"))
            typer.echo(f"error: invalid setting(s): {bad or 'unknown'}", err=True)
            raise typer.Exit(2) from None
