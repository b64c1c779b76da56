"""Server settings: ``KEYBROKER_*`` environment variables (the same names the CLI reads for the
vault itself), read only here, at the edge."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from keybroker.errors import InvalidInput

__all__ = ["ServerSettings"]


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("keybroker", appauthor=False))


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYBROKER_", case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    home: Path = Field(default_factory=_default_home)
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8270, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: how to unseal at start (else the server starts sealed: POST /v1/sys/unseal)
    passphrase_file: Path | None = None
    key_file: Path | None = None
    keychain: bool = False
    dev_mode: bool = False
    dev_root_key: SecretStr | None = None
    #: initialise a vault if the store has none (default: only for the embedded default store)
    auto_init: bool | None = None
    #: requests per second and burst, per token and per client address (0: off)
    token_rate: float = 200.0
    token_burst: float | None = None
    address_rate: float = 500.0
    address_burst: float | None = None
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_base_s: float = Field(default=5.0, gt=0)
    lockout_max_s: float = Field(default=900.0, gt=0)
    login_ttl_s: int = Field(default=3600, gt=0)
    login_max_ttl_s: int = Field(default=86400, gt=0)
    auto_seal_minutes: float | None = None
    #: uvicorn HTTP implementation: h11 accepts Vault's ``LIST`` method, httptools does not
    http: str = "h11"
    access_log: bool = True
    log_level: str = "info"
    graceful_timeout_s: float = 10.0
    #: threads that run the blocking work (store, crypto) of requests. Default: 1 on SQLite,
    #: where writes (and every read writes its audit record) take one lock anyway and more
    #: threads only queue in SQLite's sleeping busy handler (p99 x5); 8 on PostgreSQL.
    worker_threads: int | None = Field(default=None, ge=1, le=256)
    #: seconds between polls of the change table for events written by other processes (0: off;
    #: PostgreSQL replicas use LISTEN/NOTIFY and need no polling)
    events_poll_s: float = 1.0

    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'vault.db'}"

    @property
    def embedded(self) -> bool:
        return self.db_url is None

    def default_key_file(self) -> Path:
        return self.home / "root.key"

    def root_token_file(self) -> Path:
        return self.home / "root-token"

    def dev_key(self) -> bytes | None:
        if not self.dev_mode or self.dev_root_key is None:
            return None
        try:
            key = base64.b64decode(self.dev_root_key.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise InvalidInput("KEYBROKER_DEV_ROOT_KEY must be the base64 form of 32 random bytes")
        return key
