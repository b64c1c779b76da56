"""Name rules, in one place, for secrets, projects, environments and organizations."""

from __future__ import annotations

import re

from keybroker.errors import InvalidName

__all__ = ["RISK_LEVELS", "check_risk", "check_scope_name", "check_secret_name"]

_ENV_STYLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_SCOPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
RISK_LEVELS = ("low", "medium", "high")


def check_secret_name(name: str) -> str:
    """Env-var style (``OPENAI_API_KEY``) or path style (``openai/api_key``), at most 256 chars."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a secret name must not be empty")
    if len(name) > 256:
        raise InvalidName("a secret name must be at most 256 characters")
    if _ENV_STYLE.fullmatch(name):
        return name
    parts = name.split("/")
    if len(parts) > 1 and all(_PATH_SEGMENT.fullmatch(p) for p in parts):
        return name
    raise InvalidName(
        f"invalid secret name {_preview(name)}: use env-var style (OPENAI_API_KEY) or "
        "path style (openai/api_key): letters, digits, '_' and '-', segments separated by '/'"
    )


def check_scope_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _SCOPE.fullmatch(name):
        raise InvalidName(
            f"invalid {kind} name {_preview(name)}: lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters"
        )
    return name


def check_risk(risk: str) -> str:
    if risk not in RISK_LEVELS:
        raise InvalidName(f"invalid risk level {_preview(risk)}: choose low, medium or high")
    return risk


def _preview(s: object) -> str:
    text = repr(s)
    return text if len(text) <= 40 else text[:37] + "...'"
