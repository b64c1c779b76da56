"""StreamMasker: chunk boundaries never let a secret through, and output equals one-shot re.sub."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.core._masking import DEFAULT_MASK, MIN_SECRET_LENGTH, StreamMasker

MASK = b"<MASK>"


def one_shot(text: bytes, secrets: Iterable[bytes], mask: bytes = MASK) -> bytes:
    usable = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=lambda s: (-len(s), s))
    if not usable:
        return text
    return re.sub(b"|".join(re.escape(s) for s in usable), lambda _m: mask, text)


def stream(masker: StreamMasker, chunks: Iterable[bytes]) -> bytes:
    return b"".join(masker.feed(chunk) for chunk in chunks) + masker.flush()


def split_at(text: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_default_mask() -> None:
    masker = StreamMasker([b"hunter2"])
    assert stream(masker, [b"pw=hunter2\n"]) == b"pw=" + DEFAULT_MASK + b"\n"
    assert DEFAULT_MASK == b"<concealed by keybroker>"


def test_secret_split_at_every_pair_of_boundaries() -> None:
    secret = b"sk-live-0123456789"
    text = b"before " + secret + b" middle " + secret + b"after"
    expected = b"before " + MASK + b" middle " + MASK + b"after"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            out = stream(StreamMasker([secret], MASK), split_at(text, [i, j]))
            assert out == expected, (i, j)


def test_byte_by_byte() -> None:
    secret = b"s3cr3t-value"
    text = b"x" + secret + secret + b"y" + secret
    masker = StreamMasker([secret], MASK)
    outputs = [masker.feed(text[i : i + 1]) for i in range(len(text))]
    assert b"".join(outputs) + masker.flush() == b"x" + MASK + MASK + b"y" + MASK
    for piece in outputs:
        assert secret[:4] not in piece


def test_holds_back_a_possible_secret_start_and_releases_it_once_decided() -> None:
    secret = b"abcdefgh"  # longest secret: 8 bytes, so at most 7 are held back
    masker = StreamMasker([secret, b"xyz"], MASK)
    assert masker.feed(b"0123456789") == b"012"
    assert masker.feed(b"abcdefg") == b"3456789"  # "abcdefg" might still become the secret
    assert masker.feed(b"h!") == MASK
    assert masker.flush() == b"!"


def test_emitted_bytes_lag_by_less_than_longest_secret() -> None:
    secrets = [b"needle-one", b"another-longer-needle"]
    longest = max(map(len, secrets))
    masker = StreamMasker(secrets, MASK)
    fed = emitted = 0
    for chunk in [b"a" * 3, b"b" * 50, b"c", b"d" * 17, b"e" * 1000]:
        fed += len(chunk)
        emitted += len(masker.feed(chunk))
        assert fed - emitted <= longest - 1
    assert emitted + len(masker.flush()) == fed


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        ([b"abc", b"abcdef"], b"xxabcdefyy", b"xx" + MASK + b"yy"),
        ([b"abc", b"abcdef"], b"xxabcdeyy", b"xx" + MASK + b"deyy"),
        ([b"abcdef", b"abc"], b"abcabcdef", MASK + MASK),
        ([b"abcd", b"cdef"], b"abcdef", MASK + b"ef"),
        ([b"cdef", b"abcd"], b"zabcdefz", b"z" + MASK + b"efz"),
        ([b"bcde", b"abc"], b"abcde", MASK + b"de"),
        ([b"aaa"], b"aaaaaaa", MASK + MASK + b"a"),
        ([b"a.c"], b"abc a.c", b"abc " + MASK),  # escaped: '.' is not a wildcard
        ([b"\\1", b"x\\1"], b"ax\\1\\1", b"a" + MASK + b"\\1"),  # escaped; 2-byte one ignored
    ],
)
def test_overlapping_secrets_at_every_boundary(secrets: list[bytes], text: bytes, expected: bytes) -> None:
    assert one_shot(text, secrets) == expected
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert stream(StreamMasker(secrets, MASK), split_at(text, [i, j])) == expected, (i, j)


def test_no_secrets_is_passthrough() -> None:
    chunks = [b"hello ", b"", b"world\n", bytes(range(256))]
    masker = StreamMasker([], MASK)
    for chunk in chunks:
        assert masker.feed(chunk) == chunk
    assert masker.flush() == b""


def test_short_and_empty_secrets_are_ignored() -> None:
    masker = StreamMasker([b"", b"a", b"ab"], MASK)
    assert masker.feed(b"a ab abc") == b"a ab abc"
    assert masker.flush() == b""


def test_secret_absent_passes_through_unchanged() -> None:
    masker = StreamMasker([b"not-present-anywhere"], MASK)
    data = b"".join(bytes([i % 251]) for i in range(10_000))
    assert stream(masker, [data[i : i + 777] for i in range(0, len(data), 777)]) == data


def test_large_output_with_many_secrets() -> None:
    secrets = [f"secret-{i:04d}-{'x' * (i % 30)}".encode() for i in range(200)]
    body = b"".join(b"line %d " % i + secrets[i % 200] + b"\n" for i in range(20_000))
    masker = StreamMasker(secrets, MASK)
    out = stream(masker, [body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert out == one_shot(body, secrets)
    assert out.count(MASK) == 20_000


def test_reusable_after_flush() -> None:
    masker = StreamMasker([b"token"], MASK)
    assert stream(masker, [b"tok"]) == b"tok"
    assert stream(masker, [b"en", b"token"]) == b"en" + MASK


def test_repr_hides_secrets() -> None:
    masker = StreamMasker([b"sk-live-0123456789"])
    assert "sk-live" not in repr(masker)


def test_rejects_str_secrets() -> None:
    with pytest.raises(TypeError):
        StreamMasker(["text"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        StreamMasker([b"abc"], mask="x")  # type: ignore[arg-type]


def test_mask_with_backslashes_is_literal() -> None:
    mask = b"\\1\\g<0>"
    masker = StreamMasker([b"secret"], mask)
    assert stream(masker, [b"a secret b", b" secr", b"et"]) == b"a " + mask + b" b " + mask


# --- property ---------------------------------------------------------------------------------------

# Text and secrets share a small alphabet so that overlaps and prefixes are common; the mask uses
# none of its bytes, so a secret in the output could only be an unmasked one.
ALPHABET = b"abc"
SECRETS = st.lists(
    st.binary(min_size=0, max_size=7).map(lambda b: bytes(ALPHABET[x % 3] for x in b)), max_size=5
)
FILLER = st.binary(max_size=12).map(lambda b: bytes(ALPHABET[x % 3] for x in b))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    secrets = draw(SECRETS)
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        parts.append(draw(FILLER))
        embed: bool = draw(st.booleans())
        if secrets and embed:
            parts.append(draw(st.sampled_from(secrets)))
    text = b"".join(parts)
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=10))
    return secrets, text, cuts


@settings(max_examples=1000, deadline=None)
@given(streams())
def test_random_chunkings_equal_one_shot_and_leak_nothing(case: tuple[list[bytes], bytes, list[int]]) -> None:
    secrets, text, cuts = case
    out = stream(StreamMasker(secrets, MASK), split_at(text, cuts))
    assert out == one_shot(text, secrets)
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            assert secret not in out
