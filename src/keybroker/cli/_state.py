"""Per-invocation state: settings, the store, the vault, and how to unseal it.

Opened lazily (``status`` of a fresh machine opens nothing it does not need) and closed when the
command ends. The CLI talks to core only: :class:`Vault`, :class:`SecretService`, the audit log.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from sqlalchemy.exc import ArgumentError

from keybroker.cli._backend import LocalBackend, RemoteBackend, SecretsBackend
from keybroker.cli._io import OutputFormat, read_passphrase_file, warn
from keybroker.cli._session import SessionStore
from keybroker.config import Settings, load_settings, session_key_dir
from keybroker.core import (
    KeyFileRoot,
    PassphraseRoot,
    Principal,
    RawRoot,
    RootKeySource,
    Scope,
    SecretService,
    SystemClock,
    Vault,
    check_scope_name,
    local_principal,
)
from keybroker.errors import AuthenticationError, InvalidInput, NotInitialized, VaultSealed
from keybroker.store import Store

__all__ = ["CLIENT", "DEV_WARNING", "State", "get_state"]

CLIENT = "keybroker-cli"
DEV_WARNING = (
    "dev mode: the root key comes from KEYBROKER_DEV_ROOT_KEY in the environment; "
    "never keep real secrets in a dev-mode vault"
)
_OUTPUT_KEY = "keybroker.output"


@dataclass
class State:
    settings: Settings
    output: OutputFormat = OutputFormat.text
    project: str | None = None
    env: str | None = None
    org: str | None = None
    principal: Principal = field(default_factory=lambda: local_principal(CLIENT))
    clock: SystemClock = field(default_factory=SystemClock)
    _store: Store | None = None
    _vault: Vault | None = None
    _service: SecretService | None = None
    _remote: RemoteBackend | None = None

    @property
    def json(self) -> bool:
        return self.output is OutputFormat.json

    # -- where the secrets are -----------------------------------------------------------------
    @property
    def addr(self) -> str | None:
        """The server address (``--addr`` or ``KEYBROKER_ADDR``), or None for the local vault."""
        return (self.settings.addr or "").strip() or None

    @property
    def remote(self) -> bool:
        return self.addr is not None

    def require_local(self, what: str) -> None:
        """Refuse a command that only works on a local vault when a server address is set."""
        if self.remote:
            raise InvalidInput(
                f"`keybroker {what}` works on a local vault only; unset KEYBROKER_ADDR / drop --addr"
            )

    def token(self) -> str:
        """The server token: ``KEYBROKER_TOKEN``, else the file named by ``KEYBROKER_TOKEN_FILE``
        (never a command-line argument, so it stays out of shell history and ``ps``)."""
        if self.settings.token is not None:
            return self.settings.token.get_secret_value().strip()
        tf = self.settings.token_file
        if tf is not None:
            try:
                tok = tf.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or type(exc).__name__
                raise InvalidInput(f"cannot read KEYBROKER_TOKEN_FILE {tf}: {why}") from None
            if tok:
                return tok
            raise InvalidInput(f"KEYBROKER_TOKEN_FILE {tf} is empty")
        raise AuthenticationError(
            f"no token for the server at {self.addr}: set KEYBROKER_TOKEN or KEYBROKER_TOKEN_FILE"
        )

    def remote_backend(self) -> RemoteBackend:
        if self._remote is None:
            from keybroker.client import Client

            addr = self.addr
            if addr is None or not addr.startswith(("http://", "https://")):
                raise InvalidInput("the server address must start with http:// or https://")
            if self.org:
                warn("--org is ignored against a server: the organization comes from the token")
            scope = self.scope()
            client = Client(
                addr,
                self.token(),
                project=scope.project,
                environment=scope.environment,
                cache_ttl=0.0,
                max_stale=None,
                environ={},
            )
            self._remote = RemoteBackend(client)
        return self._remote

    def backend(self, passphrase_file: Path | None = None, *, unseal: bool = True) -> SecretsBackend:
        """Where the secret commands go: the server when an address is set, else the local vault
        (unsealed first when ``unseal``; metadata is readable while sealed)."""
        if self.remote:
            return self.remote_backend()
        svc = self.unsealed_service(passphrase_file) if unseal else self.service()
        return LocalBackend(svc, self.principal)

    # -- resources -----------------------------------------------------------------------------
    def store(self) -> Store:
        if self._store is None:
            if self.settings.uses_default_store():
                # the vault file, its WAL and the session live here: keep the directory private
                home = self.settings.home
                home.mkdir(mode=0o700, parents=True, exist_ok=True)
            url = self.settings.database_url()
            try:
                self._store = Store(url)
            except (ArgumentError, ImportError, ValueError):
                raise InvalidInput(
                    "KEYBROKER_DB_URL is not a usable database URL (sqlite:///PATH or postgresql://...)"
                ) from None
        return self._store

    def store_url(self) -> str:
        """The store URL with any password hidden."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.settings.database_url()).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            return "(unparseable URL)"

    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = Vault(self.store(), self.clock)
        return self._vault

    def initialized_vault(self) -> Vault:
        v = self.vault()
        if not v.is_initialized():
            raise NotInitialized("no vault here yet: run `keybroker init`")
        return v

    def sessions(self) -> SessionStore:
        token = self.settings.session.get_secret_value() if self.settings.session else None
        return SessionStore(self.settings.home, session_key_dir(self.settings), self.clock, token)

    def service(self) -> SecretService:
        if self._service is None:
            self._service = SecretService(self.initialized_vault())
        return self._service

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._store is not None:
            self._store.dispose()
            self._store = None

    # -- scope ---------------------------------------------------------------------------------
    def scope(self, project: str | None = None, env: str | None = None) -> Scope:
        s = self.settings
        p = project or self.project or s.default_project()
        e = env or self.env or s.default_environment()
        o = self.org or s.default_org()
        check_scope_name("project", p)
        check_scope_name("environment", e)
        check_scope_name("organization", o)
        return Scope(p, e, o)

    # -- unsealing -----------------------------------------------------------------------------
    def _as(self, how: str) -> Principal:
        """The principal for an unseal, with how it happened in the audited client field."""
        return dataclasses.replace(self.principal, client=f"{CLIENT}/{how}")

    def dev_source(self) -> RawRoot | None:
        if self.settings.dev_root_key is not None and not self.settings.dev_mode:
            warn("KEYBROKER_DEV_ROOT_KEY is ignored unless KEYBROKER_DEV_MODE=1")
            return None
        key = self.settings.dev_key()
        if key is None:
            return None
        warn(DEV_WARNING)
        return RawRoot(key, kind="dev-env")

    def root_kind(self, vault: Vault) -> str:
        return str(vault.status().get("root_kind") or "passphrase")

    def script_source(
        self, vault: Vault, passphrase_file: Path | None = None, key_file: Path | None = None
    ) -> RootKeySource | None:
        """A way to unseal without asking anyone (for scripts), or None."""
        kind = self.root_kind(vault)
        if kind == "passphrase":
            if key_file is not None:
                raise InvalidInput("this vault is unsealed with a passphrase, not a key file")
            pf = passphrase_file or self.settings.passphrase_file
            return PassphraseRoot(read_passphrase_file(pf)) if pf else None
        if kind == "keyfile":
            if passphrase_file is not None:
                raise InvalidInput("this vault is unsealed with a key file, not a passphrase")
            kf = key_file or self.settings.key_file
            return KeyFileRoot(kf) if kf else None
        if kind == "dev-env":
            return self.dev_source()
        if passphrase_file is not None or key_file is not None:
            raise InvalidInput(f"this vault's root key is kept in the {kind}; run `keybroker unseal`")
        return None

    def unsealed(self, passphrase_file: Path | None = None, key_file: Path | None = None) -> Vault:
        """The vault, unsealed: by the unseal session if there is a live one, else by a
        passphrase/key file or the dev key. Raises VaultSealed when there is no way."""
        v = self.initialized_vault()
        if not v.sealed:
            return v
        session, why = self.sessions().load(v.vault_id)
        if session is not None:
            # Each process loads the keyring anew; the audit record says it came from a session.
            v.unseal(RawRoot(session.root, kind="session"), self._as("session"))
            return v
        source = self.script_source(v, passphrase_file, key_file)
        if source is not None:
            v.unseal(source, self._as(source.kind))
            return v
        detail = f" ({why})" if why else ""
        raise VaultSealed(f"the vault is sealed{detail}: run `keybroker unseal`")

    def unsealed_service(self, passphrase_file: Path | None = None) -> SecretService:
        self.unsealed(passphrase_file)
        return self.service()


def get_state(ctx: typer.Context, output: OutputFormat | None = None) -> State:
    """The invocation's :class:`State` (made by the root callback). A command's own
    ``--output`` overrides the global one."""
    root = ctx.find_root()
    state = root.obj
    if not isinstance(state, State):  # a sub-app invoked on its own (tests)
        state = State(load_settings())
        root.obj = state
        root.call_on_close(state.close)
    if output is not None:
        state.output = output
        ctx.meta[_OUTPUT_KEY] = output
    return state


def output_of(ctx: Any) -> OutputFormat | None:
    value = ctx.meta.get(_OUTPUT_KEY) if ctx is not None else None
    return value if isinstance(value, OutputFormat) else None


def new_request_principal() -> Principal:
    """One request id per CLI invocation, so every record it makes can be found together."""
    return dataclasses.replace(local_principal(CLIENT), request_id=uuid.uuid4().hex)
