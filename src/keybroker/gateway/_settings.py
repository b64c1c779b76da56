"""Gateway and agent-access settings, read at the edges (``serve``, ``keybroker gateway``).

Every setting comes from a ``KEYBROKER_GATEWAY_*`` environment variable:

``KEYBROKER_GATEWAY_URL``               public URL of the gateway, for the SDK base URLs handed to
                                        agents (default: the serving address + ``/gw``)
``KEYBROKER_GATEWAY_HOST`` / ``_PORT``  where ``keybroker gateway`` listens (127.0.0.1:8271)
``KEYBROKER_GATEWAY_READ_TIMEOUT``      seconds of upstream silence before 504 (300)
``KEYBROKER_GATEWAY_CONNECT_TIMEOUT``   (10)
``KEYBROKER_GATEWAY_KEEPALIVE``         SSE keep-alive comment interval, 0 = off (15)
``KEYBROKER_GATEWAY_RECHECK_S``         how often a cached proxy token is re-verified (1)
``KEYBROKER_GATEWAY_WEBHOOK_URL``       approvers' webhook (access requests), optional
``KEYBROKER_GATEWAY_WEBHOOK_SECRET``    its HMAC-SHA256 signing secret (16+ bytes)
``KEYBROKER_GATEWAY_PENDING_TTL_S``     unanswered access requests expire after this (3600)
``KEYBROKER_GATEWAY_CLEANUP_S``         clean-up of expired sessions/tokens/requests (60)
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from keybroker.gateway._app import GatewayConfig

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYBROKER_GATEWAY_", extra="ignore")

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8271, ge=1, le=65535)
    read_timeout: float = Field(default=300.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    keepalive: float = Field(default=15.0, ge=0)
    recheck_s: float = Field(default=1.0, ge=0)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    pending_ttl_s: int = Field(default=3600, ge=1)
    cleanup_s: float = Field(default=60.0, gt=0)

    def config(self) -> GatewayConfig:
        return GatewayConfig(
            read_timeout=self.read_timeout,
            connect_timeout=self.connect_timeout,
            keepalive_interval=self.keepalive or None,
            recheck_s=self.recheck_s,
        )
