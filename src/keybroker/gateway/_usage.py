"""Counting and auditing each use of a proxy token.

:class:`UsageScanner` reads the model-token usage an upstream reports (OpenAI ``usage``,
Anthropic ``message_start``/``message_delta`` usage, Gemini ``usageMetadata``) from a JSON body or
an event stream as it passes, without holding the stream back.

:class:`UseRecorder` writes one ``gateway.use`` audit record per request and adds the counts to
the token's row, batched in one transaction every ``flush_interval`` seconds (group commit, so
the request path never waits for a disk flush). It fails closed: while a flush fails, or the
backlog grows past ``max_backlog``, :attr:`UseRecorder.healthy` is false and the gateway refuses
new requests with ``audit_unavailable``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keybroker.core._audit import AuditLog
from keybroker.core._principal import Principal
from keybroker.core._proxy_tokens import ProxyTokenService, UsageDelta
from keybroker.errors import KeybrokerError

__all__ = ["UsageScanner", "UseRecord", "UseRecorder", "usage_from_json"]

log = logging.getLogger("keybroker.gateway")

_MARKERS = (b'"usage"', b'"usageMetadata"')
_MAX_LINE = 1 << 16
_COUNT = re.compile(
    rb'"(input_tokens|output_tokens|prompt_tokens|completion_tokens|total_tokens'
    rb'|promptTokenCount|candidatesTokenCount|totalTokenCount)"\s*:\s*(\d+)'
)
#: JSON keys as they appear unescaped in a body (inside a JSON string a quote is escaped, so
#: text the model wrote cannot pose as one of them)
_AS = {
    "promptTokenCount": "input_tokens",
    "candidatesTokenCount": "output_tokens",
    "totalTokenCount": "total_tokens",
}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_from_json(obj: Any) -> tuple[int, int, int]:
    """(input, output, total) tokens an upstream reported in one JSON object (0s if none)."""
    if not isinstance(obj, dict):
        return 0, 0, 0
    meta = obj.get("usageMetadata")
    if isinstance(meta, dict):
        inp, out = _int(meta.get("promptTokenCount")), _int(meta.get("candidatesTokenCount"))
        return inp, out, _int(meta.get("totalTokenCount")) or inp + out
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        msg = obj.get("message")  # Anthropic message_start
        usage = msg.get("usage") if isinstance(msg, dict) else None
    if not isinstance(usage, dict):
        resp = obj.get("response")  # OpenAI Responses API events
        usage = resp.get("usage") if isinstance(resp, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0
    inp = _int(usage.get("input_tokens")) or _int(usage.get("prompt_tokens"))
    out = _int(usage.get("output_tokens")) or _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens"))
    return inp, out, total or inp + out


class UsageScanner:
    """Feed it the body as it streams; :attr:`tokens` is the usage seen so far. Lines without a
    usage marker are skipped without parsing, so the cost on a token stream is a search per
    chunk."""

    __slots__ = ("_inp", "_out", "_tail", "_total")

    def __init__(self) -> None:
        self._tail = b""
        self._inp = 0
        self._out = 0
        self._total = 0

    @property
    def tokens(self) -> int:
        return max(self._total, self._inp + self._out)

    def _take(self, obj: Any) -> None:
        inp, out, total = usage_from_json(obj)
        # streams repeat cumulative counts (Anthropic's output_tokens grows): keep the largest
        self._inp = max(self._inp, inp)
        self._out = max(self._out, out)
        self._total = max(self._total, total)

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data[-_MAX_LINE:]
            return
        self._tail = data[cut + 1 :][-_MAX_LINE:]
        head = data[:cut]
        if not any(m in head for m in _MARKERS):
            return
        for line in head.split(b"\n"):
            if any(m in line for m in _MARKERS):
                self._line(line)

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            return
        try:
            self._take(json.loads(line))
        except ValueError:
            return

    def whole(self, body: bytes) -> None:
        """A complete (non-streamed) body, read with a scan of its keys (no JSON parse)."""
        if not any(m in body for m in _MARKERS):
            return
        counts: dict[str, int] = {}
        for k, v in _COUNT.findall(body):
            name = _AS.get(k.decode(), k.decode())
            counts[name] = max(counts.get(name, 0), int(v))
        self._take({"usage": counts})

    def finish(self) -> None:
        if self._tail:
            tail, self._tail = self._tail, b""
            if any(m in tail for m in _MARKERS):
                before = self.tokens
                self._line(tail)
                if self.tokens == before:
                    # the end of a long one-line body: read the counts without parsing it whole
                    self.whole(tail)


@dataclass(slots=True)
class UseRecord:
    principal: Principal
    target: str
    result: str
    detail: dict[str, Any] = field(default_factory=dict)
    token_id: str | None = None
    requests: int = 0
    tokens: int = 0
    at: datetime | None = None


class UseRecorder:
    """Background group-commit of use records (see the module docstring)."""

    def __init__(
        self,
        audit: AuditLog,
        tokens: ProxyTokenService,
        *,
        flush_interval: float = 0.05,
        max_backlog: int = 10_000,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.audit = audit
        self.tokens = tokens
        self.store = audit.store
        self.flush_interval = flush_interval
        self.max_backlog = max_backlog
        self.on_flush = on_flush
        self._pending: list[UseRecord] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._failing = False
        self._flushing = 0
        self.written = 0

    @property
    def healthy(self) -> bool:
        return not self._failing and len(self._pending) < self.max_backlog

    def record(self, rec: UseRecord) -> None:
        with self._cond:
            self._pending.append(rec)
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="kb-gateway-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop and not self._pending:
                    return
                self._cond.wait(timeout=self.flush_interval)
                batch, self._pending = self._pending, []
                self._flushing = len(batch)
            if batch:
                try:
                    self._write(batch)
                except KeybrokerError as exc:
                    # keep the records and refuse traffic until they are durable (fail closed)
                    log.error("gateway audit flush failed (%s); refusing traffic until it recovers", exc.code)
                    with self._cond:
                        self._pending = batch + self._pending
                        self._failing = True
                    time.sleep(min(1.0, self.flush_interval * 10))
                else:
                    with self._cond:
                        self._failing = False
                        self.written += len(batch)
                    if self.on_flush is not None:
                        self.on_flush(len(batch))
            with self._cond:
                self._flushing = 0
                if not self._pending:
                    self._cond.notify_all()

    def _write(self, batch: list[UseRecord]) -> None:
        deltas: dict[str, UsageDelta] = {}
        for rec in batch:
            if rec.token_id and (rec.requests or rec.tokens):
                d = deltas.get(rec.token_id)
                at = rec.at or datetime.now().astimezone()
                if d is None:
                    deltas[rec.token_id] = UsageDelta(rec.token_id, rec.requests, rec.tokens, at)
                else:
                    deltas[rec.token_id] = UsageDelta(
                        rec.token_id,
                        d.requests + rec.requests,
                        d.tokens + rec.tokens,
                        max(d.last_used_at, at),
                    )
        with self.store.begin() as conn:
            # Lock order, as everywhere in keybroker: the rows an operation changes first (here the
            # proxy tokens, in a stable order), the audit chain head last. Taking the head first
            # deadlocked on PostgreSQL against a session ending (tokens, then audit).
            if deltas:
                self.tokens.add_usage(conn, [deltas[k] for k in sorted(deltas)])
            self.audit.append_many(
                conn, [(r.principal, "gateway.use", r.target, r.result, None, r.detail, None) for r in batch]
            )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is durable. False on timeout or failure."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while (self._pending or self._flushing) and time.monotonic() < deadline:
                if self._thread is None:
                    break
                self._cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            return not self._pending and not self._flushing and not self._failing

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            t = self._thread
        if t is not None:
            t.join(timeout=timeout)
        with self._cond:
            self._thread = None
