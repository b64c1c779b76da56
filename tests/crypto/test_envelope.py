"""Envelope encryption (Keyring.seal/open): round trip, and one DecryptionError for every
failure (wrong AAD context, wrong KEK id, wrong vault, tampered or truncated bytes)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keybroker.crypto import Keyring, Sealed, decrypt, encrypt, new_key
from keybroker.errors import DecryptionError

ROOT = os.urandom(32)
KEK1 = os.urandom(32)
KEK2 = os.urandom(32)

text = st.text(min_size=0, max_size=40)
contexts = st.tuples(text, text, text, text, st.integers(min_value=1, max_value=2**31 - 1))
payloads = st.binary(min_size=0, max_size=2048)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def keyring(kek_id: int = 1, vault_id: str = "vault-a") -> Keyring:
    return Keyring(vault_id, ROOT, {1: KEK1, 2: KEK2}, kek_id)


def decryption_failure(fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn`` and return the error, asserting it is exactly DecryptionError."""
    with pytest.raises(DecryptionError) as info:
        fn(*args)
    assert type(info.value) is DecryptionError
    return info.value


# one message for every cause: nothing to learn from which check failed
_MESSAGES: set[str] = set()


def assert_no_oracle(err: DecryptionError) -> None:
    _MESSAGES.add(str(err))
    assert err.code == "decryption_failed"
    assert err.details == {}
    assert len(_MESSAGES) == 1, _MESSAGES


@FAST
@given(payloads, contexts)
def test_round_trip(plaintext: bytes, ctx: tuple[str, str, str, str, int]) -> None:
    kr = keyring()
    sealed = kr.seal(plaintext, ctx)
    assert sealed.kek_id == 1
    assert plaintext not in sealed.ciphertext or len(plaintext) < 4
    assert kr.open(sealed, ctx) == plaintext
    # a fresh data key and nonce every time
    again = kr.seal(plaintext, ctx)
    assert again.ciphertext != sealed.ciphertext
    assert again.wrapped_dek != sealed.wrapped_dek


@FAST
@given(payloads, contexts, st.integers(min_value=0, max_value=4), st.data())
def test_any_aad_change_fails(plaintext: bytes, ctx: tuple, index: int, data: st.DataObject) -> None:  # type: ignore[type-arg]
    kr = keyring()
    sealed = kr.seal(plaintext, ctx)
    if index == 4:
        new: str | int = data.draw(st.integers(min_value=1, max_value=2**31 - 1))
    else:
        new = data.draw(text)
    assume(str(new) != str(ctx[index]))
    other = list(ctx)
    other[index] = new
    assert_no_oracle(decryption_failure(kr.open, sealed, tuple(other)))


@FAST
@given(payloads, contexts)
def test_context_parts_cannot_shift(plaintext: bytes, ctx: tuple) -> None:  # type: ignore[type-arg]
    # ("ab", "c") and ("a", "bc") must not share an AAD (length-prefixed parts)
    kr = keyring()
    org, project, env, name, version = ctx
    assume(len(org) > 0)
    sealed = kr.seal(plaintext, ctx)
    shifted = (org[:-1], org[-1] + project, env, name, version)
    assert_no_oracle(decryption_failure(kr.open, sealed, shifted))


@FAST
@given(payloads, contexts)
def test_wrong_kek_id_fails(plaintext: bytes, ctx: tuple) -> None:  # type: ignore[type-arg]
    kr = keyring(1)
    sealed = kr.seal(plaintext, ctx)
    # claiming another KEK that exists, one that does not, or the same key under another id
    for kek_id in (2, 3, 0, -1):
        assert_no_oracle(
            decryption_failure(kr.open, Sealed(sealed.ciphertext, sealed.wrapped_dek, kek_id), ctx)
        )
    same_key_other_id = Keyring("vault-a", ROOT, {1: KEK2, 2: KEK1}, 2)
    assert_no_oracle(decryption_failure(same_key_other_id.open, sealed, ctx))


@FAST
@given(payloads, contexts)
def test_other_vault_or_kek_fails(plaintext: bytes, ctx: tuple) -> None:  # type: ignore[type-arg]
    sealed = keyring(vault_id="vault-a").seal(plaintext, ctx)
    assert_no_oracle(decryption_failure(keyring(vault_id="vault-b").open, sealed, ctx))
    stranger = Keyring("vault-a", ROOT, {1: os.urandom(32)}, 1)
    assert_no_oracle(decryption_failure(stranger.open, sealed, ctx))


@FAST
@given(payloads, contexts, st.sampled_from(["ciphertext", "wrapped_dek"]), st.data())
def test_bit_flip_fails(plaintext: bytes, ctx: tuple, field: str, data: st.DataObject) -> None:  # type: ignore[type-arg]
    kr = keyring()
    sealed = kr.seal(plaintext, ctx)
    blob = bytearray(getattr(sealed, field))
    bit = data.draw(st.integers(min_value=0, max_value=len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    parts = {"ciphertext": sealed.ciphertext, "wrapped_dek": sealed.wrapped_dek, field: bytes(blob)}
    assert_no_oracle(decryption_failure(kr.open, Sealed(parts["ciphertext"], parts["wrapped_dek"], 1), ctx))


@FAST
@given(payloads, contexts, st.sampled_from(["ciphertext", "wrapped_dek"]), st.data())
def test_truncation_or_extension_fails(plaintext: bytes, ctx: tuple, field: str, data: st.DataObject) -> None:  # type: ignore[type-arg]
    kr = keyring()
    sealed = kr.seal(plaintext, ctx)
    blob = getattr(sealed, field)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
        changed = blob[:cut]
    else:
        changed = blob + data.draw(st.binary(min_size=1, max_size=16))
    parts = {"ciphertext": sealed.ciphertext, "wrapped_dek": sealed.wrapped_dek, field: changed}
    assert_no_oracle(decryption_failure(kr.open, Sealed(parts["ciphertext"], parts["wrapped_dek"], 1), ctx))


def test_swapped_fields_and_missing_bytes_fail() -> None:
    kr = keyring()
    ctx = ("o", "p", "e", "N", 1)
    a = kr.seal(b"value-a", ctx)
    b = kr.seal(b"value-b", ctx)
    for bad in (
        Sealed(a.ciphertext, b.wrapped_dek, 1),  # another version's data key
        Sealed(a.wrapped_dek, a.ciphertext, 1),
        Sealed(b"", a.wrapped_dek, 1),
        Sealed(a.ciphertext, b"", 1),
        Sealed(None, a.wrapped_dek, 1),  # type: ignore[arg-type]  # a destroyed row
        Sealed(a.ciphertext, None, 1),  # type: ignore[arg-type]
    ):
        assert_no_oracle(decryption_failure(kr.open, bad, ctx))


def test_rewrap_keeps_ciphertext_and_moves_kek() -> None:
    ctx = ("o", "p", "e", "N", 3)
    old = keyring(1)
    sealed = old.seal(b"payload", ctx)
    new = keyring(2)
    moved = new.rewrap(sealed, ctx)
    assert moved.kek_id == 2
    assert moved.ciphertext == sealed.ciphertext
    assert moved.wrapped_dek != sealed.wrapped_dek
    assert new.open(moved, ctx) == b"payload"
    only_new = Keyring("vault-a", ROOT, {2: KEK2}, 2)
    assert only_new.open(moved, ctx) == b"payload"
    assert_no_oracle(decryption_failure(only_new.open, sealed, ctx))
    assert_no_oracle(decryption_failure(new.rewrap, sealed, ("o", "p", "e", "N", 4)))


def test_kek_wrapping_is_bound_to_vault_and_id() -> None:
    kek = new_key()
    blob = Keyring.wrap_kek(ROOT, "vault-a", 1, kek)
    assert Keyring.unwrap_kek(ROOT, "vault-a", 1, blob) == kek
    assert_no_oracle(decryption_failure(Keyring.unwrap_kek, ROOT, "vault-a", 2, blob))
    assert_no_oracle(decryption_failure(Keyring.unwrap_kek, ROOT, "vault-b", 1, blob))
    assert_no_oracle(decryption_failure(Keyring.unwrap_kek, os.urandom(32), "vault-a", 1, blob))


def test_raw_aead_rejects_bad_keys_and_versions() -> None:
    key = new_key()
    blob = encrypt(key, b"x", b"aad")
    assert decrypt(key, blob, b"aad") == b"x"
    assert_no_oracle(decryption_failure(decrypt, key[:16], blob, b"aad"))
    assert_no_oracle(decryption_failure(decrypt, key, b"\x02" + blob[1:], b"aad"))
    assert_no_oracle(decryption_failure(decrypt, key, blob, b"other"))


def test_reprs_show_no_key_material() -> None:
    kr = keyring()
    sealed = kr.seal(b"hunter2-secret-value", ("o", "p", "e", "N", 1))
    assert "hunter2" not in repr(sealed)
    assert sealed.ciphertext.hex() not in repr(sealed)
    r = repr(kr)
    assert KEK1.hex() not in r and ROOT.hex() not in r
    assert str(list(KEK1)) not in r
