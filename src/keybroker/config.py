"""Settings, read only at the edges (the CLI now, the server later), never inside core.

Every setting comes from a ``KEYBROKER_*`` environment variable; the project and environment may
also come from a ``.keybroker.toml`` in the working directory or one of its parents::

    project = "billing"
    environment = "staging"

Precedence, highest first: a command-line flag, the environment variable, ``.keybroker.toml``,
the built-in default. No ``.env`` file is ever read for settings: a settings loader that slurps
``.env`` files would happily load the very secrets this tool is meant to keep.
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keybroker.errors import InvalidInput

__all__ = [
    "PROJECT_FILE",
    "ProjectFile",
    "Settings",
    "find_project_file",
    "load_settings",
    "session_key_dir",
]

PROJECT_FILE = ".keybroker.toml"
DEFAULT_PROJECT = "default"
DEFAULT_ENVIRONMENT = "dev"


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("keybroker", appauthor=False))


class ProjectFile:
    """What a ``.keybroker.toml`` says (only ``project``, ``environment`` and ``org`` are read)."""

    __slots__ = ("environment", "org", "path", "project")

    def __init__(self, path: Path, project: str | None, environment: str | None, org: str | None):
        self.path = path
        self.project = project
        self.environment = environment
        self.org = org


def find_project_file(start: Path) -> ProjectFile | None:
    """The nearest ``.keybroker.toml`` in ``start`` or a parent. Raises InvalidInput if it is
    unreadable or a field is not a string."""
    for d in (start, *start.parents):
        path = d / PROJECT_FILE
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"cannot read {path}: {type(exc).__name__}") from None
        fields: dict[str, str | None] = {}
        for key in ("project", "environment", "org"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{path}: {key} must be a string")
            fields[key] = value or None
        return ProjectFile(path, fields["project"], fields["environment"], fields["org"])
    return None


class Settings(BaseSettings):
    """``KEYBROKER_*`` environment variables. Secrets among them are :class:`SecretStr`."""

    model_config = SettingsConfigDict(
        env_prefix="KEYBROKER_",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
    )

    home: Path = Field(default_factory=_default_home)
    db_url: str | None = None
    org: str | None = None
    project: str | None = None
    env: str | None = None
    passphrase_file: Path | None = None
    key_file: Path | None = None
    dev_mode: bool = False
    dev_root_key: SecretStr | None = None
    auto_seal_minutes: float | None = None
    session: SecretStr | None = None
    debug: bool = False
    #: client mode: the CLI talks to this ``keybroker serve`` instead of the local vault
    addr: str | None = None
    token: SecretStr | None = None
    #: a file holding the token (the token is never a command-line argument)
    token_file: Path | None = None
    #: the gateway ``keybroker run`` points proxy-only secrets at (default: ``<addr>/gw``)
    gateway_url: str | None = None
    #: where the per-session key lives (``$XDG_RUNTIME_DIR/keybroker``), read from XDG's variable
    runtime_dir: Path | None = Field(default=None, validation_alias="XDG_RUNTIME_DIR")

    @field_validator("home", "passphrase_file", "key_file", "token_file", "runtime_dir")
    @classmethod
    def _expand_user(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("auto_seal_minutes")
    @classmethod
    def _positive_minutes(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be 0 (off) or a positive number of minutes")
        return v or None

    # -- derived values ------------------------------------------------------------------------
    @cached_property
    def project_file(self) -> ProjectFile | None:
        return find_project_file(Path.cwd().resolve())

    def uses_default_store(self) -> bool:
        return self.db_url is None

    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'vault.db'}"

    def default_org(self) -> str:
        pf = self.project_file
        return self.org or (pf.org if pf and pf.org else None) or "default"

    def default_project(self) -> str:
        pf = self.project_file
        return self.project or (pf.project if pf and pf.project else None) or DEFAULT_PROJECT

    def default_environment(self) -> str:
        pf = self.project_file
        return self.env or (pf.environment if pf and pf.environment else None) or DEFAULT_ENVIRONMENT

    def auto_seal_seconds(self) -> float | None:
        return self.auto_seal_minutes * 60 if self.auto_seal_minutes else None

    def dev_key(self) -> bytes | None:
        """The dev-mode root key, or None when dev mode is off or no key is set. Raises
        InvalidInput (never showing the value) if the key is malformed."""
        if not self.dev_mode or self.dev_root_key is None:
            return None
        raw = self.dev_root_key.get_secret_value().strip()
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise InvalidInput("KEYBROKER_DEV_ROOT_KEY must be the base64 form of 32 random bytes")
        return key


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment. Raises InvalidInput naming the bad variable
    (never echoing its value) when one does not parse."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err.get("loc") else "?"
        var = "XDG_RUNTIME_DIR" if loc in ("runtime_dir", "XDG_RUNTIME_DIR") else f"KEYBROKER_{loc.upper()}"
        raise InvalidInput(f"invalid setting {var}: {err.get('msg', 'invalid value')}") from None


def session_key_dir(settings: Settings) -> Path:
    """Where session keys live: ``$XDG_RUNTIME_DIR/keybroker`` if that runtime dir exists,
    else ``/tmp/keybroker-<uid>`` (checked to be a private directory by the caller)."""
    rd = settings.runtime_dir
    if rd is not None and rd.is_dir():
        return rd / "keybroker"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path("/tmp") / f"keybroker-{uid}"  # noqa: S108 - checked 0700 and owned by us before use
