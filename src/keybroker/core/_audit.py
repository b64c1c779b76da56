"""The tamper-evident audit trail.

Each record holds the SHA-256 of the record before it (``prev_hash``) and its own hash over a
canonical JSON form, so an edited, deleted, inserted or reordered record breaks the chain at a
place :meth:`AuditLog.verify` names. The head (last seq and hash) is kept in its own row, so
cutting records off the end is caught too. No record ever holds a value: at most a keyed HMAC of
it, as Vault's audit devices do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keybroker.core._clock import Clock
from keybroker.core._principal import Principal
from keybroker.errors import InvalidInput
from keybroker.store import Store, tables

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "VerifyResult"]

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    version: int | None
    result: str
    request_id: str
    client: str
    detail: str
    value_hmac: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(fields: dict[str, Any]) -> str:
    """Hash of every field except ``hash`` itself."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _ts(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


AuditRecordSpec = tuple[Principal, str, str, str, "int | None", "dict[str, Any] | None", "str | None"]


class _Waiter:
    __slots__ = ("done", "entries", "error", "seqs")

    def __init__(self, entries: list[AuditRecordSpec]) -> None:
        self.entries = entries
        self.done = False
        self.error: BaseException | None = None
        self.seqs: list[int] = []


class AuditLog:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._gc = threading.Condition()
        self._gc_queue: list[_Waiter] = []
        self._gc_leader = False

    # -- writing -------------------------------------------------------------------------------
    def append(
        self,
        conn: Connection,
        principal: Principal,
        action: str,
        target: str,
        *,
        result: str = "ok",
        version: int | None = None,
        detail: dict[str, Any] | None = None,
        value_hmac: str | None = None,
    ) -> int:
        """Append one record inside the caller's transaction (so it commits, or fails, with the
        operation it describes). Returns its sequence number."""
        entry = (principal, action, target, result, version, detail, value_hmac)
        return self.append_many(conn, [entry])[0]

    def append_many(
        self,
        conn: Connection,
        entries: Sequence[tuple[Principal, str, str, str, int | None, dict[str, Any] | None, str | None]],
    ) -> list[int]:
        """Append several records, chained in order, inside the caller's transaction with one
        head read, one insert and one head update (the gateway's group commit of use records).
        Each entry is ``(principal, action, target, result, version, detail, value_hmac)``.
        Returns their sequence numbers."""
        if not entries:
            return []
        t = tables.audit_head
        head = conn.execute(sa.select(t.c.seq, t.c.hash).where(t.c.id == 1).with_for_update()).first()
        if head is None:
            conn.execute(sa.insert(t).values(id=1, seq=0, hash=GENESIS))
            prev_seq, prev_hash = 0, GENESIS
        else:
            prev_seq, prev_hash = int(head.seq), str(head.hash)
        ts = _ts(self.clock.now())
        rows: list[dict[str, Any]] = []
        for principal, action, target, result, version, detail, value_hmac in entries:
            fields: dict[str, Any] = {
                "seq": prev_seq + 1,
                "ts": ts,
                "actor": principal.label,
                "action": action,
                "target": target,
                "version": version,
                "result": result,
                "request_id": principal.request_id or uuid.uuid4().hex,
                "client": principal.client[:128],
                "detail": json.dumps(detail or {}, sort_keys=True, separators=(",", ":")),
                "value_hmac": value_hmac,
                "prev_hash": prev_hash,
            }
            fields["hash"] = record_hash(fields)
            rows.append(fields)
            prev_seq, prev_hash = int(fields["seq"]), str(fields["hash"])
        conn.execute(sa.insert(tables.audit_log), rows)
        conn.execute(sa.update(t).where(t.c.id == 1).values(seq=prev_seq, hash=prev_hash))
        return [int(r["seq"]) for r in rows]

    def commit_durable(self, entries: Sequence[AuditRecordSpec]) -> list[int]:
        """Make ``entries`` durable before returning (group commit).

        Callers that must not act before their record is on disk (a read returns no value until
        then) queue here; one of them, the leader, commits everything queued in ONE transaction
        (one fsync for many reads), then wakes the others. A failed commit fails every caller in
        that batch with the store's error, so nobody gets a value its record did not cover.
        """
        if not entries:
            return []
        waiter = _Waiter(list(entries))
        with self._gc:
            self._gc_queue.append(waiter)
            while not waiter.done:
                if self._gc_leader:
                    self._gc.wait()
                    continue
                self._gc_leader = True
                batch, self._gc_queue = self._gc_queue, []
                self._gc.release()
                try:
                    self._commit_batch(batch)
                finally:
                    self._gc.acquire()
                    self._gc_leader = False
                    self._gc.notify_all()
        if waiter.error is not None:
            raise waiter.error
        return waiter.seqs

    def _commit_batch(self, batch: list[_Waiter]) -> None:
        flat = [e for w in batch for e in w.entries]
        try:
            with self.store.begin() as conn:
                seqs = self.append_many(conn, flat)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the batch
            for w in batch:
                w.error = exc
                w.done = True
            return
        i = 0
        for w in batch:
            w.seqs = seqs[i : i + len(w.entries)]
            i += len(w.entries)
            w.done = True

    def record(self, principal: Principal, action: str, target: str, **kw: Any) -> int:
        """Append in a transaction of its own (for denials, failures, seal/unseal)."""
        with self.store.begin() as conn:
            return self.append(conn, principal, action, target, **kw)

    # -- reading -------------------------------------------------------------------------------
    def iter_entries(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        actor: str | None = None,
        target_prefix: str | None = None,
        value_hmac: str | None = None,
        batch: int = 5000,
    ) -> Iterator[AuditEntry]:
        t = tables.audit_log
        last = 0
        while True:
            q = sa.select(t).where(t.c.seq > last).order_by(t.c.seq).limit(batch)
            if since is not None:
                q = q.where(t.c.ts >= _ts(since))
            if action:
                q = q.where(t.c.action == action)
            if actor:
                q = q.where(t.c.actor == actor)
            if target_prefix:
                q = q.where(t.c.target.startswith(target_prefix, autoescape=True))
            if value_hmac:
                q = q.where(t.c.value_hmac == value_hmac)
            with self.store.connect() as conn:
                rows = conn.execute(q).all()
            for r in rows:
                yield AuditEntry(**r._asdict())
            if len(rows) < batch:
                return
            last = int(rows[-1].seq)

    def tail(self, n: int = 50, **filters: Any) -> list[AuditEntry]:
        entries = list(self.iter_entries(**filters))
        return entries[-n:] if n > 0 else entries

    def verify(self) -> VerifyResult:
        """Walk the whole chain. Names the first record that is edited, missing, inserted or out
        of order, or a head that does not match the last record (records cut off the end).

        Reads one consistent snapshot (records and head), so writes landing meanwhile are not
        mistaken for tampering."""
        with self.store.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            return self._verify(conn)

    def _verify(self, conn: Connection) -> VerifyResult:
        expected_prev = GENESIS
        expected_seq = 1
        checked = 0
        t = tables.audit_log
        last = 0
        while True:
            rows = conn.execute(sa.select(t).where(t.c.seq > last).order_by(t.c.seq).limit(5000)).all()
            for r in rows:
                fields = r._asdict()
                seq = int(fields["seq"])
                if seq != expected_seq:
                    bad = expected_seq if seq > expected_seq else seq
                    return VerifyResult(
                        False, checked, bad, f"record {expected_seq} is missing or out of order"
                    )
                if fields["prev_hash"] != expected_prev:
                    return VerifyResult(False, checked, seq, "does not link to the record before it")
                if record_hash(fields) != fields["hash"]:
                    return VerifyResult(False, checked, seq, "its contents were changed after it was written")
                expected_prev = str(fields["hash"])
                expected_seq += 1
                checked += 1
            if len(rows) < 5000:
                break
            last = int(rows[-1].seq)
        head = conn.execute(sa.select(tables.audit_head).where(tables.audit_head.c.id == 1)).first()
        head_seq = int(head.seq) if head else 0
        head_hash = str(head.hash) if head else GENESIS
        if head_seq != checked or head_hash != expected_prev:
            if head_seq > checked:
                bad = checked + 1  # records cut off the end
            elif head_seq < checked:
                bad = head_seq + 1  # records added past the head
            else:
                bad = head_seq  # the last record or the head itself was changed
            return VerifyResult(
                False,
                checked,
                bad,
                f"the chain head says {head_seq} records but {checked} are linked (records removed or added "
                "at the end)",
                head_seq,
            )
        return VerifyResult(True, checked, head_seq=head_seq)

    def export(self, fmt: str, *, since: datetime | None = None) -> Iterator[str]:
        """Yield the log as JSON lines or CSV (with a header row)."""
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"unknown audit export format {fmt!r}; use jsonl or csv")
        cols = [f.name for f in AuditEntry.__dataclass_fields__.values()]
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(cols)
            yield buf.getvalue()
        for e in self.iter_entries(since=since):
            if fmt == "jsonl":
                yield json.dumps(e.to_dict(), sort_keys=True) + "\n"
            else:
                buf = io.StringIO()
                csv.writer(buf).writerow([getattr(e, c) if getattr(e, c) is not None else "" for c in cols])
                yield buf.getvalue()
