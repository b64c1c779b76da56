"""Vault lifecycle: init, unseal/seal, idle auto-seal, root-key sources, rekey (KEK rotation)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import pytest
import sqlalchemy as sa
from keyring.backends import fail

from keybroker.core import (
    KeychainRoot,
    KeyFileRoot,
    ManualClock,
    PassphraseRoot,
    RawRoot,
    Scope,
    SecretService,
    Vault,
    local_principal,
)
from keybroker.crypto import Argon2Params
from keybroker.errors import (
    AlreadyInitialized,
    InvalidInput,
    NotInitialized,
    UnsealFailed,
    VaultSealed,
)
from keybroker.store import Store, tables

FAST_KDF = {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}
STATE_TABLES = (
    tables.meta,
    tables.keks,
    tables.orgs,
    tables.projects,
    tables.environments,
    tables.secrets,
    tables.secret_versions,
)


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table that holds vault state (not the audit log)."""
    out = {}
    with store.connect() as conn:
        for t in STATE_TABLES:
            out[t.name] = [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
    return out


def fast(passphrase: str) -> PassphraseRoot:
    return PassphraseRoot(passphrase, Argon2Params(os.urandom(16), **FAST_KDF))


def actions(vault: Vault) -> list[tuple[str, str]]:
    return [(e.action, e.result) for e in vault.audit.iter_entries()]


# ---------------------------------------------------------------- init
def test_initialize_sets_up_an_unsealed_vault(vault: Vault, secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    assert vault.is_initialized()
    assert not vault.sealed
    st = vault.status()
    assert st["initialized"] and not st["sealed"] and st["keks"] == 1 and st["current_kek"] == 1
    assert st["root_kind"] == "passphrase"
    assert [p["environments"] for p in secrets.list_projects(me)] == [["dev", "staging", "prod"]]
    assert actions(vault)[0] == ("vault.init", "ok")
    assert vault.audit.verify().ok


def test_initialize_twice_changes_nothing(
    vault: Vault, store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    secrets = SecretService(vault)
    me = local_principal("test")
    secrets.put(me, Scope(), "KEEP", "kept-value")
    before = snapshot(store)
    head = vault.audit.verify().head_seq
    with pytest.raises(AlreadyInitialized):
        vault.initialize(fast("another passphrase"), me)
    keyfile = tmp_path / "second.key"
    with pytest.raises(AlreadyInitialized):
        Vault(store, clock).initialize(KeyFileRoot(keyfile), me, project="other")
    assert not keyfile.exists()  # no root key was made for a vault that was never created
    assert snapshot(store) == before
    assert vault.audit.verify().head_seq == head
    assert secrets.get(me, Scope(), "KEEP").value.reveal() == "kept-value"


def test_not_initialized(store: Store, clock: ManualClock, fast_passphrase: PassphraseRoot) -> None:
    v = Vault(store, clock)
    assert not v.is_initialized()
    with pytest.raises(NotInitialized):
        v.unseal(fast_passphrase, local_principal("test"))
    with pytest.raises(NotInitialized):
        _ = v.vault_id
    store.migrate()  # schema but no vault yet
    assert not v.is_initialized()
    with pytest.raises(NotInitialized):
        v.unseal(fast_passphrase, local_principal("test"))


def test_initialize_refuses_bad_scope_names(store: Store, clock: ManualClock) -> None:
    v = Vault(store, clock)
    for kw in ({"org": "Bad Org"}, {"project": "../x"}, {"environments": ("dev", "PROD!")}):
        with pytest.raises(InvalidInput):
            v.initialize(RawRoot(os.urandom(32)), local_principal("test"), **kw)  # type: ignore[arg-type]
    assert not v.is_initialized()


# ---------------------------------------------------------------- seal / unseal
def test_seal_and_unseal(vault: Vault, secrets: SecretService, me, fast_passphrase: PassphraseRoot) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, Scope(), "A", "value-a")
    vault.seal(me)
    assert vault.sealed and vault.status()["sealed"]
    with pytest.raises(VaultSealed):
        secrets.get(me, Scope(), "A")
    with pytest.raises(VaultSealed):
        secrets.put(me, Scope(), "B", "value-b")
    with pytest.raises(VaultSealed):
        secrets.rotate(me, Scope(), "A", "value-a2")
    with pytest.raises(VaultSealed):
        vault.rekey(me)
    # metadata needs no key
    assert [m.name for m in secrets.list_secrets(me, Scope())] == ["A"]
    vault.unseal(fast_passphrase, me)
    assert not vault.sealed
    assert secrets.get(me, Scope(), "A").value.reveal() == "value-a"
    assert ("vault.seal", "ok") in actions(vault) and ("vault.unseal", "ok") in actions(vault)
    with pytest.raises(UnsealFailed):
        vault.unseal(PassphraseRoot("nope"), me)
    assert not vault.sealed


def test_wrong_passphrase_changes_nothing(
    vault: Vault,
    store: Store,
    clock: ManualClock,
    secrets: SecretService,
    me,
    fast_passphrase: PassphraseRoot,
) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, Scope(), "A", "value-a")
    vault.seal(me)
    before = snapshot(store)
    wrong = PassphraseRoot("not the passphrase")
    with pytest.raises(UnsealFailed) as info:
        vault.unseal(wrong, me)
    assert info.value.code == "unseal_failed"
    assert vault.sealed
    with pytest.raises(VaultSealed):
        secrets.get(me, Scope(), "A")
    # a fresh process with the wrong passphrase, too
    other = Vault(store, clock)
    with pytest.raises(UnsealFailed):
        other.unseal(wrong, me)
    assert other.sealed
    assert snapshot(store) == before
    assert ("vault.unseal", "denied") in actions(vault)
    assert vault.audit.verify().ok
    vault.unseal(fast_passphrase, me)
    assert secrets.get(me, Scope(), "A").value.reveal() == "value-a"


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(InvalidInput):
        PassphraseRoot("")


def test_tampered_kdf_params_fail_cleanly(vault: Vault, store: Store, clock: ManualClock, me) -> None:  # type: ignore[no-untyped-def]
    # someone lowers the stored Argon2 cost: unsealing refuses instead of deriving a weak key
    with store.begin() as conn:
        conn.execute(
            sa.update(tables.meta)
            .where(tables.meta.c.key == "root_params")
            .values(value=json.dumps({"alg": "argon2id", "m": 8, "p": 1, "salt": "00" * 16, "t": 1}))
        )
    with pytest.raises(UnsealFailed):
        Vault(store, clock).unseal(PassphraseRoot("correct horse battery staple"), me)


# ---------------------------------------------------------------- idle auto-seal
def test_idle_auto_seal(
    vault: Vault, store: Store, clock: ManualClock, me, fast_passphrase: PassphraseRoot
) -> None:  # type: ignore[no-untyped-def]
    SecretService(vault).put(me, Scope(), "A", "value-a")
    v = Vault(store, clock, auto_seal_after=1800)
    s = SecretService(v)
    v.unseal(fast_passphrase, me)
    clock.advance(1799)
    assert s.get(me, Scope(), "A").value.reveal() == "value-a"  # use resets the idle timer
    clock.advance(1799)
    assert not v.sealed
    assert s.get(me, Scope(), "A").value.reveal() == "value-a"
    clock.advance(1800)
    assert v.sealed
    assert v.status()["sealed"]
    with pytest.raises(VaultSealed):
        s.get(me, Scope(), "A")
    with pytest.raises(VaultSealed):
        s.put(me, Scope(), "B", "value-b")
    v.unseal(fast_passphrase, me)
    assert s.get(me, Scope(), "A").value.reveal() == "value-a"


def test_auto_seal_without_use_of_secrets(
    vault: Vault, store: Store, clock: ManualClock, me, fast_passphrase
) -> None:  # type: ignore[no-untyped-def]
    v = Vault(store, clock, auto_seal_after=60)
    v.unseal(fast_passphrase, me)
    clock.advance(59.999)
    assert not v.sealed
    clock.advance(0.001)
    with pytest.raises(VaultSealed):
        v.keyring()
    # auto-seal is off by default
    assert vault.auto_seal_after is None
    clock.advance(days=365)
    assert not vault.sealed


# ---------------------------------------------------------------- root key sources
def test_key_file_root(store: Store, clock: ManualClock, tmp_path: Path, me) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "root.key"
    v = Vault(store, clock)
    v.initialize(KeyFileRoot(path), me)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text().strip())) == 32
    s = SecretService(v)
    s.put(me, Scope(), "A", "value-a")
    v.seal(me)

    fresh = Vault(store, clock)
    fresh.unseal(KeyFileRoot(path), me)
    assert SecretService(fresh).get(me, Scope(), "A").value.reveal() == "value-a"

    before = snapshot(store)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(base64.b64encode(os.urandom(32)).decode())
    garbage = tmp_path / "garbage.key"
    garbage.write_text("this is not base64!")
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(os.urandom(16)).decode())
    for bad in (wrong, garbage, short, tmp_path / "missing.key", tmp_path):
        other = Vault(store, clock)
        with pytest.raises(UnsealFailed):
            other.unseal(KeyFileRoot(bad), me)
        assert other.sealed
    with pytest.raises(UnsealFailed):
        Vault(store, clock).unseal(PassphraseRoot("a passphrase"), me)
    assert snapshot(store) == before


def test_key_file_root_reuses_an_existing_file(store: Store, clock: ManualClock, tmp_path: Path, me) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "root.key"
    key = os.urandom(32)
    path.write_text(base64.b64encode(key).decode() + "\n")
    v = Vault(store, clock)
    v.initialize(KeyFileRoot(path), me)
    v.seal(me)
    Vault(store, clock).unseal(RawRoot(key, kind="keyfile"), me)


def test_raw_root(store: Store, clock: ManualClock, me) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(32)
    v = Vault(store, clock)
    v.initialize(RawRoot(key), me)
    assert v.status()["root_kind"] == "dev-env"
    assert key.hex() not in repr(RawRoot(key))
    SecretService(v).put(me, Scope(), "A", "value-a")
    fresh = Vault(store, clock)
    with pytest.raises(UnsealFailed):
        fresh.unseal(RawRoot(os.urandom(32)), me)
    with pytest.raises(UnsealFailed):
        RawRoot(b"too short")
    fresh.unseal(RawRoot(key), me)
    assert SecretService(fresh).get(me, Scope(), "A").value.reveal() == "value-a"


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An in-memory keyring backend. The test machines have no OS keychain (no Secret Service,
    no macOS Keychain), so this is the legitimate way to exercise keybroker's `keyring` code
    path: `keyring` itself dispatches to whatever backend is set, exactly as on a desktop."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


@pytest.fixture
def memory_keyring():  # type: ignore[no-untyped-def]
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_keychain_root(store: Store, clock: ManualClock, me, memory_keyring: MemoryKeyring) -> None:  # type: ignore[no-untyped-def]
    v = Vault(store, clock)
    vault_id = v.initialize(KeychainRoot(service="kb-test"), me)
    assert list(memory_keyring.store) == [("kb-test", vault_id)]
    assert len(base64.b64decode(memory_keyring.store[("kb-test", vault_id)])) == 32
    SecretService(v).put(me, Scope(), "A", "value-a")
    fresh = Vault(store, clock)
    fresh.unseal(KeychainRoot(service="ignored-the-stored-service-wins"), me)
    assert SecretService(fresh).get(me, Scope(), "A").value.reveal() == "value-a"

    before = snapshot(store)
    memory_keyring.store[("kb-test", vault_id)] = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(UnsealFailed):
        Vault(store, clock).unseal(KeychainRoot(), me)
    memory_keyring.store[("kb-test", vault_id)] = "%%% not base64 %%%"
    with pytest.raises(UnsealFailed):
        Vault(store, clock).unseal(KeychainRoot(), me)
    memory_keyring.store.clear()
    with pytest.raises(UnsealFailed):
        Vault(store, clock).unseal(KeychainRoot(), me)
    assert snapshot(store) == before


def test_keychain_unavailable(store: Store, clock: ManualClock, me) -> None:  # type: ignore[no-untyped-def]
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        v = Vault(store, clock)
        with pytest.raises(UnsealFailed):
            v.initialize(KeychainRoot(), me)
        assert not v.is_initialized()
    finally:
        keyring.set_keyring(previous)


# ---------------------------------------------------------------- rekey
def _versions(store: Store) -> dict[tuple[int, int], tuple[bytes, bytes, int]]:
    sv = tables.secret_versions
    with store.connect() as conn:
        return {
            (r.secret_id, r.version): (bytes(r.ciphertext), bytes(r.wrapped_dek), r.kek_id)
            for r in conn.execute(sa.select(sv).where(sv.c.wrapped_dek.is_not(None)))
        }


def _fill(secrets: SecretService, me, n: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    values = {}
    for i in range(n):
        values[f"S{i}"] = f"value-{i}-{os.urandom(4).hex()}"
        secrets.put(me, Scope(), f"S{i}", values[f"S{i}"])
    return values


def test_rekey(vault: Vault, store: Store, secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    values = _fill(secrets, me, 5)
    secrets.put(me, Scope(), "S0", "second version")
    secrets.destroy(me, Scope(), "S1", [1])
    before = _versions(store)
    assert {k for _, _, k in before.values()} == {1}
    seen: list[tuple[int, int]] = []
    result = vault.rekey(me, progress=lambda done, total: seen.append((done, total)))
    assert result.kek_id == 2 and result.rewrapped == len(before) and not result.resumed
    assert seen[0] == (0, len(before)) and seen[-1] == (len(before), len(before))
    after = _versions(store)
    assert after.keys() == before.keys()
    for key, (ct, wrapped, kek) in after.items():
        assert kek == 2
        assert ct == before[key][0]  # the value ciphertext is never touched
        assert wrapped != before[key][1]  # only the data key is re-wrapped
    with store.connect() as conn:
        keks = {r.id: r.retired_at for r in conn.execute(sa.select(tables.keks))}
        meta = {r.key for r in conn.execute(sa.select(tables.meta))}
    assert keks[1] is not None and keks[2] is None
    assert "rekey_target" not in meta
    assert vault.status()["current_kek"] == 2 and not vault.status()["rekey_in_progress"]
    for name, value in values.items():
        if name not in ("S0", "S1"):
            assert secrets.get(me, Scope(), name).value.reveal() == value
    assert secrets.get(me, Scope(), "S0").value.reveal() == "second version"
    assert secrets.get(me, Scope(), "S0", version=1).value.reveal() == values["S0"]
    # new writes use the new KEK
    secrets.put(me, Scope(), "NEW", "new value")
    assert {k for _, _, k in _versions(store).values()} == {2}
    assert [r for a, r in actions(vault) if a == "vault.rekey"] == ["started", "ok"]
    assert vault.audit.verify().ok


def test_rekey_survives_reseal(
    vault: Vault, store: Store, clock: ManualClock, secrets: SecretService, me, fast_passphrase
) -> None:  # type: ignore[no-untyped-def]
    values = _fill(secrets, me, 3)
    vault.rekey(me)
    vault.rekey(me)
    vault.seal(me)
    fresh = Vault(store, clock)
    fresh.unseal(fast_passphrase, me)
    assert fresh.status()["current_kek"] == 3
    s = SecretService(fresh)
    for name, value in values.items():
        assert s.get(me, Scope(), name).value.reveal() == value


def test_interrupted_rekey_resumes(vault: Vault, store: Store, secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    values = _fill(secrets, me, 7)
    before = _versions(store)
    first = vault.rekey(me, batch=2, stop_after_batches=1)
    assert first.kek_id == 2 and first.rewrapped == 2 and not first.resumed
    mid = _versions(store)
    assert sorted(k for _, _, k in mid.values()) == [1] * 5 + [2] * 2
    assert vault.status()["rekey_in_progress"]
    # reads work mid-rekey, and new writes already use the target KEK
    for name, value in values.items():
        assert secrets.get(me, Scope(), name).value.reveal() == value
    secrets.put(me, Scope(), "DURING", "written mid-rekey")
    assert _versions(store)[max(_versions(store))][2] == 2

    second = vault.rekey(me, batch=2)
    assert second.kek_id == 2 and second.resumed
    assert second.rewrapped == 5
    after = _versions(store)
    assert {k for _, _, k in after.values()} == {2}
    for key in before:
        assert after[key][0] == before[key][0]
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.keks)).scalar_one() == 2
    assert not vault.status()["rekey_in_progress"]
    for name, value in values.items():
        assert secrets.get(me, Scope(), name).value.reveal() == value
    assert vault.audit.verify().ok


def test_interrupted_rekey_resumes_in_a_new_process(
    vault: Vault, store: Store, clock: ManualClock, secrets: SecretService, me, fast_passphrase
) -> None:  # type: ignore[no-untyped-def]
    values = _fill(secrets, me, 7)
    first = vault.rekey(me, batch=2, stop_after_batches=1)
    del vault  # the process dies here
    fresh_store = Store(store.url)
    try:
        fresh = Vault(fresh_store, clock)
        assert fresh.sealed
        fresh.unseal(fast_passphrase, me)
        assert fresh.status()["current_kek"] == first.kek_id
        s = SecretService(fresh)
        for name, value in values.items():
            assert s.get(me, Scope(), name).value.reveal() == value
        second = fresh.rekey(me, batch=2)
        assert second.kek_id == first.kek_id and second.resumed and second.rewrapped == 5
        assert {k for _, _, k in _versions(fresh_store).values()} == {first.kek_id}
        fresh.seal(me)
        fresh.unseal(fast_passphrase, me)
        for name, value in values.items():
            assert s.get(me, Scope(), name).value.reveal() == value
        assert fresh.audit.verify().ok
    finally:
        fresh_store.dispose()


def test_rekey_empty_vault(vault: Vault, me) -> None:  # type: ignore[no-untyped-def]
    r = vault.rekey(me)
    assert r.kek_id == 2 and r.rewrapped == 0 and not r.resumed


def test_other_replica_reads_after_rekey(
    vault: Vault, store: Store, clock: ManualClock, secrets: SecretService, me, fast_passphrase
) -> None:  # type: ignore[no-untyped-def]
    """Two keybroker processes on one database: a rekey by one must not break reads on the other."""
    values = _fill(secrets, me, 3)
    replica = Vault(Store(store.url), clock)
    try:
        replica.unseal(fast_passphrase, me)
        vault.rekey(me)
        s = SecretService(replica)
        for name, value in values.items():
            assert s.get(me, Scope(), name).value.reveal() == value
        secrets.put(me, Scope(), "AFTER", "written after the rekey")
        assert s.get(me, Scope(), "AFTER").value.reveal() == "written after the rekey"
    finally:
        replica.store.dispose()
