"""The KeyStore contract, run against every store that lives in this process.

(Vault/OpenBao and AWS run the same contract in tests/integration against real servers.)"""

from __future__ import annotations

import pytest

from keybroker.backends import KeyStore, RotatingStore
from keybroker.crypto import SecretValue
from keybroker.errors import (
    InvalidInput,
    InvalidName,
    SecretDeleted,
    SecretNotFound,
    VersionNotFound,
)


class Contract:
    """Every test takes ``kstore``; subclasses say which store that is."""

    def test_round_trip_text_and_bytes(self, kstore: KeyStore) -> None:
        v = kstore.put("OPENAI_API_KEY", "sk-test-1")
        assert v
        got = kstore.get("OPENAI_API_KEY")
        assert isinstance(got, SecretValue)
        assert got.reveal() == "sk-test-1"
        kstore.put("BLOB", SecretValue(b"\x00\xffbin"))
        assert kstore.get("BLOB").reveal_bytes() == b"\x00\xffbin"

    def test_versions_and_labels(self, kstore: KeyStore) -> None:
        v1 = kstore.put("DB_PASSWORD", "one")
        v2 = kstore.put("DB_PASSWORD", "two")
        assert v1 != v2
        assert kstore.get("DB_PASSWORD").reveal() == "two"
        assert kstore.get("DB_PASSWORD", label="current").reveal() == "two"
        assert kstore.get("DB_PASSWORD", label="previous").reveal() == "one"
        assert kstore.get("DB_PASSWORD", version=v1).reveal() == "one"
        infos = kstore.versions("DB_PASSWORD")
        assert [i.version for i in infos] == [v1, v2]
        assert infos[0].labels == ("previous",)
        assert infos[1].labels == ("current",)
        meta = kstore.metadata("DB_PASSWORD")
        assert meta.current_version == v2
        assert meta.store == kstore.kind
        assert not meta.deleted

    def test_pending_then_promote(self, kstore: KeyStore) -> None:
        assert isinstance(kstore, RotatingStore)
        assert "pending" in kstore.capabilities.labels
        kstore.put("API", "old")
        kstore.put("API", "new", label="pending")
        assert kstore.get("API").reveal() == "old"
        assert kstore.get("API", label="pending").reveal() == "new"
        kstore.promote("API")
        assert kstore.get("API").reveal() == "new"
        assert kstore.get("API", label="previous").reveal() == "old"
        with pytest.raises(VersionNotFound):
            kstore.get("API", label="pending")

    def test_pending_needs_an_existing_secret(self, kstore: KeyStore) -> None:
        with pytest.raises(SecretNotFound):
            kstore.put("NEW", "x", label="pending")

    def test_missing(self, kstore: KeyStore) -> None:
        with pytest.raises(SecretNotFound) as e:
            kstore.get("NOPE")
        assert e.value.code == "secret_not_found"
        kstore.put("ONE", "1")
        with pytest.raises(VersionNotFound):
            kstore.get("ONE", version="99")
        with pytest.raises(VersionNotFound):
            kstore.get("ONE", version="not-a-version")
        with pytest.raises(VersionNotFound):
            kstore.get("ONE", label="previous")
        with pytest.raises(InvalidInput):
            kstore.get("ONE", label="sideways")
        with pytest.raises(SecretNotFound):
            kstore.versions("NOPE")
        with pytest.raises(SecretNotFound):
            kstore.metadata("NOPE")

    def test_list_and_prefix(self, kstore: KeyStore) -> None:
        for n in ("b/two", "a/one", "A_KEY", "b/three"):
            kstore.put(n, "v")
        assert kstore.list() == sorted(["A_KEY", "a/one", "b/three", "b/two"])
        assert kstore.list("b/") == ["b/three", "b/two"]
        assert kstore.list("zzz") == []

    def test_delete_hides_and_keeps_source_recoverable(self, kstore: KeyStore) -> None:
        kstore.put("GONE", "v")
        kstore.delete("GONE")
        assert "GONE" not in kstore.list()
        with pytest.raises(SecretDeleted):
            kstore.get("GONE")
        assert kstore.metadata("GONE").deleted
        with pytest.raises(SecretNotFound):
            kstore.delete("NEVER")

    def test_bad_names_rejected(self, kstore: KeyStore) -> None:
        for bad in ("", "../etc", "a//b", "with space"):
            with pytest.raises(InvalidName):
                kstore.put(bad, "v")

    def test_label_previous_not_writable(self, kstore: KeyStore) -> None:
        with pytest.raises(InvalidInput):
            kstore.put("X", "v", label="previous")

    def test_no_value_in_reprs_or_errors(self, kstore: KeyStore) -> None:
        kstore.put("CANARY", "canary-value-123")
        assert "canary-value-123" not in repr(kstore)
        assert "canary-value-123" not in repr(kstore.get("CANARY"))
        assert "canary-value-123" not in repr(kstore.versions("CANARY"))
        assert "canary-value-123" not in repr(kstore.metadata("CANARY"))
        with pytest.raises(VersionNotFound) as e:
            kstore.get("CANARY", version="42")
        assert "canary-value-123" not in str(e.value)


class TestMemory(Contract):
    @pytest.fixture
    def kstore(self, memory_store: KeyStore) -> KeyStore:
        return memory_store


class TestEncryptedFile(Contract):
    @pytest.fixture
    def kstore(self, file_store: KeyStore) -> KeyStore:
        return file_store


class TestNative(Contract):
    """keybroker itself, on SQLite and PostgreSQL (the ``secrets`` fixture)."""

    @pytest.fixture
    def kstore(self, native_store: KeyStore) -> KeyStore:
        assert isinstance(native_store, KeyStore)
        return native_store
