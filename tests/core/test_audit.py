"""The audit trail: a record for every operation, never a value, denied attempts, hash-chain
verification against any mutation, export, and fail-closed reads and writes."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from keybroker.core import AuditLog, ManualClock, PassphraseRoot, Principal, Scope, SecretService, Vault
from keybroker.core._audit import GENESIS, record_hash
from keybroker.errors import (
    AuditUnavailable,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    SecretNotFound,
    StoreError,
)
from keybroker.store import Store, tables

S = Scope()
T = "default/default/dev/"
CANARY = "sk-CANARY-7f3a9c1e5d2b-do-not-log"


def entries(vault: Vault, after: int = 0) -> list[Any]:
    return [e for e in vault.audit.iter_entries() if e.seq > after]


def head(vault: Vault) -> int:
    return max((e.seq for e in vault.audit.iter_entries()), default=0)


# ---------------------------------------------------------------- one record per operation
def test_every_operation_is_recorded(vault: Vault, secrets: SecretService, me, fast_passphrase) -> None:  # type: ignore[no-untyped-def]
    ops: list[tuple[Callable[[], Any], list[tuple[str, str, int | None, str]]]] = [
        (lambda: secrets.put(me, S, "KEY", "v1"), [("secret.write", T + "KEY", 1, "ok")]),
        (lambda: secrets.get(me, S, "KEY"), [("secret.read", T + "KEY", 1, "ok")]),
        (lambda: secrets.rotate(me, S, "KEY", "v2"), [("secret.rotate", T + "KEY", 2, "ok")]),
        (lambda: secrets.promote(me, S, "KEY"), [("secret.promote", T + "KEY", 2, "ok")]),
        (
            lambda: secrets.rollback(me, S, "KEY", 1),
            [("secret.rollback-read", T + "KEY", 1, "ok"), ("secret.rollback", T + "KEY", 3, "ok")],
        ),
        (lambda: secrets.list_secrets(me, S), [("secret.list", "default/default/dev", None, "ok")]),
        (lambda: secrets.describe(me, S, "KEY"), [("secret.describe", T + "KEY", None, "ok")]),
        (lambda: secrets.history(me, S, "KEY"), [("secret.history", T + "KEY", None, "ok")]),
        (
            lambda: secrets.update_metadata(me, S, "KEY", owner="o"),
            [("secret.metadata", T + "KEY", None, "ok")],
        ),
        (lambda: secrets.delete(me, S, "KEY", versions=[2]), [("secret.delete", T + "KEY", None, "ok")]),
        (lambda: secrets.undelete(me, S, "KEY", versions=[2]), [("secret.undelete", T + "KEY", None, "ok")]),
        (lambda: secrets.delete(me, S, "KEY"), [("secret.delete", T + "KEY", None, "ok")]),
        (lambda: secrets.undelete(me, S, "KEY"), [("secret.undelete", T + "KEY", None, "ok")]),
        (lambda: secrets.destroy(me, S, "KEY", [1]), [("secret.destroy", T + "KEY", None, "ok")]),
        (
            lambda: secrets.get(me, S, "KEY", version=1),
            [("secret.read", T + "KEY", 1, "error:version_not_found")],
        ),
        (lambda: secrets.get(me, S, "NOPE"), [("secret.read", T + "NOPE", None, "error:secret_not_found")]),
        (lambda: secrets.put(me, S, "REF", "${KEY}"), [("secret.write", T + "REF", 1, "ok")]),
        (
            lambda: secrets.get(me, S, "REF"),
            [("secret.read", T + "REF", 1, "ok"), ("secret.read-ref", T + "KEY", 3, "ok")],
        ),
        (lambda: secrets.export(me, S), None),  # checked below
        (lambda: secrets.create_project(me, "p2"), [("project.create", "default/p2", None, "ok")]),
        (
            lambda: secrets.create_environment(me, "p2", "qa"),
            [("environment.create", "default/p2/qa", None, "ok")],
        ),
        (lambda: secrets.list_projects(me), [("project.list", "default", None, "ok")]),
        (lambda: secrets.keypair_generate(me, S, "ID"), [("keypair.generate", T + "ID", 1, "ok")]),
        (lambda: secrets.keypair_generate(me, S, "ID", rotate=True), [("keypair.rotate", T + "ID", 2, "ok")]),
        (lambda: secrets.keypair_public(me, S, "ID"), [("keypair.public", T + "ID", 2, "ok")]),
        (lambda: secrets.purge(me, S, "REF"), [("secret.purge", T + "REF", None, "ok")]),
        (lambda: vault.seal(me), [("vault.seal", "vault", None, "ok")]),
        (lambda: vault.unseal(fast_passphrase, me), [("vault.unseal", "vault", None, "ok")]),
        (
            lambda: vault.rekey(me),
            [("vault.rekey", "vault", None, "started"), ("vault.rekey", "vault", None, "ok")],
        ),
    ]
    for op, expected in ops:
        before = head(vault)
        try:
            op()
        except KeybrokerError:
            pass
        new = entries(vault, before)
        got = [(e.action, e.target, e.version, e.result) for e in new]
        if expected is None:  # export: one read per exported secret
            assert got == [
                ("secret.list", "default/default/dev", None, "ok"),
                ("secret.export", T + "KEY", 3, "ok"),
                ("secret.export", T + "REF", 1, "ok"),
                ("secret.read-ref", T + "KEY", 3, "ok"),
            ]
        else:
            assert got == expected, op
        for e in new:
            assert e.actor == me.label and e.client == "test"
            assert e.request_id and e.ts.endswith("Z")
    assert vault.audit.verify().ok


def test_request_id_and_client_are_recorded(secrets: SecretService, vault: Vault) -> None:
    p = Principal(id="svc-1", kind="service", client="billing-worker/2.1", local=True, request_id="req-42")
    secrets.put(p, S, "KEY", "v")
    e = entries(vault)[-1]
    assert (e.actor, e.client, e.request_id) == ("service:svc-1", "billing-worker/2.1", "req-42")


# ---------------------------------------------------------------- no value in the trail
def _all_cells(store: Store) -> Iterator[tuple[str, str, Any]]:
    with store.connect() as conn:
        for t in tables.metadata.sorted_tables:
            for row in conn.execute(sa.select(t)):
                for col, cell in row._mapping.items():
                    yield t.name, col, cell


def test_no_value_in_audit_or_database(vault: Vault, secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    kr = vault.keyring()
    secrets.put(me, S, "LEAK", CANARY, description="a canary")
    secrets.get(me, S, "LEAK")
    secrets.put(me, S, "WRAP", "x${LEAK}x")
    secrets.get(me, S, "WRAP")
    secrets.rotate(me, S, "LEAK", CANARY + "-2")
    secrets.promote(me, S, "LEAK")
    secrets.rollback(me, S, "LEAK", 1)
    secrets.export(me, S)
    secrets.put_many(me, S, {"BULK": CANARY})
    with pytest.raises(InvalidInput):
        secrets.put(me, S, "LEAK", CANARY, risk="bogus")
    vault.rekey(me)
    needles = [CANARY.encode(), CANARY.encode().hex().encode(), b"CANARY"]
    for table, col, cell in _all_cells(store):
        blob = cell if isinstance(cell, bytes) else str(cell).encode()
        for n in needles:
            assert n not in blob, (table, col)
    expected = kr.audit_hmac(CANARY.encode())
    hits = list(vault.audit.iter_entries(value_hmac=expected))
    assert {(e.action, e.target) for e in hits} >= {
        ("secret.write", T + "LEAK"),
        ("secret.read", T + "LEAK"),
        ("secret.read-ref", T + "LEAK"),
        ("secret.rollback", T + "LEAK"),
        ("secret.export", T + "LEAK"),
        ("secret.write", T + "BULK"),
    }
    assert all(e.value_hmac == expected for e in hits)
    wrap = next(e for e in entries(vault) if e.target == T + "WRAP" and e.action == "secret.write")
    assert wrap.value_hmac == kr.audit_hmac(b"x${LEAK}x")
    for e in vault.audit.iter_entries():
        if e.action in ("vault.init", "secret.list", "vault.rekey"):
            assert e.value_hmac is None
    # the hmac is keyed: the bare hash of the value is not in the log
    import hashlib

    assert not list(
        vault.audit.iter_entries(value_hmac="hmac-sha256:" + hashlib.sha256(CANARY.encode()).hexdigest())
    )


# ---------------------------------------------------------------- denied attempts
BOB = Principal(id="bob", kind="agent", client="agent-sdk")


def test_denied_operations_are_audited(vault: Vault, secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", CANARY)
    secrets.keypair_generate(me, S, "ID")
    attempts: list[tuple[Callable[[], Any], str, str]] = [
        (lambda: secrets.get(Principal(id="bob", kind="agent"), S, "KEY"), "secret.read", T + "KEY"),
        (lambda: secrets.get(BOB, S, "KEY", version=1), "secret.read", T + "KEY"),
        (lambda: secrets.put(BOB, S, "KEY", "overwrite"), "secret.write", T + "KEY"),
        (lambda: secrets.put(BOB, S, "NEW", "v"), "secret.write", T + "NEW"),
        (lambda: secrets.rotate(BOB, S, "KEY", "v"), "secret.rotate", T + "KEY"),
        (lambda: secrets.promote(BOB, S, "KEY"), "secret.promote", T + "KEY"),
        (lambda: secrets.rollback(BOB, S, "KEY", 1), "secret.rollback-read", T + "KEY"),
        (lambda: secrets.delete(BOB, S, "KEY"), "secret.delete", T + "KEY"),
        (lambda: secrets.undelete(BOB, S, "KEY"), "secret.undelete", T + "KEY"),
        (lambda: secrets.destroy(BOB, S, "KEY", [1]), "secret.destroy", T + "KEY"),
        (lambda: secrets.purge(BOB, S, "KEY"), "secret.purge", T + "KEY"),
        (lambda: secrets.update_metadata(BOB, S, "KEY", owner="bob"), "secret.metadata", T + "KEY"),
        (lambda: secrets.list_secrets(BOB, S), "secret.list", "default/default/dev"),
        (lambda: secrets.export(BOB, S), "secret.list", "default/default/dev"),
        (lambda: secrets.describe(BOB, S, "KEY"), "secret.describe", T + "KEY"),
        (lambda: secrets.history(BOB, S, "KEY"), "secret.history", T + "KEY"),
        (lambda: secrets.keypair_public(BOB, S, "ID"), "keypair.public", T + "ID"),
        (lambda: secrets.keypair_generate(BOB, S, "ID2"), "keypair.generate", T + "ID2"),
        (lambda: secrets.keypair_generate(BOB, S, "ID"), "keypair.generate", T + "ID"),
        # no answer may tell a denied caller whether a name exists
        (lambda: secrets.rotate(BOB, S, "NOPE", "v"), "secret.rotate", T + "NOPE"),
        (lambda: secrets.keypair_generate(BOB, S, "NOPE", rotate=True), "keypair.rotate", T + "NOPE"),
        (lambda: secrets.get(BOB, S, "NOPE"), "secret.read", T + "NOPE"),
        (lambda: secrets.describe(BOB, S, "NOPE"), "secret.describe", T + "NOPE"),
        (lambda: secrets.create_project(BOB, "evil"), "project.create", "default/evil/*"),
        (
            lambda: secrets.create_environment(BOB, "default", "evil"),
            "environment.create",
            "default/default/evil",
        ),
        (lambda: secrets.put_many(BOB, S, {"A": "1"}), "secret.write", T + "A"),
    ]
    before_state = [(t, c, v) for t, c, v in _all_cells(store) if t not in ("kb_audit_log", "kb_audit_head")]
    for op, action, target in attempts:
        before = head(vault)
        with pytest.raises(PermissionDenied) as info:
            op()
        assert info.value.code == "permission_denied" and info.value.status == 403
        new = entries(vault, before)
        assert [(e.action, e.target, e.result, e.actor) for e in new] == [
            (action, target, "denied:permission_denied", "agent:bob")
        ], action
        assert new[0].value_hmac is None
    after_state = [(t, c, v) for t, c, v in _all_cells(store) if t not in ("kb_audit_log", "kb_audit_head")]
    assert after_state == before_state
    assert secrets.get(me, S, "KEY").value.reveal() == CANARY
    assert vault.audit.verify().ok
    assert len(list(vault.audit.iter_entries(actor="agent:bob"))) == len(attempts)


# ---------------------------------------------------------------- verify and mutations
def test_verify_intact_log(vault: Vault, secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        secrets.put(me, S, f"K{i % 4}", f"v{i}")
    r = vault.audit.verify()
    assert r.ok and r.checked == r.head_seq == head(vault) and r.first_bad_seq is None


def test_verify_empty_log(store: Store, clock: ManualClock) -> None:
    store.migrate()
    r = AuditLog(store, clock).verify()
    assert r.ok and r.checked == 0 and r.head_seq == 0


def test_verify_reads_one_consistent_snapshot(
    vault: Vault, secrets: SecretService, me, store: Store, clock: ManualClock
) -> None:  # type: ignore[no-untyped-def]
    """A write landing while verify walks the chain is not mistaken for tampering."""
    for i in range(5):
        secrets.put(me, S, f"K{i}", "v")
    other = Store(store.url)
    fired: list[int] = []

    def append_concurrently(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if not fired and statement.lstrip().upper().startswith("SELECT") and "kb_audit_log" in statement:
            fired.append(1)
            AuditLog(other, clock).record(me, "concurrent.write", "vault")

    event.listen(store.engine, "after_cursor_execute", append_concurrently)
    try:
        r = vault.audit.verify()
    finally:
        event.remove(store.engine, "after_cursor_execute", append_concurrently)
        other.dispose()
    assert fired
    assert r.ok, r
    assert vault.audit.verify().ok


FIELDS = ["ts", "actor", "action", "target", "version", "result", "request_id", "client", "detail",
          "value_hmac", "prev_hash", "hash", "seq"]  # fmt: skip


def _reset_log(store: Store, clock: ManualClock, n: int) -> None:
    with store.begin() as conn:
        conn.execute(sa.delete(tables.audit_log))
        conn.execute(sa.delete(tables.audit_head))
        log = AuditLog(store, clock)
        p = Principal(id="alice", kind="user", client="t")
        for i in range(n):
            log.append(
                conn,
                p,
                ["secret.read", "secret.write", "vault.seal"][i % 3],
                f"default/default/dev/K{i}",
                version=i if i % 2 else None,
                value_hmac=f"hmac-sha256:{i:064x}" if i % 3 == 0 else None,
                detail={"i": i},
            )


def _rows(conn: sa.Connection) -> dict[int, dict[str, Any]]:
    return {int(r.seq): dict(r._mapping) for r in conn.execute(sa.select(tables.audit_log))}


def _forged(seq: int, prev_hash: str, chained: bool) -> dict[str, Any]:
    f: dict[str, Any] = {
        "seq": seq,
        "ts": "2026-01-01T00:00:00.000000Z",
        "actor": "user:alice",
        "action": "secret.read",
        "target": "default/default/dev/FORGED",
        "version": 1,
        "result": "ok",
        "request_id": "forged",
        "client": "t",
        "detail": "{}",
        "value_hmac": None,
        "prev_hash": prev_hash if chained else os.urandom(32).hex(),
    }
    f["hash"] = record_hash(f) if chained else os.urandom(32).hex()
    return f


def _changed(field: str, old: Any, n: int, data: st.DataObject) -> Any:
    if field == "seq":
        return n + data.draw(st.integers(min_value=1, max_value=5), label="new seq")
    if field == "version":
        return (old or 0) + data.draw(st.integers(min_value=1, max_value=3)) if old is not None else 7
    if field == "value_hmac":
        return None if old is not None else "hmac-sha256:" + "ab" * 32
    if field in ("hash", "prev_hash"):
        return old[:-1] + ("0" if old[-1] != "0" else "1")
    new = data.draw(
        st.text(alphabet='abcdefghij:/{}"_-0123456789', min_size=1, max_size=12), label="new text"
    )
    return new if new != old else old + "x"


mutations = st.sampled_from(["edit", "delete", "insert", "swap", "truncate"])


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(n=st.integers(min_value=2, max_value=12), kind=mutations, data=st.data())
def test_any_mutation_is_detected(
    store: Store, clock: ManualClock, n: int, kind: str, data: st.DataObject
) -> None:
    store.migrate()
    _reset_log(store, clock, n)
    log = AuditLog(store, clock)
    assert log.verify().ok
    at = st.integers(min_value=1, max_value=n)
    al = tables.audit_log
    with store.begin() as conn:
        rows = _rows(conn)
        if kind == "edit":
            k = data.draw(at, label="record")
            field = data.draw(st.sampled_from(FIELDS), label="field")
            new = _changed(field, rows[k][field], n, data)
            conn.execute(sa.update(al).where(al.c.seq == k).values({field: new}))
            expected = k
        elif kind == "delete":
            k = data.draw(at, label="record")
            conn.execute(sa.delete(al).where(al.c.seq == k))
            expected = k
        elif kind == "insert":
            k = data.draw(st.integers(min_value=1, max_value=n + 1), label="position")
            chained = data.draw(st.booleans(), label="chained")
            for seq in range(n, k - 1, -1):  # make room, highest first (no key clash)
                conn.execute(sa.update(al).where(al.c.seq == seq).values(seq=seq + 1))
            prev = rows[k - 1]["hash"] if k > 1 else GENESIS
            conn.execute(sa.insert(al).values(**_forged(k, prev, chained)))
            # a forged record that links perfectly is only given away by the genuine one after it
            expected = k + 1 if chained and k <= n else k
        elif kind == "swap":
            i = data.draw(st.integers(min_value=1, max_value=n - 1), label="first")
            j = data.draw(st.integers(min_value=i + 1, max_value=n), label="second")
            body = [f for f in FIELDS if f != "seq"]
            conn.execute(sa.update(al).where(al.c.seq == i).values({f: rows[j][f] for f in body}))
            conn.execute(sa.update(al).where(al.c.seq == j).values({f: rows[i][f] for f in body}))
            expected = i
        else:
            k = data.draw(at, label="cut from")
            conn.execute(sa.delete(al).where(al.c.seq >= k))
            expected = k
    r = log.verify()
    assert not r.ok
    assert r.first_bad_seq == expected, (kind, r)
    assert r.reason


def test_records_appended_past_the_head_are_named(store: Store, clock: ManualClock) -> None:
    store.migrate()
    _reset_log(store, clock, 4)
    with store.begin() as conn:
        prev = _rows(conn)[4]["hash"]
        conn.execute(sa.insert(tables.audit_log).values(**_forged(5, prev, True)))
    r = AuditLog(store, clock).verify()
    assert not r.ok and r.first_bad_seq == 5


def test_edited_head_is_detected(store: Store, clock: ManualClock) -> None:
    store.migrate()
    _reset_log(store, clock, 3)
    with store.begin() as conn:
        conn.execute(sa.update(tables.audit_head).values(hash="f" * 64))
    r = AuditLog(store, clock).verify()
    assert not r.ok and r.first_bad_seq == 3


# ---------------------------------------------------------------- export
def test_export_jsonl_and_csv(vault: Vault, secrets: SecretService, me, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "OLD", CANARY)
    clock.advance(3600)
    cutoff = clock.now()
    clock.advance(1)
    secrets.put(me, S, "NEW", CANARY)
    secrets.get(me, S, "NEW")
    all_entries = entries(vault)
    lines = list(vault.audit.export("jsonl"))
    assert len(lines) == len(all_entries)
    parsed = [json.loads(line) for line in lines]
    assert [p["seq"] for p in parsed] == [e.seq for e in all_entries]
    assert parsed[0] == all_entries[0].to_dict()
    assert set(parsed[0]) == set(FIELDS)
    # each exported record still hashes to its own hash
    assert all(record_hash(p) == p["hash"] for p in parsed)

    text = "".join(vault.audit.export("csv"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(all_entries)
    assert rows[-1]["action"] == "secret.read" and rows[-1]["target"] == T + "NEW"
    assert rows[0]["version"] == "" and rows[0]["action"] == "vault.init"

    since = [json.loads(line) for line in vault.audit.export("jsonl", since=cutoff)]
    assert [(p["action"], p["target"]) for p in since] == [
        ("secret.write", T + "NEW"),
        ("secret.read", T + "NEW"),
    ]
    since_csv = list(csv.DictReader(io.StringIO("".join(vault.audit.export("csv", since=cutoff)))))
    assert len(since_csv) == 2
    assert CANARY not in text and CANARY not in "".join(lines)
    with pytest.raises(InvalidInput):
        list(vault.audit.export("xml"))


def test_filters_and_tail(vault: Vault, secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        secrets.put(me, S, f"app/K{i}", "v")
    secrets.put(me, S, "OTHER", "v")
    assert len(vault.audit.tail(3)) == 3
    assert [e.target for e in vault.audit.iter_entries(target_prefix=T + "app/")] == [
        T + f"app/K{i}" for i in range(5)
    ]
    assert len(list(vault.audit.iter_entries(action="secret.write"))) == 6
    assert len(list(vault.audit.iter_entries(batch=2))) == len(entries(vault))


# ---------------------------------------------------------------- fail closed
def _break_audit(store: Store) -> None:
    with store.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER kb_audit_down BEFORE INSERT ON kb_audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit device down'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION kb_audit_down() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'audit device down'; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER kb_audit_down BEFORE INSERT ON kb_audit_log "
                "FOR EACH ROW EXECUTE FUNCTION kb_audit_down()"
            )


def _repair_audit(store: Store) -> None:
    with store.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER kb_audit_down" + ("" if store.dialect == "sqlite" else " ON kb_audit_log")
        )


def _state(store: Store) -> list[tuple[str, str, Any]]:
    return list(_all_cells(store))


def test_fail_closed(
    vault: Vault, secrets: SecretService, me, store: Store, fast_passphrase: PassphraseRoot
) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", CANARY)
    secrets.put(me, S, "BASE", "b")
    secrets.put(me, S, "REF", "${BASE}")
    _break_audit(store)
    before = _state(store)

    for name in ("KEY", "REF"):
        with pytest.raises(AuditUnavailable) as info:
            secrets.get(me, S, name)
        assert info.value.code == "audit_unavailable" and info.value.status == 503
        assert CANARY not in str(info.value) and CANARY not in repr(info.value.__cause__)
    with pytest.raises(AuditUnavailable):
        secrets.get(me, S, "KEY", version=1)

    writes: list[Callable[[], Any]] = [
        lambda: secrets.put(me, S, "KEY", "second"),
        lambda: secrets.put(me, S, "NEW", "new"),
        lambda: secrets.put_many(me, S, {"N1": "1", "N2": "2"}),
        lambda: secrets.rotate(me, S, "KEY", "rotated"),
        lambda: secrets.delete(me, S, "KEY"),
        lambda: secrets.destroy(me, S, "KEY", [1]),
        lambda: secrets.purge(me, S, "KEY"),
        lambda: secrets.update_metadata(me, S, "KEY", owner="x"),
        lambda: secrets.keypair_generate(me, S, "ID"),
        lambda: secrets.create_project(me, "p2"),
        lambda: secrets.list_secrets(me, S),
        lambda: vault.rekey(me),
    ]
    for op in writes:
        with pytest.raises((AuditUnavailable, StoreError)):
            op()
    assert _state(store) == before  # nothing was written, nothing changed

    _repair_audit(store)
    assert secrets.get(me, S, "KEY").value.reveal() == CANARY
    assert secrets.describe(me, S, "KEY").latest_version == 1
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "NEW")
    assert vault.audit.verify().ok


def test_fail_closed_unseal(
    vault: Vault, secrets: SecretService, me, store: Store, fast_passphrase: PassphraseRoot
) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", CANARY)
    vault.seal(me)
    _break_audit(store)
    with pytest.raises((AuditUnavailable, StoreError)):
        vault.unseal(fast_passphrase, me)
    assert vault.sealed  # an unseal that could not be audited did not happen
    _repair_audit(store)
    vault.unseal(fast_passphrase, me)
    assert secrets.get(me, S, "KEY").value.reveal() == CANARY


def test_denials_still_denied_when_audit_is_down(
    vault: Vault, secrets: SecretService, me, store: Store
) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", CANARY)
    _break_audit(store)
    with pytest.raises(PermissionDenied):
        secrets.get(BOB, S, "KEY")
