"""migrate(): versions, dry run, progress, resume without duplicates, a report without values."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keybroker.backends import (
    EncryptedFileStore,
    EnvStore,
    EnvStoreWarning,
    KeyStore,
    MemoryStore,
    NativeStore,
    migrate,
)
from keybroker.core import ManualClock, Scope, SecretService
from keybroker.errors import AuthenticationError, InvalidInput, InvalidName, PermissionDenied, StoreError


def seed(src: MemoryStore, n: int = 10) -> None:
    for i in range(n):
        src.put(f"S{i:02d}", f"v{i}-1")
        src.put(f"S{i:02d}", f"v{i}-2")
    src.put("S00", "v0-pending", label="pending")


def history(store: KeyStore, name: str) -> list[str]:
    return [store.get(name, version=v.version).reveal() for v in store.versions(name) if v.readable]


def test_copies_versions_and_pending(clock: ManualClock) -> None:
    src, dst = MemoryStore("src", clock), MemoryStore("dst", clock)
    seed(src)
    events: list[tuple[int, int, str]] = []
    report = migrate(src, dst, progress=lambda d, t, n: events.append((d, t, n)))
    assert report.ok
    assert len(report.copied) == 10
    assert report.versions_written == 21
    assert history(dst, "S03") == ["v3-1", "v3-2"]
    assert dst.get("S03", label="previous").reveal() == "v3-1"
    assert dst.get("S00").reveal() == "v0-2"
    assert dst.get("S00", label="pending").reveal() == "v0-pending"
    assert events[0] == (0, 10, "") and events[-1][:2] == (10, 10)
    # nothing changed at the source
    assert history(src, "S03") == ["v3-1", "v3-2"]
    # and a second run is a no-op
    again = migrate(src, dst)
    assert len(again.copied) == 0 and len(again.skipped) == 10 and again.ok
    assert history(dst, "S03") == ["v3-1", "v3-2"]


def test_current_only(clock: ManualClock) -> None:
    src, dst = MemoryStore("src", clock), MemoryStore("dst", clock)
    seed(src, 3)
    report = migrate(src, dst, with_versions=False)
    assert report.versions_written == 3
    assert history(dst, "S01") == ["v1-2"]


def test_dry_run_writes_nothing(clock: ManualClock, tmp_path: Path) -> None:
    src, dst = MemoryStore("src", clock), MemoryStore("dst", clock)
    seed(src, 4)
    state = tmp_path / "state.json"
    report = migrate(src, dst, dry_run=True, state_file=state)
    assert report.dry_run and [i.status for i in report.items] == ["would-copy"] * 4
    assert report.versions_written == 9
    assert dst.list() == [] and not state.exists()


def test_report_never_holds_values(clock: ManualClock) -> None:
    src = MemoryStore("src", clock)
    src.put("GOOD", "canary-good-value")
    src.put("BAD", "canary-bad-value")

    class Picky(MemoryStore):
        def put(self, name: str, value: Any, *, label: str = "current") -> str:
            if name == "BAD":
                raise InvalidName(f"the target does not accept {name!r}")
            return super().put(name, value, label=label)

    picky = Picky("picky", clock)
    report = migrate(src, picky)
    assert [i.name for i in report.copied] == ["GOOD"]
    assert [(i.name, i.reason.split(":")[0]) for i in report.failed] == [
        ("BAD", "writing to the target after 0 version(s)")
    ]
    assert "invalid_name" in report.failed[0].reason
    text = json.dumps(report.to_dict())
    assert "canary" not in text
    assert not report.ok


def test_resume_after_target_failure_without_duplicates(
    clock: ManualClock, tmp_path: Path, faulty: Callable[[KeyStore], Any]
) -> None:
    """The target dies after some writes; the last write was applied but looked failed (a
    timeout). The resumed run finishes and every version is there exactly once."""
    src = MemoryStore("src", clock)
    seed(src, 10)
    dst_inner = MemoryStore("dst", clock)
    dst = faulty(dst_inner)
    dst.fail_put_after(7, StoreError("connection reset"), applied=True)
    state = tmp_path / "state.json"
    first = migrate(src, dst, state_file=state)
    assert first.interrupted and "store_unavailable" in first.interrupted
    assert not first.ok
    assert len(first.failed) == 1
    done = json.loads(state.read_text())["done"]
    assert 0 < len(done) < 10
    dst.heal()
    second = migrate(src, dst, state_file=state)
    assert second.ok, second.to_dict()
    assert {i.name for i in second.skipped} >= set(done)
    for i in range(10):
        name = f"S{i:02d}"
        assert history(dst_inner, name) == history(src, name), name
    assert dst_inner.get("S00", label="pending").reveal() == "v0-pending"


def test_resume_without_state_file_is_still_idempotent(
    clock: ManualClock, faulty: Callable[[KeyStore], Any]
) -> None:
    src = MemoryStore("src", clock)
    seed(src, 5)
    inner = MemoryStore("dst", clock)
    dst = faulty(inner)
    dst.fail_put_after(4, StoreError("gone"), applied=True)
    assert migrate(src, dst).interrupted
    dst.heal()
    assert migrate(src, dst).ok
    for i in range(5):
        assert history(inner, f"S{i:02d}") == history(src, f"S{i:02d}")


def test_auth_failure_stops_the_run(clock: ManualClock, faulty: Callable[[KeyStore], Any]) -> None:
    src = MemoryStore("src", clock)
    seed(src, 3)
    dst = faulty(MemoryStore("dst", clock))
    dst.fail_put_after(0, AuthenticationError("token expired"), applied=False)
    report = migrate(src, dst)
    assert report.interrupted and "unauthenticated" in report.interrupted
    assert len(report.items) == 1


def test_permission_denied_on_one_secret_goes_on(clock: ManualClock) -> None:
    src = MemoryStore("src", clock)
    seed(src, 3)

    class NoS01(MemoryStore):
        def put(self, name: str, value: Any, *, label: str = "current") -> str:
            if name == "S01":
                raise PermissionDenied("not you")
            return super().put(name, value, label=label)

    tgt = NoS01("dst", clock)
    report = migrate(src, tgt)
    assert [i.name for i in report.failed] == ["S01"]
    assert report.interrupted is None
    assert tgt.list() == ["S00", "S02"]


def test_target_without_pending_stage_gets_a_note(clock: ManualClock, tmp_path: Path) -> None:
    src = MemoryStore("src", clock)
    src.put("K", "cur")
    src.put("K", "next", label="pending")

    class NoPending(MemoryStore):
        from keybroker.backends import StoreCapabilities

        capabilities = StoreCapabilities(labels=frozenset({"current"}))

    dst = NoPending("dst", clock)
    report = migrate(src, dst)
    assert report.copied[0].reason.startswith("pending version not copied")
    assert history(dst, "K") == ["cur"]  # the pending value was not made current


def test_guards(clock: ManualClock, tmp_path: Path) -> None:
    src, dst = MemoryStore("src", clock), MemoryStore("dst", clock)
    with pytest.warns(EnvStoreWarning):
        env = EnvStore("X_", environ={})
    with pytest.raises(InvalidInput):
        migrate(src, env)
    with pytest.raises(InvalidInput):
        migrate(src, src)
    state = tmp_path / "s.json"
    src.put("A", "a")
    migrate(src, dst, state_file=state)
    with pytest.raises(InvalidInput, match="another migration"):
        migrate(src, MemoryStore("elsewhere", clock), state_file=state)
    state.write_text("{broken")
    with pytest.raises(InvalidInput):
        migrate(src, dst, state_file=state)


def test_env_to_file_to_native_and_back(
    secrets: SecretService, me: Any, tmp_path: Path, raw_root: Any, clock: ManualClock
) -> None:
    """The whole path a team takes: .env-style variables -> portable file -> keybroker -> file."""
    with pytest.warns(EnvStoreWarning):
        env = EnvStore("APP_", environ={"APP_OPENAI_API_KEY": "sk-1", "APP_DB_URL": "pg://x"})
    f1 = EncryptedFileStore(tmp_path / "a.kbf", raw_root, clock=clock)
    assert migrate(env, f1).ok
    native = NativeStore(secrets, me, Scope("default", "dev"))
    assert migrate(f1, native).ok
    assert native.get("OPENAI_API_KEY").reveal() == "sk-1"
    f1.put("OPENAI_API_KEY", "sk-2")
    r = migrate(f1, native)
    assert [i.name for i in r.copied] == ["OPENAI_API_KEY"]
    assert history(native, "OPENAI_API_KEY") == ["sk-1", "sk-2"]
    f2 = EncryptedFileStore(tmp_path / "b.kbf", raw_root, clock=clock)
    assert migrate(native, f2).ok
    assert history(f2, "OPENAI_API_KEY") == ["sk-1", "sk-2"]
    # audited in keybroker: the writes of the migration are in the hash-chained log
    writes = [e for e in secrets.audit.iter_entries(action="secret.write")]
    assert len(writes) == 3
