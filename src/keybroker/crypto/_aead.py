"""Misuse-resistant recipes over AES-256-GCM, HKDF and Argon2id.

One key size (32 bytes), nonces always random and stored with the ciphertext, and one
:class:`~keybroker.errors.DecryptionError` for every failure.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keybroker.errors import DecryptionError, InvalidInput

__all__ = [
    "KEY_SIZE",
    "Argon2Params",
    "aad_for",
    "constant_time_equal",
    "decrypt",
    "derive_argon2id",
    "derive_subkey",
    "encrypt",
    "keyed_hash",
    "new_key",
]

KEY_SIZE = 32
_NONCE = 12
_VERSION = b"\x01"


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_SIZE)


def aad_for(*parts: str | int) -> bytes:
    """Length-prefixed, unambiguous associated data from context parts."""
    out = bytearray(b"kb-aad-v1")
    for p in parts:
        b = str(p).encode("utf-8")
        out += struct.pack(">I", len(b)) + b
    return bytes(out)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: returns ``version || nonce || ciphertext+tag``."""
    if len(key) != KEY_SIZE:
        raise InvalidInput("encryption key must be 32 bytes")
    nonce = os.urandom(_NONCE)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes | None, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`. Any failure (wrong key, AAD, tampering, truncation) raises
    the same :class:`DecryptionError`."""
    try:
        if blob is None or len(key) != KEY_SIZE or len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise DecryptionError("decryption failed")
        return AESGCM(key).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad)
    except (InvalidTag, ValueError, TypeError) as exc:
        raise DecryptionError("decryption failed") from exc


def derive_subkey(root: bytes, info: str, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 a purpose-bound subkey from a root key."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info.encode()).derive(root)


def keyed_hash(key: bytes, data: bytes) -> str:
    """``hmac-sha256:<hex>``, as Vault's audit device shows values."""
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()


class Argon2Params:
    """Argon2id cost parameters, stored with the vault. Defaults exceed OWASP's minimum
    (m=19 MiB, t=2, p=1)."""

    __slots__ = ("memory_kib", "parallelism", "salt", "time_cost")

    MIN_MEMORY_KIB = 19 * 1024
    MIN_TIME = 2
    MIN_PARALLELISM = 1
    MIN_SALT = 16
    # Upper bounds: stored parameters come from the database, and a tampered row must not make
    # unseal allocate unbounded memory or spin for hours.
    MAX_MEMORY_KIB = 4 * 1024 * 1024
    MAX_TIME = 64
    MAX_PARALLELISM = 64

    def __init__(self, salt: bytes, memory_kib: int = 65536, time_cost: int = 3, parallelism: int = 1):
        self.salt = salt
        self.memory_kib = memory_kib
        self.time_cost = time_cost
        self.parallelism = parallelism

    @classmethod
    def fresh(cls) -> Argon2Params:
        return cls(os.urandom(16))

    def to_dict(self) -> dict[str, object]:
        return {
            "alg": "argon2id",
            "salt": self.salt.hex(),
            "m": self.memory_kib,
            "t": self.time_cost,
            "p": self.parallelism,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Argon2Params:
        try:
            return cls(bytes.fromhex(str(d["salt"])), int(str(d["m"])), int(str(d["t"])), int(str(d["p"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInput("the stored Argon2id parameters are missing or malformed") from exc


def derive_argon2id(passphrase: str, params: Argon2Params) -> bytes:
    """Root key from a passphrase. Refuses parameters weaker than OWASP's minimum."""
    if (
        params.memory_kib < Argon2Params.MIN_MEMORY_KIB
        or params.time_cost < Argon2Params.MIN_TIME
        or params.parallelism < Argon2Params.MIN_PARALLELISM
        or len(params.salt) < Argon2Params.MIN_SALT
    ):
        raise InvalidInput(
            "Argon2id parameters are below OWASP's minimum (m>=19 MiB, t>=2, p>=1, salt>=16 bytes)"
        )
    if (
        params.memory_kib > Argon2Params.MAX_MEMORY_KIB
        or params.time_cost > Argon2Params.MAX_TIME
        or params.parallelism > Argon2Params.MAX_PARALLELISM
    ):
        raise InvalidInput("Argon2id parameters are above keybroker's maximum (m<=4 GiB, t<=64, p<=64)")
    if not passphrase:
        raise InvalidInput("the passphrase is empty")
    return hash_secret_raw(
        passphrase.encode("utf-8"),
        params.salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_SIZE,
        type=Type.ID,
    )


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    return hmac.compare_digest(
        a.encode() if isinstance(a, str) else a, b.encode() if isinstance(b, str) else b
    )
