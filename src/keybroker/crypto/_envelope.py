"""Envelope encryption: a fresh data key per secret version, wrapped by a key-encryption key."""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.crypto._aead import aad_for, decrypt, derive_subkey, encrypt, new_key
from keybroker.errors import DecryptionError

__all__ = ["Keyring", "Sealed"]


@dataclass(frozen=True, slots=True)
class Sealed:
    """What is stored for one secret version: never the plaintext, never the bare data key."""

    ciphertext: bytes
    wrapped_dek: bytes
    kek_id: int

    def __repr__(self) -> str:
        return f"Sealed(kek_id={self.kek_id}, {len(self.ciphertext)} bytes)"


class Keyring:
    """The unsealed key-encryption keys, all wrapped by the root key when stored.

    ``keks`` maps id -> raw KEK; ``current`` is the id new writes use.
    """

    __slots__ = ("_audit_key", "_keks", "current", "vault_id")

    def __init__(self, vault_id: str, root_key: bytes, keks: dict[int, bytes], current: int) -> None:
        self.vault_id = vault_id
        self._keks = dict(keks)
        self.current = current
        self._audit_key = derive_subkey(root_key, f"keybroker/{vault_id}/audit-hmac")

    def __repr__(self) -> str:
        return f"Keyring(vault_id={self.vault_id!r}, keks={sorted(self._keks)}, current={self.current})"

    # -- KEK storage under the root key --------------------------------------------------------
    @staticmethod
    def wrap_kek(root_key: bytes, vault_id: str, kek_id: int, kek: bytes) -> bytes:
        return encrypt(root_key, kek, aad_for("kek", vault_id, kek_id))

    @staticmethod
    def unwrap_kek(root_key: bytes, vault_id: str, kek_id: int, blob: bytes) -> bytes:
        return decrypt(root_key, blob, aad_for("kek", vault_id, kek_id))

    def add_kek(self, kek_id: int, kek: bytes, make_current: bool = True) -> None:
        self._keks[kek_id] = kek
        if make_current:
            self.current = kek_id

    def has(self, kek_id: int) -> bool:
        return kek_id in self._keks

    # -- values ------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, context: tuple[str | int, ...]) -> Sealed:
        """Encrypt ``plaintext`` under a fresh data key; ``context`` becomes the AAD."""
        dek = new_key()
        aad = aad_for("value", self.vault_id, *context)
        ct = encrypt(dek, plaintext, aad)
        wrapped = encrypt(
            self._keks[self.current], dek, aad_for("dek", self.vault_id, self.current, *context)
        )
        return Sealed(ct, wrapped, self.current)

    def open(self, sealed: Sealed, context: tuple[str | int, ...]) -> bytes:
        dek = self._unwrap_dek(sealed, context)
        return decrypt(dek, sealed.ciphertext, aad_for("value", self.vault_id, *context))

    def rewrap(self, sealed: Sealed, context: tuple[str | int, ...]) -> Sealed:
        """Re-wrap the data key under the current KEK; the value ciphertext is untouched."""
        dek = self._unwrap_dek(sealed, context)
        wrapped = encrypt(
            self._keks[self.current], dek, aad_for("dek", self.vault_id, self.current, *context)
        )
        return Sealed(sealed.ciphertext, wrapped, self.current)

    def _unwrap_dek(self, sealed: Sealed, context: tuple[str | int, ...]) -> bytes:
        kek = self._keks.get(sealed.kek_id)
        if kek is None:
            raise DecryptionError("decryption failed")
        return decrypt(kek, sealed.wrapped_dek, aad_for("dek", self.vault_id, sealed.kek_id, *context))

    # -- audit -------------------------------------------------------------------------------
    def audit_hmac(self, value: bytes) -> str:
        """Keyed hash of a value for audit records: shows equality, never the value."""
        from keybroker.crypto._aead import keyed_hash

        return keyed_hash(self._audit_key, value)

    def subkey(self, purpose: str) -> bytes:
        """A purpose-bound key derived from the audit key material (e.g. for session files)."""
        return derive_subkey(self._audit_key, purpose)
