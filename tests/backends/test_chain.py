"""ResolutionChain: first hit wins, where each name came from, every hop audited."""

from __future__ import annotations

from typing import Any

import pytest

from keybroker.backends import (
    EnvStore,
    EnvStoreWarning,
    Hop,
    MemoryStore,
    ResolutionChain,
    audit_log_callback,
)
from keybroker.core import ManualClock, Vault
from keybroker.errors import InvalidInput, PermissionDenied, SecretNotFound, StoreError


class Down(MemoryStore):
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> Any:
        raise StoreError("down for the test")

    def list(self, prefix: str = "") -> list[str]:
        raise StoreError("down for the test")


def stores(clock: ManualClock) -> tuple[EnvStore, MemoryStore, MemoryStore]:
    with pytest.warns(EnvStoreWarning):
        env = EnvStore("DEV_", environ={"DEV_A": "from-env"})
    local = MemoryStore("local", clock)
    remote = MemoryStore("remote", clock)
    local.put("A", "from-local")
    local.put("B", "from-local")
    remote.put("B", "from-remote")
    remote.put("C", "from-remote")
    return env, local, remote


def test_first_hit_wins_and_where(clock: ManualClock) -> None:
    hops: list[Hop] = []
    chain = ResolutionChain(stores(clock), audit=hops.append, clock=clock)
    assert chain.get("A").reveal() == "from-env"
    assert chain.get("B").reveal() == "from-local"
    assert chain.get("C").reveal() == "from-remote"
    assert chain.where("A") == "env://DEV_"
    assert chain.where("B") == "memory://local"
    assert chain.where("C") == "memory://remote"
    assert chain.where("Z") is None
    assert chain.sources() == {"A": "env://DEV_", "B": "memory://local", "C": "memory://remote"}
    value, where = chain.resolve("C")
    assert (value.reveal(), where) == ("from-remote", "memory://remote")
    c_hops = [(h.position, h.outcome) for h in hops if h.name == "C"][:3]
    assert c_hops == [(0, "miss"), (1, "miss"), (2, "hit")]
    assert all("from-" not in repr(h) for h in hops)


def test_miss_everywhere(clock: ManualClock) -> None:
    hops: list[Hop] = []
    chain = ResolutionChain(stores(clock), audit=hops.append)
    with pytest.raises(SecretNotFound):
        chain.get("NOWHERE")
    assert [h.outcome for h in hops] == ["miss", "miss", "miss"]


def test_store_down_raises_by_default_or_skips(clock: ManualClock) -> None:
    _, _, remote = stores(clock)
    hops: list[Hop] = []
    strict = ResolutionChain([Down("down", clock), remote], audit=hops.append)
    with pytest.raises(StoreError):
        strict.get("C")
    assert hops[-1].outcome == "error" and hops[-1].code == "store_unavailable"
    lenient = ResolutionChain([Down("down", clock), remote], audit=hops.append, on_error="skip")
    assert lenient.get("C").reveal() == "from-remote"
    assert lenient.list() == ["B", "C"]
    with pytest.raises(StoreError):  # every miss plus an error: the error is what the caller sees
        lenient.get("NOWHERE")


def test_read_only_and_union_list(clock: ManualClock) -> None:
    chain = ResolutionChain(stores(clock))
    assert chain.list() == ["A", "B", "C"]
    with pytest.raises(PermissionDenied):
        chain.put("X", "v")
    with pytest.raises(PermissionDenied):
        chain.delete("A")
    assert [v.version for v in chain.versions("B")] == ["1"]
    assert chain.metadata("C").store == "memory"
    assert set(chain.get_many(["A", "C", "Z"])) == {"A", "C"}
    with pytest.raises(InvalidInput):
        ResolutionChain([])


def test_hops_into_the_audit_log(vault: Vault, me: Any, clock: ManualClock) -> None:
    chain = ResolutionChain(stores(clock), audit=audit_log_callback(vault.audit, me))
    chain.get("C")
    entries = [e for e in vault.audit.iter_entries(action="chain.resolve")]
    assert [(e.target, e.result) for e in entries] == [("C", "miss"), ("C", "miss"), ("C", "hit")]
    assert vault.audit.verify().ok
