"""``keybroker serve``: open (or create) the vault, unseal it if told how, run uvicorn.

On the embedded default store (no ``KEYBROKER_DB_URL``) the first run initialises a vault whose
root key goes to ``$KEYBROKER_HOME/root.key`` (unless a passphrase file, key file, keychain or
dev key is given) and writes a root token to ``$KEYBROKER_HOME/root-token`` (mode 0600). The
token itself is never printed or logged: only the file's path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from keybroker.core import (
    KeychainRoot,
    KeyFileRoot,
    PassphraseRoot,
    RawRoot,
    RootKeySource,
    Vault,
    local_principal,
)
from keybroker.core._identity import IdentityService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.errors import InvalidInput
from keybroker.server import _access_api
from keybroker.server._app import _build_vault, create_app
from keybroker.server._settings import ServerSettings
from keybroker.server._state import Services

__all__ = ["prepare_vault", "root_source", "serve", "write_root_token"]


def root_source(settings: ServerSettings) -> RootKeySource | None:
    """How to unseal at start, from the settings (None: start sealed)."""
    given = [
        x
        for x in (settings.passphrase_file, settings.key_file, settings.keychain or None, settings.dev_key())
        if x
    ]
    if len(given) > 1:
        raise InvalidInput("give one of passphrase file, key file, keychain or dev key")
    if settings.passphrase_file:
        try:
            text = settings.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the passphrase file {settings.passphrase_file}: {exc.strerror}"
            ) from None
        return PassphraseRoot(text)
    if settings.key_file:
        return KeyFileRoot(settings.key_file)
    if settings.keychain:
        return KeychainRoot()
    key = settings.dev_key()
    if key:
        return RawRoot(key)
    if settings.embedded and settings.default_key_file().exists():
        return KeyFileRoot(settings.default_key_file())
    return None


def write_root_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600 (replacing any older file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)


def new_root_token(vault: Vault, settings: ServerSettings) -> Path:
    authz = RbacAuthorizer()
    ids = IdentityService(vault, TokenService(vault, authz), authz)
    issued = ids.bootstrap_root(local_principal("serve"))
    path = settings.root_token_file()
    write_root_token(path, issued.token.reveal())
    return path


def prepare_vault(settings: ServerSettings, echo: Callable[[str], None], *, new_root: bool = False) -> Vault:
    """Open the vault; initialise it (embedded default, or ``auto_init``) or unseal it."""
    if settings.embedded:
        # the vault file, its WAL, the root key and the root token live here: keep it private
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    vault = _build_vault(settings, None)
    source = root_source(settings)
    me = local_principal("serve")
    auto_init = settings.embedded if settings.auto_init is None else settings.auto_init
    if not vault.is_initialized():
        if not auto_init:
            echo(
                "the store holds no vault yet: run `keybroker init` against it (or set KEYBROKER_AUTO_INIT=1)"
            )
            return vault
        if source is None:
            source = KeyFileRoot(settings.default_key_file())
        vault.initialize(source, me)
        echo(f"initialised a new vault in {settings.database_url().split('@')[-1]}")
        if isinstance(source, KeyFileRoot):
            echo(f"its root key is in {source.path} (mode 0600): back it up, it unseals the vault")
        new_root = True
    else:
        vault.store.migrate()
        if source is not None:
            vault.unseal(source, me)
            echo("vault unsealed")
        else:
            echo(
                'the vault is sealed: POST /v1/sys/unseal with {"passphrase": ...} (or `bao operator unseal`)'
            )
    if new_root and not vault.sealed:
        path = new_root_token(vault, settings)
        echo(f"a root (admin) token is in {path} (mode 0600): export KEYBROKER_TOKEN=$(cat {path})")
    return vault


def _mount_agent_access(app: FastAPI, kb: Services) -> None:
    """The agent-access REST API's services and the gateway at ``/gw`` (router included above)."""
    _access_api.install(app, kb, include_router=False)


def _mount_mcp(app: FastAPI, kb: Services) -> None:
    """MCP over streamable HTTP at ``/mcp``, sharing the gateway's agent services."""
    import keybroker.mcp

    keybroker.mcp.install(app, kb)


def serve(settings: ServerSettings, echo: Callable[[str], None], *, new_root: bool = False) -> None:
    import uvicorn

    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise InvalidInput("TLS needs both --tls-cert and --tls-key")
    vault = prepare_vault(settings, echo, new_root=new_root)
    app = create_app(
        settings,
        vault=vault,
        owns_vault=True,
        routers=[_access_api.router],
        extensions=[_mount_agent_access, _mount_mcp],
    )
    scheme = "https" if settings.tls_cert else "http"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        http=settings.http,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        server_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    echo(f"keybroker listening on {scheme}://{settings.host}:{settings.port}")
    server.run()
