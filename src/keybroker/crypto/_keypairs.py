"""Key pairs for agent identities: Ed25519 (default), ECDSA P-256, RSA-3072. PEM, PKCS#8."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keybroker.errors import DecryptionError, InvalidInput

__all__ = ["KEYPAIR_ALGORITHMS", "generate_keypair", "keypair_algorithm", "public_key_pem"]

KEYPAIR_ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-3072")


def generate_keypair(algorithm: str = "ed25519") -> tuple[bytes, str]:
    """Returns (private key PEM bytes, public key PEM text)."""
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "rsa-3072":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise InvalidInput(
            f"unknown key pair algorithm {algorithm!r}; choose one of {', '.join(KEYPAIR_ALGORITHMS)}"
        )
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub.decode()


def public_key_pem(private_pem: bytes) -> str:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DecryptionError("stored private key is unreadable") from exc
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def keypair_algorithm(public_pem: str) -> str:
    """The algorithm name of a stored public key (so every version reports its own)."""
    try:
        key = serialization.load_pem_public_key(public_pem.encode())
    except (ValueError, TypeError) as exc:
        raise DecryptionError("stored public key is unreadable") from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa-p256" if key.curve.name == "secp256r1" else f"ecdsa-{key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "unknown"
