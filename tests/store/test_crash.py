"""Crash test: a writer killed with SIGKILL mid-stream loses no acknowledged write, and the
audit chain still verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from keybroker.core import KeyFileRoot, ManualClock, Scope, SecretService, Vault, local_principal
from keybroker.store import Store, tables

ACKS_BEFORE_KILL = 300

WRITER = textwrap.dedent(
    """
    import secrets, sys
    from pathlib import Path
    from keybroker.core import KeyFileRoot, Scope, SecretService, Vault, local_principal
    from keybroker.store import Store

    url, keyfile = sys.argv[1], sys.argv[2]
    me = local_principal("crash-writer")
    vault = Vault(Store(url))
    vault.unseal(KeyFileRoot(Path(keyfile)), me)
    svc = SecretService(vault)
    scope = Scope()
    i = 0
    while True:
        value = f"value-{i}-{secrets.token_hex(12)}"
        if i >= 130 and i % 10 == 5:  # some rotations too: pending versions are writes like any other
            name = f"K{i % 41}"
            meta = svc.rotate(me, scope, name, value)
        else:
            name = f"K{i % 41}" if i % 3 else f"app/one-{i}"
            meta = svc.put(me, scope, name, value)
        # put() has returned: the version is committed. Only now is it acknowledged.
        print(name, meta.latest_version, value, flush=True)
        i += 1
    """
)


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_write(store_url: str, tmp_path: Path) -> None:
    keyfile = tmp_path / "root.key"
    me = local_principal("test")
    setup = Store(store_url)
    Vault(setup, ManualClock()).initialize(KeyFileRoot(keyfile), me)
    setup.dispose()

    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url, str(keyfile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[tuple[str, int, str]] = []
    deadline = time.monotonic() + 120
    try:
        assert child.stdout is not None
        while len(acks) < ACKS_BEFORE_KILL:
            line = child.stdout.readline()
            if not line:
                pytest.fail(
                    f"the writer stopped early: {child.wait()} {child.stderr.read() if child.stderr else ''}"
                )
            name, version, value = line.split()
            acks.append((name, int(version), value))
            assert time.monotonic() < deadline, "the writer is too slow"
        os.kill(child.pid, signal.SIGKILL)
        # lines already written before the kill are acknowledged writes too
        for line in child.stdout:
            if line.endswith("\n"):
                name, version, value = line.split()
                acks.append((name, int(version), value))
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for f in (child.stdout, child.stderr):
            if f:
                f.close()
    assert child.returncode == -signal.SIGKILL

    store = Store(store_url)
    try:
        vault = Vault(store, ManualClock())
        vault.unseal(KeyFileRoot(keyfile), me)
        svc = SecretService(vault)
        for name, version, value in acks:
            assert svc.get(me, Scope(), name, version=version).value.reveal() == value, (name, version)
        last: dict[str, int] = {}
        for name, version, _ in acks:
            last[name] = version
        for name, version in last.items():
            assert svc.describe(me, Scope(), name).latest_version >= version
        with store.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(tables.secret_versions)).scalar_one()
        # at most the one write in flight when the process died committed without its ack
        assert len(acks) <= stored <= len(acks) + 1
        result = vault.audit.verify()
        assert result.ok, result
        writes = [e for e in vault.audit.iter_entries(actor=local_principal("crash-writer").label)]
        assert len([e for e in writes if e.action in ("secret.write", "secret.rotate")]) == stored
        if store.dialect == "sqlite":
            with store.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    finally:
        store.dispose()
