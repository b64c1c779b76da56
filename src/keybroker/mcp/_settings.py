"""Settings of the MCP server: server-side only, read once at start-up, never changed by a call.

Nothing an MCP client sends can change any of these: the tool list, the tool descriptions and the
reveal allow-list are fixed when the server starts. ``KEYBROKER_MCP_*`` environment variables
(and the command-line flags of ``keybroker mcp``) set them; the vault itself is found as the CLI
finds it (``KEYBROKER_HOME``, ``KEYBROKER_DB_URL``).

The agent's own credential is referenced, never embedded: ``KEYBROKER_AGENT_CREDENTIALS`` names a
file (mode 0600) holding a client id and secret or a client id and an Ed25519 private key, or
``KEYBROKER_AGENT_TOKEN`` holds a ``kbt_`` token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keybroker.core._names import check_scope_name, check_secret_name
from keybroker.errors import InvalidInput, InvalidName

__all__ = ["DEFAULT_GATEWAY_URL", "McpSettings", "load_mcp_settings", "parse_ref"]

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8270/gw"


def parse_ref(text: str) -> tuple[str, str, str]:
    """``project/environment/NAME`` -> its three parts. Raises InvalidInput (never quoting it)."""
    if not isinstance(text, str):
        raise InvalidInput("name a secret as project/environment/NAME")
    parts = text.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise InvalidInput("name a secret as project/environment/NAME (as list_secrets shows it)")
    try:
        check_scope_name("project", parts[0])
        check_scope_name("environment", parts[1])
        check_secret_name(parts[2])
    except InvalidName:
        raise InvalidInput(
            "name a secret as project/environment/NAME: lowercase project and environment names, "
            "and an env-var or path style secret name"
        ) from None
    return parts[0], parts[1], parts[2]


class McpSettings(BaseSettings):
    """``KEYBROKER_MCP_*`` (a few shared names are noted). Every limit is per agent identity."""

    model_config = SettingsConfigDict(
        env_prefix="KEYBROKER_MCP_",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
    )

    #: where agents reach the gateway: ``keybroker serve`` mounts it at ``/gw``
    gateway_url: str = Field(
        default=DEFAULT_GATEWAY_URL,
        validation_alias=AliasChoices("KEYBROKER_MCP_GATEWAY_URL", "KEYBROKER_GATEWAY_URL", "gateway_url"),
    )
    #: exact ``project/environment/NAME`` refs whose *low-risk*, not proxy-only values an agent
    #: with a live approved session may read through ``reveal_secret``. Empty (the default): the
    #: tool does not exist and no value ever crosses MCP.
    reveal: Annotated[tuple[str, ...], NoDecode] = ()
    #: tool calls per second and burst, per agent
    rate: float = Field(default=5.0, ge=0)
    burst: float = Field(default=30.0, ge=1)
    #: access requests per minute and burst, per agent (approvers' attention is the scarce thing)
    request_rate_per_min: float = Field(default=6.0, ge=0)
    request_burst: float = Field(default=5.0, ge=1)
    #: pending requests one agent may have at once
    max_pending: int = Field(default=10, ge=1)
    #: the longest ``access_status`` may wait for a decision, and how often it looks
    max_wait_s: float = Field(default=60.0, ge=0, le=600)
    poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    #: ask the person at the client (MCP elicitation) to keep or withdraw a pending request
    elicitation: bool = True
    elicitation_timeout_s: float = Field(default=300.0, gt=0)
    #: lifetime of a proxy token handed out by get_proxy_credentials (never past its session)
    proxy_token_ttl_s: int = Field(default=900, gt=0, le=24 * 3600)
    #: streamable HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8271, ge=0, le=65535)
    path: str = "/mcp"
    #: Host header values accepted over HTTP (DNS-rebinding protection); empty: loopback names
    #: when bound to a loopback address, else no check (the bearer token is still required)
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: the agent's own credential (stdio): a file, or a token in the environment
    agent_credentials: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KEYBROKER_AGENT_CREDENTIALS", "agent_credentials"),
    )
    agent_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KEYBROKER_AGENT_TOKEN", "agent_token")
    )
    #: approvers' webhook (shared with the server: ``KEYBROKER_WEBHOOK_*``)
    webhook_url: str | None = Field(
        default=None, validation_alias=AliasChoices("KEYBROKER_WEBHOOK_URL", "webhook_url")
    )
    webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KEYBROKER_WEBHOOK_SECRET", "webhook_secret")
    )
    webhook_secret_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("KEYBROKER_WEBHOOK_SECRET_FILE", "webhook_secret_file")
    )

    @field_validator("reveal", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(x.strip() for x in v.split(",") if x.strip())
        return v

    @field_validator("reveal")
    @classmethod
    def _exact_refs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for ref in v:
            if any(c in ref for c in "*?[]"):
                raise ValueError("reveal takes exact project/environment/NAME refs, no patterns")
            try:
                parse_ref(ref)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return tuple(dict.fromkeys(v))

    @field_validator("gateway_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @field_validator("path")
    @classmethod
    def _abs_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v

    def webhook_signing_secret(self) -> str | None:
        """The webhook's HMAC secret, from the variable or its file. Raises InvalidInput."""
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value()
        if self.webhook_secret_file is not None:
            try:
                return self.webhook_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise InvalidInput(
                    f"cannot read KEYBROKER_WEBHOOK_SECRET_FILE: {exc.strerror or type(exc).__name__}"
                ) from None
        return None


def load_mcp_settings(**overrides: Any) -> McpSettings:
    """Build the settings from the environment (flags as ``overrides``). Raises InvalidInput
    naming the bad setting, never echoing its value."""
    try:
        return McpSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err.get("loc") else "?"
        name = loc if loc.startswith("KEYBROKER_") else f"KEYBROKER_MCP_{loc.upper()}"
        raise InvalidInput(f"invalid setting {name}: {err.get('msg', 'invalid value')}") from None
