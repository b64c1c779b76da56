"""Secret lifecycle: names, immutable versions, check-and-set, labels and rotation, rollback,
delete/undelete, destroy, purge, metadata, pruning, projects, and corrupted rows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.core import ManualClock, Scope, SecretService, Vault, check_secret_name
from keybroker.errors import (
    AlreadyExists,
    CasMismatch,
    DecryptionError,
    EnvironmentNotFound,
    InvalidInput,
    InvalidName,
    ProjectNotFound,
    SecretDeleted,
    SecretNotFound,
    VersionNotFound,
)
from keybroker.store import Store, tables

S = Scope()


def value(secrets: SecretService, me: Any, name: str, **kw: Any) -> str:
    return secrets.get(me, kw.pop("scope", S), name, **kw).value.reveal()


def version_rows(store: Store, name: str) -> dict[int, dict[str, Any]]:
    s, sv = tables.secrets, tables.secret_versions
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(sv).join(s, s.c.id == sv.c.secret_id).where(s.c.name == name).order_by(sv.c.version)
        ).all()
    return {int(r.version): dict(r._mapping) for r in rows}


# ---------------------------------------------------------------- names
VALID = [
    "OPENAI_API_KEY",
    "_private",
    "a",
    "x1",
    "openai/api_key",
    "openai/api-key",
    "a/b/c/d",
    "team_1/svc-2/KEY_3",
    "A" * 256,
    "/".join(["ab"] * 85) + "/a",
]
INVALID = [
    "",
    "../x",
    "x/..",
    "a//b",
    "/a",
    "a/",
    "./a",
    "A" * 257,
    "1ABC",
    "-a/b",
    "a b",
    "KEY=VALUE",
    "KEY\n",
    "KEY\x00",
    "ключ",
    "CLÉ",
    "KEY\u200b",
    "café/key",
    "a\\b",
    "a.b",
    "${X}",
    "my-key",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert check_secret_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        check_secret_name(name)
    assert info.value.code == "invalid_name" and info.value.status == 400


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_names_are_ascii_env_or_path_style(name: str) -> None:
    import re

    ok = len(name) <= 256 and bool(
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name, flags=re.ASCII)
        or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_][A-Za-z0-9_-]*)+", name, flags=re.ASCII)
    )
    if ok:
        assert check_secret_name(name) == name
    else:
        with pytest.raises(InvalidName):
            check_secret_name(name)


def test_invalid_names_are_refused_everywhere(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    for name in ("../x", "a//b", "/a", "", "A" * 257, "ключ"):
        with pytest.raises(InvalidName):
            secrets.put(me, S, name, "v")
        with pytest.raises(InvalidName):
            secrets.get(me, S, name)
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.secrets)).scalar_one() == 0


def test_valid_names_round_trip(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i, name in enumerate(VALID):
        secrets.put(me, S, name, f"value-{i}")
    for i, name in enumerate(VALID):
        assert value(secrets, me, name) == f"value-{i}"
    assert sorted(m.name for m in secrets.list_secrets(me, S)) == sorted(VALID)
    assert [m.name for m in secrets.list_secrets(me, S, prefix="openai/")] == [
        "openai/api-key",
        "openai/api_key",
    ]


# ---------------------------------------------------------------- versions
def test_versions_are_immutable(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    m1 = secrets.put(me, S, "KEY", "v1")
    assert (m1.latest_version, m1.current_version, m1.previous_version) == (1, 1, None)
    row1 = version_rows(store, "KEY")[1]
    m2 = secrets.put(me, S, "KEY", "v2")
    m3 = secrets.put(me, S, "KEY", b"\x00\xffbinary")
    assert (m2.latest_version, m3.latest_version, m3.current_version, m3.previous_version) == (2, 3, 3, 2)
    assert version_rows(store, "KEY")[1] == row1  # earlier rows never change
    assert value(secrets, me, "KEY", version=1) == "v1"
    assert value(secrets, me, "KEY", version=2) == "v2"
    read = secrets.get(me, S, "KEY")
    assert read.version == 3 and read.value.reveal_bytes() == b"\x00\xffbinary"
    assert [h.version for h in secrets.history(me, S, "KEY")] == [1, 2, 3]
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", version=4)
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", version=0)
    with pytest.raises(SecretNotFound):
        secrets.get(me, S, "MISSING")
    with pytest.raises(InvalidInput):
        secrets.put(me, S, "KEY", 12345)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        secrets.get(me, S, "KEY", label="latest")


def test_empty_and_large_values(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "EMPTY", "")
    big = "x" * 200_000
    secrets.put(me, S, "BIG", big)
    assert value(secrets, me, "EMPTY") == ""
    assert value(secrets, me, "BIG") == big


# ---------------------------------------------------------------- check-and-set
def test_cas(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", cas=0)
    with pytest.raises(CasMismatch) as info:
        secrets.put(me, S, "KEY", "clobber", cas=0)
    assert info.value.code == "cas_mismatch" and info.value.status == 409
    assert info.value.details == {"expected": 0, "actual": 1}
    before = version_rows(store, "KEY")
    for wrong in (2, 5, -1):
        with pytest.raises(CasMismatch):
            secrets.put(me, S, "KEY", "clobber", cas=wrong)
    assert version_rows(store, "KEY") == before
    assert value(secrets, me, "KEY") == "v1"
    assert secrets.describe(me, S, "KEY").latest_version == 1
    assert secrets.put(me, S, "KEY", "v2", cas=1).latest_version == 2
    with pytest.raises(CasMismatch):
        secrets.put(me, S, "KEY", "stale writer", cas=1)
    assert value(secrets, me, "KEY") == "v2"
    with pytest.raises(CasMismatch):
        secrets.put(me, S, "NEW", "v", cas=3)
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "NEW")


def test_cas_required(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", cas_required=True)
    with pytest.raises(CasMismatch):
        secrets.put(me, S, "KEY", "no cas")
    assert value(secrets, me, "KEY") == "v1"
    secrets.put(me, S, "KEY", "v2", cas=1)
    assert value(secrets, me, "KEY") == "v2"
    assert secrets.describe(me, S, "KEY").cas_required


# ---------------------------------------------------------------- labels, rotation
def test_rotate_and_promote(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "old-key")
    m = secrets.rotate(me, S, "KEY", "new-key")
    assert (m.current_version, m.pending_version, m.latest_version) == (1, 2, 2)
    assert value(secrets, me, "KEY") == "old-key"  # current keeps working
    assert value(secrets, me, "KEY", label="pending") == "new-key"
    assert {h.version: h.labels for h in secrets.history(me, S, "KEY")} == {1: ("current",), 2: ("pending",)}
    m = secrets.promote(me, S, "KEY")
    assert (m.current_version, m.previous_version, m.pending_version) == (2, 1, None)
    # grace period: both keys readable
    assert value(secrets, me, "KEY") == "new-key"
    assert value(secrets, me, "KEY", label="current") == "new-key"
    assert value(secrets, me, "KEY", label="previous") == "old-key"
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", label="pending")
    with pytest.raises(VersionNotFound):
        secrets.promote(me, S, "KEY")
    assert {h.version: h.labels for h in secrets.history(me, S, "KEY")} == {1: ("previous",), 2: ("current",)}


def test_promote_without_pending(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    with pytest.raises(VersionNotFound):
        secrets.promote(me, S, "KEY")
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", label="previous")
    assert value(secrets, me, "KEY") == "v1"
    with pytest.raises(SecretNotFound):
        secrets.rotate(me, S, "NOPE", "v")
    with pytest.raises(SecretNotFound):
        secrets.promote(me, S, "NOPE")


def test_plain_write_during_rotation_drops_pending(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.rotate(me, S, "KEY", "v2-pending")
    m = secrets.put(me, S, "KEY", "v3")
    assert (m.current_version, m.previous_version, m.pending_version) == (3, 1, None)
    assert value(secrets, me, "KEY", version=2) == "v2-pending"


# ---------------------------------------------------------------- rollback
def test_rollback_writes_a_new_version(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.put(me, S, "KEY", "v2")
    m = secrets.rollback(me, S, "KEY", 1)
    assert (m.latest_version, m.current_version, m.previous_version) == (3, 3, 2)
    assert value(secrets, me, "KEY") == "v1"
    assert value(secrets, me, "KEY", version=2) == "v2"
    with pytest.raises(VersionNotFound):
        secrets.rollback(me, S, "KEY", 9)
    assert secrets.describe(me, S, "KEY").latest_version == 3


def test_rollback_keeps_the_raw_template(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "BASE", "base-1")
    secrets.put(me, S, "URL", "https://x/${BASE}")
    secrets.put(me, S, "URL", "static")
    secrets.rollback(me, S, "URL", 1)
    assert secrets.get(me, S, "URL", resolve=False).value.reveal() == "https://x/${BASE}"
    secrets.put(me, S, "BASE", "base-2")
    assert value(secrets, me, "URL") == "https://x/base-2"


def test_rollback_of_a_cas_required_secret(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", cas_required=True)
    secrets.put(me, S, "KEY", "v2", cas=1)
    secrets.rollback(me, S, "KEY", 1)
    assert value(secrets, me, "KEY") == "v1"


# ---------------------------------------------------------------- delete, undelete, destroy, purge
def test_delete_and_undelete_secret(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.delete(me, S, "KEY")
    with pytest.raises(SecretDeleted) as info:
        secrets.get(me, S, "KEY")
    assert info.value.code == "secret_deleted"
    with pytest.raises(SecretDeleted):
        secrets.put(me, S, "KEY", "v2")
    with pytest.raises(SecretDeleted):
        secrets.rotate(me, S, "KEY", "v2")
    assert secrets.list_secrets(me, S) == []
    assert [m.name for m in secrets.list_secrets(me, S, include_deleted=True)] == ["KEY"]
    assert secrets.describe(me, S, "KEY").deleted_at is not None
    with pytest.raises(InvalidInput):
        secrets.delete(me, S, "KEY")
    secrets.undelete(me, S, "KEY")
    with pytest.raises(InvalidInput):
        secrets.undelete(me, S, "KEY")
    assert value(secrets, me, "KEY") == "v1"
    assert secrets.describe(me, S, "KEY").latest_version == 1
    with pytest.raises(SecretNotFound):
        secrets.delete(me, S, "NOPE")


def test_delete_and_undelete_versions(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for v in ("v1", "v2", "v3"):
        secrets.put(me, S, "KEY", v)
    secrets.delete(me, S, "KEY", versions=[1, 2])
    for v in (1, 2):
        with pytest.raises(VersionNotFound) as info:
            secrets.get(me, S, "KEY", version=v)
        assert info.value.details["state"] == "deleted"
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", label="previous")
    assert value(secrets, me, "KEY") == "v3"
    assert [h.state for h in secrets.history(me, S, "KEY")] == ["deleted", "deleted", "active"]
    with pytest.raises(VersionNotFound):
        secrets.delete(me, S, "KEY", versions=[7])
    secrets.undelete(me, S, "KEY", versions=[1])
    assert value(secrets, me, "KEY", version=1) == "v1"
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", version=2)


def test_destroy(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.put(me, S, "KEY", "v2")
    secrets.destroy(me, S, "KEY", [1])
    rows = version_rows(store, "KEY")
    assert rows[1]["ciphertext"] is None and rows[1]["wrapped_dek"] is None and rows[1]["kek_id"] is None
    assert rows[1]["destroyed_at"] is not None
    assert rows[2]["ciphertext"] is not None
    with pytest.raises(VersionNotFound) as info:
        secrets.get(me, S, "KEY", version=1)
    assert info.value.details["state"] == "destroyed"
    with pytest.raises(VersionNotFound):
        secrets.rollback(me, S, "KEY", 1)
    secrets.undelete(me, S, "KEY", versions=[1])  # destroyed stays destroyed
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", version=1)
    assert [h.state for h in secrets.history(me, S, "KEY")] == ["destroyed", "active"]
    assert value(secrets, me, "KEY") == "v2"
    secrets.destroy(me, S, "KEY", [2])
    with pytest.raises(VersionNotFound) as info:
        secrets.get(me, S, "KEY")
    assert info.value.details["state"] == "destroyed"
    with pytest.raises(InvalidInput):
        secrets.destroy(me, S, "KEY", [])
    with pytest.raises(VersionNotFound):
        secrets.destroy(me, S, "KEY", [3])
    # a soft-deleted secret can still be destroyed
    secrets.put(me, S, "KEY2", "v1")
    secrets.delete(me, S, "KEY2")
    secrets.destroy(me, S, "KEY2", [1])
    assert version_rows(store, "KEY2")[1]["ciphertext"] is None


def test_purge(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.put(me, S, "KEY", "v2")
    secrets.put(me, S, "OTHER", "o")
    secrets.purge(me, S, "KEY")
    assert version_rows(store, "KEY") == {}
    with pytest.raises(SecretNotFound):
        secrets.get(me, S, "KEY")
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "KEY")
    with pytest.raises(SecretNotFound):
        secrets.purge(me, S, "KEY")
    assert value(secrets, me, "OTHER") == "o"
    m = secrets.put(me, S, "KEY", "fresh", cas=0)  # the name is free again
    assert m.latest_version == 1
    assert value(secrets, me, "KEY") == "fresh"


# ---------------------------------------------------------------- metadata
def test_metadata_fields(secrets: SecretService, me, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    expires = clock.now() + timedelta(days=30)
    m = secrets.put(
        me,
        S,
        "OPENAI_API_KEY",
        "sk-1",
        description="prod key",
        tags=["llm", "billing"],
        custom_metadata={"team": "ml"},
        owner="alice@example.com",
        risk="high",
        provider="openai",
        expires_at=expires,
        rotation_period_s=86400 * 7,
    )
    assert (
        m.description == "prod key" and m.tags == ["llm", "billing"] and m.custom_metadata == {"team": "ml"}
    )
    assert m.owner == "alice@example.com" and m.risk == "high" and m.provider == "openai"
    assert m.expires_at == expires and m.rotation_period_s == 604800 and not m.proxy_only
    assert not m.expired and not m.rotation_due
    d = secrets.describe(me, S, "OPENAI_API_KEY")
    assert d == m
    assert d.to_dict()["expires_at"] == expires.isoformat()
    # defaults
    plain = secrets.put(me, S, "PLAIN", "x")
    assert (plain.risk, plain.provider, plain.tags, plain.owner, plain.expires_at) == (
        "low",
        "generic",
        [],
        "",
        None,
    )
    # a later write without metadata keeps it; an update changes only what is named
    secrets.put(me, S, "OPENAI_API_KEY", "sk-2")
    assert secrets.describe(me, S, "OPENAI_API_KEY").tags == ["llm", "billing"]
    u = secrets.update_metadata(me, S, "OPENAI_API_KEY", owner="bob@example.com", tags=[])
    assert u.owner == "bob@example.com" and u.tags == [] and u.risk == "high"
    assert value(secrets, me, "OPENAI_API_KEY") == "sk-2"
    assert secrets.update_metadata(me, S, "OPENAI_API_KEY", proxy_only=True).proxy_only


def test_expiry_and_rotation_due(secrets: SecretService, me, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", expires_at=clock.now() + timedelta(hours=1), rotation_period_s=86400)
    clock.advance(3599)
    m = secrets.describe(me, S, "KEY")
    assert not m.expired and not m.rotation_due
    clock.advance(1)
    m = secrets.describe(me, S, "KEY")
    assert m.expired and not m.rotation_due
    clock.advance(86400)
    m = secrets.describe(me, S, "KEY")
    assert m.expired and m.rotation_due
    assert [x.rotation_due for x in secrets.list_secrets(me, S)] == [True]
    secrets.rotate(me, S, "KEY", "v2")
    secrets.promote(me, S, "KEY")
    m = secrets.describe(me, S, "KEY")
    assert not m.rotation_due


def test_rotation_due_is_not_reset_by_a_metadata_edit(secrets: SecretService, me, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", rotation_period_s=86400)
    clock.advance(days=2)
    assert secrets.describe(me, S, "KEY").rotation_due
    secrets.update_metadata(me, S, "KEY", description="touched, not rotated")
    assert secrets.describe(me, S, "KEY").rotation_due
    # a pending version is not a rotation yet; promoting it is
    secrets.rotate(me, S, "KEY", "v2")
    assert secrets.describe(me, S, "KEY").rotation_due
    secrets.promote(me, S, "KEY")
    assert not secrets.describe(me, S, "KEY").rotation_due
    clock.advance(days=2)
    secrets.put(me, S, "KEY", "v3")
    assert not secrets.describe(me, S, "KEY").rotation_due


BAD_METADATA: list[dict[str, Any]] = [
    {"risk": "extreme"},
    {"risk": "HIGH"},
    {"tags": "not-a-list"},
    {"tags": [1, 2]},
    {"custom_metadata": {"k": 1}},
    {"expires_at": "2030-01-01"},
    {"rotation_period_s": -5},
    {"max_versions": "3"},
    {"provider": "Open AI"},
    {"provider": "x" * 40},
    {"colour": "blue"},
]


def test_metadata_validation(secrets: SecretService, me, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v")
    for bad in BAD_METADATA:
        with pytest.raises(InvalidInput):
            secrets.put(me, S, "NEW", "v", **bad)
        with pytest.raises(SecretNotFound):
            secrets.describe(me, S, "NEW")
        with pytest.raises(InvalidInput):
            secrets.put(me, S, "KEY", "v2", **bad)
        with pytest.raises(InvalidInput):
            secrets.update_metadata(me, S, "KEY", **bad)
    m = secrets.describe(me, S, "KEY")
    assert (m.risk, m.latest_version, m.provider, m.tags) == ("low", 1, "generic", [])
    with pytest.raises(InvalidInput):
        secrets.put(me, S, "KEY", "v", expires_at=clock.now().replace(tzinfo=None))


# ---------------------------------------------------------------- max_versions pruning
def test_max_versions_prunes_but_keeps_labelled(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1", max_versions=2)
    secrets.put(me, S, "KEY", "v2")
    secrets.put(me, S, "KEY", "v3")
    assert [h.version for h in secrets.history(me, S, "KEY")] == [2, 3]
    with pytest.raises(VersionNotFound):
        secrets.get(me, S, "KEY", version=1)
    secrets.rotate(me, S, "KEY", "v4")  # pending=4, current=3, previous=2: all kept
    assert [h.version for h in secrets.history(me, S, "KEY")] == [2, 3, 4]
    assert value(secrets, me, "KEY", label="previous") == "v2"
    assert value(secrets, me, "KEY") == "v3"
    assert value(secrets, me, "KEY", label="pending") == "v4"
    secrets.promote(me, S, "KEY")
    secrets.put(me, S, "KEY", "v5")  # current=5, previous=4
    assert [h.version for h in secrets.history(me, S, "KEY")] == [4, 5]
    # max_versions=0 (the default) keeps everything
    for i in range(6):
        secrets.put(me, S, "ALL", f"v{i}")
    assert len(secrets.history(me, S, "ALL")) == 6


# ---------------------------------------------------------------- projects and environments
def test_projects_and_environments(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.create_project(me, "billing", environments=["dev", "prod"], description="money")
    with pytest.raises(AlreadyExists):
        secrets.create_project(me, "billing")
    with pytest.raises(AlreadyExists):
        secrets.create_project(me, "default")
    secrets.create_environment(me, "billing", "qa")
    with pytest.raises(AlreadyExists):
        secrets.create_environment(me, "billing", "qa")
    with pytest.raises(ProjectNotFound):
        secrets.create_environment(me, "nope", "qa")
    with pytest.raises(InvalidName):
        secrets.create_project(me, "Bad Name")
    with pytest.raises(InvalidName):
        secrets.create_environment(me, "billing", "../etc")
    projects = {p["name"]: p for p in secrets.list_projects(me)}
    assert projects["billing"]["environments"] == ["dev", "prod", "qa"]
    assert projects["billing"]["description"] == "money"

    # the same name in different scopes is a different secret
    secrets.put(me, Scope("billing", "qa"), "KEY", "billing-qa")
    secrets.put(me, Scope("billing", "prod"), "KEY", "billing-prod")
    secrets.put(me, S, "KEY", "default-dev")
    assert value(secrets, me, "KEY", scope=Scope("billing", "qa")) == "billing-qa"
    assert value(secrets, me, "KEY", scope=Scope("billing", "prod")) == "billing-prod"
    assert value(secrets, me, "KEY") == "default-dev"
    with pytest.raises(SecretNotFound):
        secrets.get(me, Scope("billing", "dev"), "KEY")
    with pytest.raises(ProjectNotFound):
        secrets.put(me, Scope("nope", "dev"), "KEY", "v")
    with pytest.raises(EnvironmentNotFound):
        secrets.put(me, Scope("billing", "staging"), "KEY", "v")
    with pytest.raises(ProjectNotFound):
        secrets.get(me, Scope("billing", "dev", org="other-org"), "KEY")
    with pytest.raises(EnvironmentNotFound):
        secrets.list_secrets(me, Scope("billing", "staging"))


def test_projects_in_another_org(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.create_project(me, "default", org="acme", environments=["prod"])
    secrets.put(me, Scope("default", "prod", "acme"), "KEY", "acme")
    with pytest.raises(EnvironmentNotFound):
        secrets.get(me, Scope("default", "dev", "acme"), "KEY")
    assert value(secrets, me, "KEY", scope=Scope("default", "prod", "acme")) == "acme"
    assert [p["name"] for p in secrets.list_projects(me, org="acme")] == ["default"]


# ---------------------------------------------------------------- put_many
def test_put_many_is_all_or_nothing(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    assert secrets.put_many(me, S, {"A": "1", "B": "2"}) == ["A", "B"]
    secrets.put(me, S, "LOCKED", "x", cas_required=True)
    with pytest.raises(CasMismatch):
        secrets.put_many(me, S, {"C": "3", "LOCKED": "y"})
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "C")
    assert value(secrets, me, "LOCKED") == "x"
    with pytest.raises(InvalidName):
        secrets.put_many(me, S, {"D": "4", "../x": "5"})
    with pytest.raises(SecretNotFound):
        secrets.describe(me, S, "D")
    assert secrets.put_many(me, S, {"A": "changed", "E": "5"}, skip_existing=True) == ["E"]
    assert value(secrets, me, "A") == "1"


# ---------------------------------------------------------------- corrupted rows
def _set_row(store: Store, name: str, version: int, **values: Any) -> None:
    s, sv = tables.secrets, tables.secret_versions
    with store.begin() as conn:
        sid = conn.execute(sa.select(s.c.id).where(s.c.name == name)).scalar_one()
        conn.execute(sa.update(sv).where(sv.c.secret_id == sid, sv.c.version == version).values(**values))


def _assert_names(err: DecryptionError, name: str, version: int) -> None:
    assert type(err) is DecryptionError and err.code == "decryption_failed"
    assert name in err.message and str(version) in err.message
    assert err.details == {"name": name, "version": version}


def test_corrupted_ciphertext(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "KEY", "v1")
    secrets.put(me, S, "KEY", "v2-secret-value")
    ct = bytearray(version_rows(store, "KEY")[2]["ciphertext"])
    ct[-1] ^= 0x01
    _set_row(store, "KEY", 2, ciphertext=bytes(ct))
    with pytest.raises(DecryptionError) as info:
        secrets.get(me, S, "KEY")
    _assert_names(info.value, "KEY", 2)
    assert "v2-secret-value" not in str(info.value)
    # the other version and the other secrets still read
    assert value(secrets, me, "KEY", version=1) == "v1"
    # the failed read is audited as such
    last = [e for e in secrets.audit.iter_entries() if e.action == "secret.read"]
    assert any(e.result == "error:decryption_failed" for e in last)
    # truncated, emptied, wrapped key damaged: the same error
    for bad in ({"ciphertext": bytes(ct[:10])}, {"ciphertext": b""}, {"wrapped_dek": b"\x01" * 60}):
        _set_row(store, "KEY", 2, **bad)
        with pytest.raises(DecryptionError) as info:
            secrets.get(me, S, "KEY", version=2)
        _assert_names(info.value, "KEY", 2)


def test_row_moved_to_another_secret_or_version(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "A", "value-of-a")
    secrets.put(me, S, "B", "value-of-b")
    secrets.put(me, S, "B", "value-of-b2")
    a1 = version_rows(store, "A")[1]
    secrets.create_project(me, "other")
    secrets.put(me, Scope("other", "dev"), "A", "other-a")
    moved = {k: a1[k] for k in ("ciphertext", "wrapped_dek", "kek_id")}
    # onto another secret
    _set_row(store, "B", 1, **moved)
    with pytest.raises(DecryptionError) as info:
        secrets.get(me, S, "B", version=1)
    _assert_names(info.value, "B", 1)
    # onto another version of the same secret
    _set_row(store, "B", 2, **{k: version_rows(store, "B")[1][k] for k in moved})
    with pytest.raises(DecryptionError):
        secrets.get(me, S, "B", version=2)
    # onto the same name in another project
    s, sv = tables.secrets, tables.secret_versions
    with store.begin() as conn:
        other_sid = conn.execute(
            sa.select(s.c.id).where(s.c.name == "A").order_by(s.c.id.desc()).limit(1)
        ).scalar_one()
        conn.execute(sa.update(sv).where(sv.c.secret_id == other_sid, sv.c.version == 1).values(**moved))
    with pytest.raises(DecryptionError) as info:
        secrets.get(me, Scope("other", "dev"), "A")
    _assert_names(info.value, "A", 1)
    assert value(secrets, me, "A") == "value-of-a"


def test_renamed_secret_fails_to_decrypt(secrets: SecretService, me, store: Store) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "A", "value-of-a")
    with store.begin() as conn:
        conn.execute(sa.update(tables.secrets).where(tables.secrets.c.name == "A").values(name="B"))
    with pytest.raises(DecryptionError) as info:
        secrets.get(me, S, "B")
    _assert_names(info.value, "B", 1)


def test_unknown_kek_id(secrets: SecretService, me, store: Store, vault: Vault) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "A", "value-of-a")
    _set_row(store, "A", 1, kek_id=99)
    with pytest.raises(DecryptionError) as info:
        secrets.get(me, S, "A")
    _assert_names(info.value, "A", 1)
