"""Key pairs for agent identities: generate, read the public key alone, rotate."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keybroker.core import Scope, SecretService
from keybroker.crypto import KEYPAIR_ALGORITHMS, public_key_pem
from keybroker.errors import AlreadyExists, InvalidInput, SecretNotFound, VersionNotFound

S = Scope()
TYPES = {
    "ed25519": ed25519.Ed25519PrivateKey,
    "ecdsa-p256": ec.EllipticCurvePrivateKey,
    "rsa-3072": rsa.RSAPrivateKey,
}


def test_generate(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for algorithm in KEYPAIR_ALGORITHMS:
        name = f"agents/planner-{algorithm}"
        meta, pub = secrets.keypair_generate(me, S, name, algorithm, owner="ml-team")
        assert meta.kind == "keypair" and meta.latest_version == 1 and meta.owner == "ml-team"
        assert meta.custom_metadata["algorithm"] == algorithm
        priv = secrets.get(me, S, name).value.reveal_bytes()
        assert isinstance(serialization.load_pem_private_key(priv, password=None), TYPES[algorithm])
        assert public_key_pem(priv) == pub
        assert secrets.keypair_public(me, S, name) == (1, algorithm, pub)
    _, pub = secrets.keypair_generate(me, S, "ID")
    assert isinstance(serialization.load_pem_public_key(pub.encode()), ed25519.Ed25519PublicKey)
    assert secrets.keypair_public(me, S, "ID")[1] == "ed25519"


def test_rotate(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    _, pub1 = secrets.keypair_generate(me, S, "ID")
    priv1 = secrets.get(me, S, "ID").value.reveal_bytes()
    meta, pub2 = secrets.keypair_generate(me, S, "ID", rotate=True)
    assert pub2 != pub1 and meta.latest_version == 2 and meta.previous_version == 1
    priv2 = secrets.get(me, S, "ID").value.reveal_bytes()
    assert public_key_pem(priv2) == pub2
    assert secrets.get(me, S, "ID", label="previous").value.reveal_bytes() == priv1
    assert secrets.keypair_public(me, S, "ID") == (2, "ed25519", pub2)
    assert secrets.keypair_public(me, S, "ID", version=1) == (1, "ed25519", pub1)
    with pytest.raises(VersionNotFound):
        secrets.keypair_public(me, S, "ID", version=3)
    # the public half reads without the key: no unseal needed
    _, pub = secrets.keypair_generate(me, S, "ID2")
    secrets.vault.seal(me)
    assert secrets.keypair_public(me, S, "ID2")[2] == pub


def test_rotate_to_another_algorithm(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.keypair_generate(me, S, "ID", "ed25519")
    _, pub = secrets.keypair_generate(me, S, "ID", "ecdsa-p256", rotate=True)
    assert secrets.keypair_public(me, S, "ID") == (2, "ecdsa-p256", pub)
    assert secrets.keypair_public(me, S, "ID", version=1)[1] == "ed25519"


def test_errors(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.keypair_generate(me, S, "ID")
    with pytest.raises(AlreadyExists):
        secrets.keypair_generate(me, S, "ID")
    with pytest.raises(SecretNotFound):
        secrets.keypair_generate(me, S, "NEW", rotate=True)
    with pytest.raises(InvalidInput):
        secrets.keypair_generate(me, S, "OTHER", "dsa")
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "OTHER")
    secrets.put(me, S, "PLAIN", "not a key")
    with pytest.raises(InvalidInput):
        secrets.keypair_generate(me, S, "PLAIN", rotate=True)
    with pytest.raises(InvalidInput):
        secrets.keypair_public(me, S, "PLAIN")
    with pytest.raises(SecretNotFound):
        secrets.keypair_public(me, S, "NOPE")
    assert secrets.get(me, S, "PLAIN").value.reveal() == "not a key"
