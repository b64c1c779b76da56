"""Path parameters with the name rules of :mod:`keybroker.core._names` written into the OpenAPI
schema (``pattern``), for clients and fuzzers. They are documentation only: the core checks the
names and answers ``invalid_name``, so the error code does not depend on where a name arrives."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

__all__ = [
    "ACCESSOR_RX",
    "IDENTITY_RX",
    "NAME_RX",
    "SCOPE_RX",
    "AccessorP",
    "EnvP",
    "IdentityP",
    "NameP",
    "ProjectP",
]

#: projects, environments, organizations (core: ``check_scope_name``)
SCOPE_RX = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: secret names: env-var style or path style (core: ``check_secret_name``)
NAME_RX = (
    r"^([A-Za-z_][A-Za-z0-9_]{0,255}|[A-Za-z0-9_][A-Za-z0-9_-]{0,60}(/[A-Za-z0-9_][A-Za-z0-9_-]{0,60}){1,3})$"
)
#: identities (core: ``check_identity_name``)
IDENTITY_RX = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
ACCESSOR_RX = r"^kba_[0-9A-Za-z]{22}$"


def _doc(rx: str, max_len: int, description: str) -> object:
    return Path(description=description, json_schema_extra={"pattern": rx, "maxLength": max_len})


ProjectP = Annotated[str, _doc(SCOPE_RX, 63, "project")]
EnvP = Annotated[str, _doc(SCOPE_RX, 63, "environment")]
NameP = Annotated[str, _doc(NAME_RX, 256, "secret name (OPENAI_API_KEY or openai/api_key)")]
IdentityP = Annotated[str, _doc(IDENTITY_RX, 64, "identity name")]
AccessorP = Annotated[str, _doc(ACCESSOR_RX, 26, "token accessor")]
