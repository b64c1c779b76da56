"""SecretValue never shows its value; Argon2id refuses weak costs; key pairs for every algorithm."""

from __future__ import annotations

import copy
import logging
import os
import pickle

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.crypto import (
    KEYPAIR_ALGORITHMS,
    Argon2Params,
    SecretValue,
    derive_argon2id,
    generate_keypair,
    keyed_hash,
    public_key_pem,
)
from keybroker.errors import DecryptionError, InvalidInput

VALUE = "sk-live-CANARY-1234567890"


# ---------------------------------------------------------------- SecretValue
def test_secret_value_never_renders() -> None:
    v = SecretValue(VALUE)
    renderings = [
        repr(v),
        str(v),
        format(v),
        format(v, ">40"),
        f"{v}",
        f"{v!r}",
        f"{v!s}",
        f"{v!a}",
        f"{v:s}",
        "%s" % (v,),  # noqa: UP031
        "%r" % (v,),  # noqa: UP031
        "{}".format(v),  # noqa: UP032
        repr([v]),
        repr({"k": v}),
        str((v,)),
    ]
    for out in renderings:
        assert VALUE not in out
        assert "CANARY" not in out
    assert str(v) == "[secret]"
    assert v.reveal() == VALUE
    assert v.reveal_bytes() == VALUE.encode()


def test_secret_value_stays_out_of_logs(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("keybroker.test")
    with caplog.at_level(logging.DEBUG, logger="keybroker.test"):
        log.info("value is %s / %r", SecretValue(VALUE), SecretValue(VALUE))
    assert "CANARY" not in caplog.text


def test_secret_value_refuses_pickling_and_copying() -> None:
    v = SecretValue(VALUE)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(v, protocol=protocol)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [v]})
    with pytest.raises(TypeError):
        copy.deepcopy(v)


def test_secret_value_equality_and_hash_do_not_leak() -> None:
    a, b, c = SecretValue(VALUE), SecretValue(VALUE.encode()), SecretValue("other")
    assert a == b and a != c
    assert a != VALUE  # never equal to the bare text (no accidental comparisons)
    assert hash(a) == hash(SecretValue("x" * len(VALUE)))  # the hash says nothing about content
    assert len(a) == len(VALUE)
    assert not hasattr(a, "__dict__")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(min_size=1), st.binary(min_size=1)))
def test_secret_value_property(value: str | bytes) -> None:
    v = SecretValue(value)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    assert v.reveal_bytes() == raw
    for out in (repr(v), str(v), f"{v}", f"{v!r}", format(v, "^30")):
        assert out in ("[secret]", "SecretValue([secret])") or out.strip() == "[secret]"


# ---------------------------------------------------------------- Argon2id
FAST = {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}


def test_argon2_derives_deterministically_at_the_minimum_cost() -> None:
    p = Argon2Params(os.urandom(16), **FAST)
    k1 = derive_argon2id("passphrase", p)
    assert len(k1) == 32
    assert derive_argon2id("passphrase", Argon2Params.from_dict(p.to_dict())) == k1
    assert derive_argon2id("passphrase!", p) != k1
    assert derive_argon2id("passphrase", Argon2Params(os.urandom(16), **FAST)) != k1


def test_argon2_defaults_exceed_owasp() -> None:
    p = Argon2Params.fresh()
    assert p.memory_kib >= 19 * 1024 and p.time_cost >= 2 and p.parallelism >= 1
    assert len(p.salt) >= 16
    d = p.to_dict()
    assert d["alg"] == "argon2id"


@pytest.mark.parametrize(
    "params",
    [
        {"memory_kib": 19 * 1024 - 1, "time_cost": 2, "parallelism": 1},
        {"memory_kib": 8, "time_cost": 10, "parallelism": 1},
        {"memory_kib": 19 * 1024, "time_cost": 1, "parallelism": 1},
        {"memory_kib": 64 * 1024, "time_cost": 0, "parallelism": 1},
        {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 0},
    ],
)
def test_argon2_refuses_weak_params(params: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        derive_argon2id("passphrase", Argon2Params(os.urandom(16), **params))


def test_argon2_refuses_short_salt_and_empty_passphrase() -> None:
    with pytest.raises(InvalidInput):
        derive_argon2id("passphrase", Argon2Params(b"short", **FAST))
    with pytest.raises(InvalidInput):
        derive_argon2id("", Argon2Params(os.urandom(16), **FAST))


def test_keyed_hash_shape() -> None:
    h = keyed_hash(b"k" * 32, b"value")
    assert h.startswith("hmac-sha256:") and len(h) == len("hmac-sha256:") + 64
    assert "value" not in h
    assert keyed_hash(b"k" * 32, b"value") == h != keyed_hash(b"j" * 32, b"value")


# ---------------------------------------------------------------- key pairs
def _sign_and_verify(priv_pem: bytes, pub_pem: str) -> None:
    priv = serialization.load_pem_private_key(priv_pem, password=None)
    pub = serialization.load_pem_public_key(pub_pem.encode())
    msg = b"agent identity proof"
    if isinstance(priv, ed25519.Ed25519PrivateKey):
        assert isinstance(pub, ed25519.Ed25519PublicKey)
        pub.verify(priv.sign(msg), msg)
    elif isinstance(priv, ec.EllipticCurvePrivateKey):
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert priv.curve.name == "secp256r1"
        pub.verify(priv.sign(msg, ec.ECDSA(hashes.SHA256())), msg, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(priv, rsa.RSAPrivateKey) and isinstance(pub, rsa.RSAPublicKey)
        assert priv.key_size == 3072
        pub.verify(
            priv.sign(msg, padding.PKCS1v15(), hashes.SHA256()), msg, padding.PKCS1v15(), hashes.SHA256()
        )


@pytest.mark.parametrize("algorithm", KEYPAIR_ALGORITHMS)
def test_generate_keypair(algorithm: str) -> None:
    priv, pub = generate_keypair(algorithm)
    assert priv.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted (the vault encrypts it)
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    assert public_key_pem(priv) == pub
    _sign_and_verify(priv, pub)
    priv2, pub2 = generate_keypair(algorithm)
    assert priv2 != priv and pub2 != pub


def test_default_algorithm_is_ed25519() -> None:
    priv, _ = generate_keypair()
    assert isinstance(serialization.load_pem_private_key(priv, password=None), ed25519.Ed25519PrivateKey)
    assert KEYPAIR_ALGORITHMS[0] == "ed25519"


def test_unknown_algorithm_and_unreadable_key() -> None:
    with pytest.raises(InvalidInput):
        generate_keypair("dsa-1024")
    with pytest.raises(DecryptionError):
        public_key_pem(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


@pytest.mark.parametrize("algorithm", KEYPAIR_ALGORITHMS)
def test_keypair_algorithm_from_public_key(algorithm: str) -> None:
    from keybroker.crypto import keypair_algorithm

    _, pub = generate_keypair(algorithm)
    assert keypair_algorithm(pub) == algorithm
    with pytest.raises(DecryptionError):
        keypair_algorithm("not a pem")


def test_argon2_refuses_parameters_above_the_maximum() -> None:
    # stored params come from the database: a tampered row must not exhaust memory at unseal
    import os as _os

    from keybroker.crypto import Argon2Params, derive_argon2id
    from keybroker.errors import InvalidInput as _InvalidInput

    for kw in ({"memory_kib": 5 * 1024 * 1024}, {"time_cost": 65}, {"parallelism": 65}):
        params = Argon2Params(_os.urandom(16), **{"memory_kib": 19 * 1024, "time_cost": 2, **kw})
        with pytest.raises(_InvalidInput):
            derive_argon2id("pw", params)
