"""Redaction of the real key in what an upstream sends back (headers and streamed bodies)."""

from __future__ import annotations

from collections.abc import Iterable

from keybroker.core._masking import StreamMasker

__all__ = ["MASK", "LineMasker", "mask_bytes", "mask_headers"]

MASK = b"[redacted by keybroker]"


class LineMasker:
    """:class:`StreamMasker` that never holds back a complete line.

    Keys never contain a newline, so no match can span one: everything up to the last newline of
    a chunk is final and goes out at once. An event stream (every event ends in a blank line) thus
    passes token by token with no delay; only a chunk's unterminated tail is held back, and by at
    most the longest key's length minus one.
    """

    __slots__ = ("_line_safe", "_masker")

    def __init__(self, forms: Iterable[bytes]) -> None:
        forms = list(forms)
        self._masker = StreamMasker(forms, MASK)
        self._line_safe = all(b"\n" not in f and b"\r" not in f for f in forms)

    def feed(self, chunk: bytes) -> bytes:
        if not self._line_safe:
            return self._masker.feed(chunk)
        cut = chunk.rfind(b"\n")
        if cut < 0:
            return self._masker.feed(chunk)
        head = self._masker.feed(chunk[: cut + 1]) + self._masker.flush()
        if cut + 1 == len(chunk):
            return head
        return head + self._masker.feed(chunk[cut + 1 :])

    def flush(self) -> bytes:
        return self._masker.flush()


def mask_bytes(data: bytes, forms: Iterable[bytes]) -> bytes:
    """Every occurrence of every form replaced (longest first), for a body read whole."""
    for f in sorted(forms, key=len, reverse=True):
        if f and f in data:
            data = data.replace(f, MASK)
    return data


def mask_headers(headers: list[tuple[bytes, bytes]], forms: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    forms = sorted((f for f in forms if f), key=len, reverse=True)
    out = []
    for k, v in headers:
        for f in forms:
            if f in v:
                v = v.replace(f, MASK)
        out.append((k, v))
    return out
