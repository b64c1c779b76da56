"""A wrapper that keeps secret values out of reprs, logs and tracebacks."""

from __future__ import annotations

import hmac
from typing import Any

__all__ = ["SecretValue"]


class SecretValue:
    """Holds a secret's bytes; ``repr``/``str``/``format`` show ``[secret]``, never the value.

    Call :meth:`reveal` (text) or :meth:`reveal_bytes` where the value is really needed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode("utf-8") if isinstance(value, str) else bytes(value)

    def reveal(self) -> str:
        return self._value.decode("utf-8", errors="surrogateescape")

    def reveal_bytes(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "SecretValue([secret])"

    def __str__(self) -> str:
        return "[secret]"

    def __format__(self, spec: str) -> str:
        return "[secret]"

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretValue):
            return hmac.compare_digest(self._value, other._value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("SecretValue", len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("SecretValue cannot be pickled")
