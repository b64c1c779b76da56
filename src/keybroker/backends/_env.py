"""Environment variables as a read-only key store. Development only: anything in the
environment is readable by every process the shell starts, and shows up in crash dumps."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping

from keybroker.backends._base import (
    Names,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    check_label,
)
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, PermissionDenied, SecretNotFound, VersionNotFound

__all__ = ["EnvStore", "EnvStoreWarning"]

log = logging.getLogger("keybroker.backends")

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|")
_VERSION = "env"


class EnvStoreWarning(UserWarning):
    """Secrets read from environment variables: fine on a laptop, not in production."""


def env_var_name(prefix: str, name: str) -> str:
    """``openai/api-key`` under ``APP_`` is ``APP_OPENAI_API_KEY``."""
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


class EnvStore:
    """Reads ``PREFIX`` + name from the environment. One version per secret (id ``env``,
    label ``current``); writes and deletes raise :class:`PermissionDenied`.

    A name is looked up as given first, then in env-var form (``openai/api_key`` ->
    ``OPENAI_API_KEY``). ``list`` returns the variable names with the prefix stripped."""

    kind = "env"
    capabilities = StoreCapabilities(writable=False, versions=False, labels=frozenset())

    def __init__(self, prefix: str = "", environ: Mapping[str, str] | None = None) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise InvalidInput("an environment prefix is letters, digits and '_' (like MYAPP_)")
        self.prefix = prefix
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        msg = (
            "secrets are being read from environment variables "
            f"({prefix or 'no prefix'}): development only, not for production"
        )
        warnings.warn(msg, EnvStoreWarning, stacklevel=2)
        log.warning("%s", msg)

    def __repr__(self) -> str:
        return f"EnvStore(prefix={self.prefix!r})"

    def location(self) -> str:
        return f"env://{self.prefix}"

    def _lookup(self, name: str) -> str:
        if not name:
            raise SecretNotFound("no secret with an empty name")
        for var in (self.prefix + name, env_var_name(self.prefix, name)):
            value = self._environ.get(var)
            if value is not None:
                return value
        raise SecretNotFound(f"no environment variable for {name!r} (prefix {self.prefix or 'none'})")

    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        raw = self._lookup(name)
        if version is not None and version != _VERSION:
            raise VersionNotFound(f"environment variables have one version ({_VERSION!r}), not {version!r}")
        if check_label(label) != "current":
            raise VersionNotFound(f"environment variables have no {label} version")
        return SecretValue(raw)

    def get_many(self, names: list[str]) -> dict[str, SecretValue]:
        out: dict[str, SecretValue] = {}
        for n in names:
            try:
                out[n] = SecretValue(self._lookup(n))
            except SecretNotFound:
                continue
        return out

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        raise PermissionDenied("the environment store is read-only")

    def delete(self, name: str) -> None:
        raise PermissionDenied("the environment store is read-only")

    def list(self, prefix: str = "") -> Names:
        full = self.prefix + prefix
        return sorted(k[len(self.prefix) :] for k in self._environ if k.startswith(full) and k != self.prefix)

    def versions(self, name: str) -> Versions:
        self._lookup(name)
        return [VersionInfo(_VERSION, None, ("current",))]

    def metadata(self, name: str) -> SecretInfo:
        self._lookup(name)
        return SecretInfo(name, self.kind, _VERSION)

    def close(self) -> None:
        return None
