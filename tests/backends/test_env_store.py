"""Environment variables: read-only, development only, loudly."""

from __future__ import annotations

import pytest

from keybroker.backends import EnvStore, EnvStoreWarning
from keybroker.errors import InvalidInput, PermissionDenied, SecretNotFound, VersionNotFound

ENV = {"APP_OPENAI_API_KEY": "sk-env", "APP_DB_URL": "postgres://x", "OTHER": "no"}


def make(prefix: str = "APP_") -> EnvStore:
    with pytest.warns(EnvStoreWarning, match="development only"):
        return EnvStore(prefix, environ=ENV)


def test_warns_and_reads() -> None:
    s = make()
    assert s.get("OPENAI_API_KEY").reveal() == "sk-env"
    assert s.get("openai/api-key").reveal() == "sk-env"  # path style maps to env style
    assert s.list() == ["DB_URL", "OPENAI_API_KEY"]
    assert s.list("DB") == ["DB_URL"]
    assert [v.version for v in s.versions("DB_URL")] == ["env"]
    assert s.metadata("DB_URL").current_version == "env"
    assert set(s.get_many(["DB_URL", "NOPE"])) == {"DB_URL"}


def test_read_only_and_missing() -> None:
    s = make()
    assert not s.capabilities.writable
    with pytest.raises(PermissionDenied):
        s.put("X", "v")
    with pytest.raises(PermissionDenied):
        s.delete("DB_URL")
    with pytest.raises(SecretNotFound):
        s.get("OTHER")  # outside the prefix
    with pytest.raises(VersionNotFound):
        s.get("DB_URL", label="previous")
    with pytest.raises(VersionNotFound):
        s.get("DB_URL", version="2")


def test_bad_prefix() -> None:
    with pytest.raises(InvalidInput):
        EnvStore("BAD-PREFIX", environ={})


def test_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    make()
    assert any("development only" in r.getMessage() for r in caplog.records)
