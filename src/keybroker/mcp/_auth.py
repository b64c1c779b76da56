"""Who is calling: the MCP server always acts as one agent identity, checked by core per call.

* stdio: the server process holds the agent's own credential, referenced by
  ``KEYBROKER_AGENT_CREDENTIALS`` (a JSON file, mode 0600) or ``KEYBROKER_AGENT_TOKEN``. With a
  client id and secret, or a client id and an Ed25519 key, it logs in (core's machine login) and
  logs in again before the short-lived token runs out. Every call re-checks the token, so a
  revoked token or a disabled agent stops working at the next call.
* HTTP: every request carries ``Authorization: Bearer kbt_...`` (see :mod:`keybroker.mcp._http`).

Only identities of kind ``agent`` are served: people use the CLI or the API.

Credentials file, one of::

    {"client_id": "kbc_...", "client_secret": "kbs_..."}
    {"client_id": "kbc_...", "private_key_file": "/path/to/agent-ed25519.pem"}
    {"token": "kbt_..."}
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keybroker.core._rbac import AuthPrincipal
from keybroker.core._tokens import IssuedToken
from keybroker.crypto import SecretValue
from keybroker.errors import AuthenticationError, InvalidInput, PermissionDenied
from keybroker.mcp._services import AgentServices
from keybroker.mcp._settings import McpSettings

__all__ = ["AgentCredentials", "AgentLogin", "check_agent", "load_credentials"]

_RENEW_BEFORE = timedelta(seconds=60)


def check_agent(principal: AuthPrincipal) -> AuthPrincipal:
    """Raises PermissionDenied unless the principal is an agent identity."""
    if principal.kind != "agent":
        raise PermissionDenied(
            "the keybroker MCP server serves agent identities only: people use the CLI or the API"
        )
    return principal


@dataclass(frozen=True)
class AgentCredentials:
    """The agent's own credential. repr never shows a secret."""

    source: str
    client_id: str | None = None
    client_secret: SecretValue | None = None
    private_key: ed25519.Ed25519PrivateKey | None = dataclasses.field(default=None, repr=False)
    token: SecretValue | None = None

    @property
    def can_login(self) -> bool:
        return self.client_id is not None and (self.client_secret is not None or self.private_key is not None)


def _check_private(path: Path) -> None:
    """Refuse a credentials file others can read (as ssh does for keys)."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(f"{path} is readable by others: run chmod 600 {path}")


def _read(path: Path, what: str) -> str:
    try:
        _check_private(path)
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror or type(exc).__name__}") from None


def _load_key(pem: str, where: str) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidInput(f"{where}: not a readable unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InvalidInput(f"{where}: the private key must be Ed25519")
    return key


def credentials_from_file(path: Path) -> AgentCredentials:
    """Parse a credentials file. Raises InvalidInput naming the file and field, never a value."""
    text = _read(path, "agent credentials file")
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise InvalidInput(f"{path} is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a JSON object")
    allowed = {"client_id", "client_secret", "private_key", "private_key_file", "token", "agent", "org"}
    unknown = set(data) - allowed
    if unknown:
        raise InvalidInput(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    for k in allowed & set(data):
        if not isinstance(data[k], str):
            raise InvalidInput(f"{path}: {k} must be a string")
    where = f"file {path}"
    if "token" in data:
        return AgentCredentials(where, token=SecretValue(data["token"].strip()))
    cid = data.get("client_id")
    if not cid:
        raise InvalidInput(f"{path}: give client_id with client_secret or private_key_file, or token")
    if "client_secret" in data:
        return AgentCredentials(
            where, client_id=cid, client_secret=SecretValue(data["client_secret"].strip())
        )
    if "private_key_file" in data:
        kp = Path(data["private_key_file"]).expanduser()
        if not kp.is_absolute():
            kp = path.parent / kp
        return AgentCredentials(
            where, client_id=cid, private_key=_load_key(_read(kp, "private key file"), str(kp))
        )
    if "private_key" in data:
        return AgentCredentials(where, client_id=cid, private_key=_load_key(data["private_key"], str(path)))
    raise InvalidInput(f"{path}: give client_secret or private_key_file with the client_id")


def load_credentials(settings: McpSettings) -> AgentCredentials:
    """The agent's credential for stdio: the file, else the token variable. Raises InvalidInput."""
    if settings.agent_credentials is not None:
        return credentials_from_file(settings.agent_credentials.expanduser())
    if settings.agent_token is not None:
        return AgentCredentials(
            "KEYBROKER_AGENT_TOKEN", token=SecretValue(settings.agent_token.get_secret_value().strip())
        )
    raise InvalidInput(
        "no agent credential: set KEYBROKER_AGENT_CREDENTIALS to the agent's credentials file "
        "(or KEYBROKER_AGENT_TOKEN); `keybroker mcp credentials AGENT` writes one"
    )


class AgentLogin:
    """Keeps a live token for the agent (stdio) and turns it into a principal on every call."""

    def __init__(self, services: AgentServices, credentials: AgentCredentials, *, client: str = "mcp:stdio"):
        self.services = services
        self.credentials = credentials
        self.client = client
        self._token: str | None = credentials.token.reveal() if credentials.token else None
        self._expires: datetime | None = None
        self._lock = threading.Lock()

    def principal(self, request_id: str | None = None) -> AuthPrincipal:
        """Blocking (run it in a thread). Raises AuthenticationError, PermissionDenied,
        RateLimited, LoginLockedOut."""
        with self._lock:
            now = self.services.clock.now()
            due = self._expires is not None and self._expires - _RENEW_BEFORE <= now
            if self._token is None or (due and self.credentials.can_login):
                self._login()
            assert self._token is not None
            try:
                p = self.services.tokens.authenticate(self._token, client=self.client, request_id=request_id)
            except AuthenticationError:
                if not self.credentials.can_login:
                    raise
                self._login()
                p = self.services.tokens.authenticate(self._token, client=self.client, request_id=request_id)
        return check_agent(p)

    def _login(self) -> None:
        c = self.credentials
        ids = self.services.identities
        if c.client_id is None:
            raise AuthenticationError(f"the agent credential from {c.source} is no longer valid")
        issued: IssuedToken
        if c.client_secret is not None:
            issued = ids.login_client_secret(c.client_id, c.client_secret.reveal(), client=self.client)
        elif c.private_key is not None:
            ch = ids.challenge(c.client_id)
            issued = ids.login_signed(ch.challenge_id, c.private_key.sign(ch.message), client=self.client)
        else:  # pragma: no cover - can_login guards this
            raise AuthenticationError("no way to log in")
        self._token = issued.token.reveal()
        self._expires = issued.info.expires_at
