"""Group commit of read audit records: concurrent readers share one durable transaction, and
nobody gets a value whose record was not committed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from keybroker.core import Scope, SecretService
from keybroker.errors import AuditUnavailable
from keybroker.store import tables

S = Scope()


def test_concurrent_reads_each_get_one_record_and_the_chain_verifies(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        secrets.put(me, S, f"K{i}", f"value-{i}")
    before = secrets.vault.audit.verify().checked
    start = threading.Barrier(16)

    def read(i: int) -> str:
        start.wait()
        return secrets.get(me, S, f"K{i % 8}").value.reveal()

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(read, range(64)))
    assert got == [f"value-{i % 8}" for i in range(64)]
    result = secrets.vault.audit.verify()
    assert result.ok
    reads = [e for e in secrets.vault.audit.iter_entries(action="secret.read")]
    assert len(reads) == 64 and result.checked == before + 64
    # every read record names the version it covered and carries the value's HMAC
    kr = secrets.vault.keyring()
    for e in reads:
        i = int(e.target.rsplit("K", 1)[1])
        assert e.version == 1 and e.value_hmac == kr.audit_hmac(f"value-{i}".encode())


def test_a_failed_group_commit_fails_every_reader_of_the_batch(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "K", "v")
    store = secrets.store
    with store.engine.begin() as c:
        if store.dialect == "sqlite":
            c.exec_driver_sql(
                "CREATE TRIGGER audit_down BEFORE INSERT ON kb_audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit device down'); END"
            )
        else:
            c.exec_driver_sql(
                "CREATE FUNCTION audit_down() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'audit device down'; END $$ LANGUAGE plpgsql"
            )
            c.exec_driver_sql(
                "CREATE TRIGGER audit_down BEFORE INSERT ON kb_audit_log "
                "FOR EACH ROW EXECUTE FUNCTION audit_down()"
            )
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def read(_: int) -> None:
        start.wait()
        try:
            secrets.get(me, S, "K")
            outcomes.append("value")
        except AuditUnavailable:
            outcomes.append("refused")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, range(8)))
    assert outcomes == ["refused"] * 8
    with store.engine.connect() as c:
        n = c.execute(
            sa.select(sa.func.count())
            .select_from(tables.audit_log)
            .where(tables.audit_log.c.action == "secret.read")
        ).scalar_one()
    assert n == 0


@pytest.mark.parametrize("n", [1, 3])
def test_a_read_with_references_commits_all_its_records_together(secrets: SecretService, me, n: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        secrets.put(me, S, f"PART{i}", f"p{i}")
    secrets.put(me, S, "WHOLE", "".join(f"${{PART{i}}}" for i in range(n)))
    assert secrets.get(me, S, "WHOLE").value.reveal() == "".join(f"p{i}" for i in range(n))
    refs = list(secrets.vault.audit.iter_entries(action="secret.read-ref"))
    reads = list(secrets.vault.audit.iter_entries(action="secret.read"))
    assert len(refs) == n and len(reads) == 1
    assert {r.seq for r in refs} == set(range(reads[0].seq + 1, reads[0].seq + 1 + n))
