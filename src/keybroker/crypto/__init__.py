"""Crypto recipes: envelope encryption, root-key derivation, secret wrapper. Knows no storage."""

from keybroker.crypto._aead import (
    KEY_SIZE,
    Argon2Params,
    aad_for,
    constant_time_equal,
    decrypt,
    derive_argon2id,
    derive_subkey,
    encrypt,
    keyed_hash,
    new_key,
)
from keybroker.crypto._envelope import Keyring, Sealed
from keybroker.crypto._keypairs import (
    KEYPAIR_ALGORITHMS,
    generate_keypair,
    keypair_algorithm,
    public_key_pem,
)
from keybroker.crypto._secret import SecretValue

__all__ = [
    "KEYPAIR_ALGORITHMS",
    "KEY_SIZE",
    "Argon2Params",
    "Keyring",
    "Sealed",
    "SecretValue",
    "aad_for",
    "constant_time_equal",
    "decrypt",
    "derive_argon2id",
    "derive_subkey",
    "encrypt",
    "generate_keypair",
    "keyed_hash",
    "keypair_algorithm",
    "new_key",
    "public_key_pem",
]
