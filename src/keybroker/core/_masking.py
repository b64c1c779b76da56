"""Mask secret values in a byte stream, for ``keybroker run`` (like ``op run``) child output.

The child's stdout/stderr arrive in arbitrary chunks, so a secret can be split across two reads.
:class:`StreamMasker` holds back just enough of each chunk's tail (fewer bytes than the longest
secret) to never emit part of a secret, and its output, once flushed, is exactly what one
``re.sub`` over the whole stream would give.

Only exact byte sequences are masked: not encodings (base64, URL-escaping) and not the single lines
of a multi-line secret. Values shorter than :data:`MIN_SECRET_LENGTH` bytes are ignored, because
masking every ``"1"`` or ``"ab"`` in the output would mangle it while protecting next to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DEFAULT_MASK", "MIN_SECRET_LENGTH", "StreamMasker"]

DEFAULT_MASK = b"<concealed by keybroker>"
MIN_SECRET_LENGTH = 3


class StreamMasker:
    """Replace every occurrence of any secret with ``mask`` in a stream fed chunk by chunk.

    Where secrets overlap or one is a prefix of another, the longest match at the leftmost position
    wins (the alternation is sorted longest first). Call :meth:`feed` for each chunk and
    :meth:`flush` at end of stream; the masker may be reused after a flush.
    """

    __slots__ = ("_hold", "_mask", "_pattern", "_pending")

    def __init__(self, secrets: Iterable[bytes], mask: bytes = DEFAULT_MASK) -> None:
        """Raises ``TypeError`` if a secret or the mask is not bytes-like."""
        unique: set[bytes] = set()
        for secret in secrets:
            if not isinstance(secret, bytes | bytearray):
                raise TypeError("secrets must be bytes")
            if len(secret) >= MIN_SECRET_LENGTH:
                unique.add(bytes(secret))
        if not isinstance(mask, bytes | bytearray):
            raise TypeError("mask must be bytes")
        self._mask = bytes(mask)
        self._pending = b""
        if unique:
            ordered = sorted(unique, key=lambda s: (-len(s), s))
            self._pattern: re.Pattern[bytes] | None = re.compile(b"|".join(re.escape(s) for s in ordered))
            self._hold = len(ordered[0]) - 1
        else:
            self._pattern = None
            self._hold = 0

    def __repr__(self) -> str:
        return f"StreamMasker(secrets={'[secret]' if self._pattern is not None else 'none'})"

    def feed(self, chunk: bytes) -> bytes:
        """Mask ``chunk`` and return what can be emitted now (at most longest-1 bytes are held back)."""
        if self._pattern is None:
            return bytes(chunk)
        buf = self._pending + chunk
        # A match starting at or before `decided` is final: every alternative fits inside `buf`.
        decided = len(buf) - self._hold - 1
        out: list[bytes] = []
        pos = 0
        search = self._pattern.search
        while True:
            match = search(buf, pos)
            if match is None or match.start() > decided:
                break
            out.append(buf[pos : match.start()])
            out.append(self._mask)
            pos = match.end()
        cut = max(pos, decided + 1)
        out.append(buf[pos:cut])
        self._pending = buf[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        """Mask and return the held-back tail at end of stream."""
        buf, self._pending = self._pending, b""
        if self._pattern is None or not buf:
            return buf
        mask = self._mask
        return self._pattern.sub(lambda _match: mask, buf)
