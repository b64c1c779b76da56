"""open_store(url): schemes, credentials never in URLs, plug-ins by entry point."""

from __future__ import annotations

import base64
import os
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
    _url,
    open_store,
    set_native_opener,
)
from keybroker.core import Scope, SecretService
from keybroker.errors import AuthenticationError, InvalidInput, UnsealFailed


def test_env_url() -> None:
    with pytest.warns(EnvStoreWarning):
        s = open_store("env://APP_", environ={"APP_K": "v"})
    assert isinstance(s, EnvStore)
    assert s.get("K").reveal() == "v"
    assert s.location() == "env://APP_"


def test_file_url_with_root_key_env(tmp_path: Path) -> None:
    env = {"FILE_KEY": base64.b64encode(os.urandom(32)).decode()}
    url = f"file://{tmp_path}/s.kbf?root_key_env=FILE_KEY"
    s = open_store(url, environ=env)
    assert isinstance(s, EncryptedFileStore)
    s.put("K", "v")
    assert open_store(url, environ=env).get("K").reveal() == "v"
    with pytest.raises(UnsealFailed):
        open_store(url, environ={})
    with pytest.raises(UnsealFailed):
        open_store(f"file://{tmp_path}/s.kbf", environ={})  # no passphrase variable


def test_file_url_with_key_file(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/k.kbf?key_file={tmp_path}/k.key", environ={})
    s.put("K", "v")
    assert (tmp_path / "k.key").exists()


@pytest.mark.parametrize(
    "url",
    [
        "vault://user:pw@127.0.0.1:8200/secret",
        "vault://127.0.0.1:8200/secret?token=s.abc",
        "aws-sm://eu-west-1/?secret=x",
        "file:///tmp/x.kbf?passphrase=hunter2",
    ],
)
def test_credentials_in_urls_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as e:
        open_store(url, environ={})
    assert "credentials never go in a store URL" in e.value.message
    assert "hunter2" not in e.value.message and "s.abc" not in e.value.message


@pytest.mark.parametrize(
    "url",
    [
        "nonsense",
        "ftp://x/y",
        "vault:///secret",
        "aws-sm:///prefix",
        "env://A?x=1",
        "keybroker://onlyproject",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidInput):
        open_store(url, environ={})


def test_vault_needs_a_token() -> None:
    with pytest.raises(AuthenticationError):
        open_store("vault+http://127.0.0.1:1/secret", environ={})
    with pytest.raises(AuthenticationError):
        open_store("vault://127.0.0.1:1/secret?auth=approle", environ={})
    with pytest.raises(InvalidInput):
        open_store("vault://127.0.0.1:1/secret?auth=ldap", environ={"VAULT_TOKEN": "x"})


def test_keybroker_url_with_opener(secrets: SecretService, me: Any) -> None:
    seen: list[Scope] = []

    def opener(scope: Scope) -> tuple[SecretService, Any]:
        seen.append(scope)
        return secrets, me

    s = open_store("keybroker://default/dev?resolve=false", native=opener)
    assert isinstance(s, NativeStore)
    assert seen == [Scope("default", "dev", "default")]
    assert s.location() == "keybroker://default/dev"
    assert not s.resolve
    set_native_opener(opener)
    try:
        assert isinstance(open_store("keybroker://default/prod?org=default"), NativeStore)
    finally:
        set_native_opener(None)
    with pytest.raises(InvalidInput):
        open_store("keybroker://Bad_Project/dev", native=opener)


def test_keybroker_url_from_environment(
    tmp_path: Path, store_url: str, fast_passphrase: Any, me: Any
) -> None:
    from keybroker.core import Vault
    from keybroker.store import Store

    st = Store(store_url)
    Vault(st).initialize(fast_passphrase, me)
    st.dispose()
    pf = tmp_path / "pass"
    pf.write_text("correct horse battery staple\n")
    env = {"KEYBROKER_DB_URL": store_url, "KEYBROKER_PASSPHRASE_FILE": str(pf)}
    s = open_store("keybroker://default/dev", environ=env)
    s.put("K", "v")
    assert s.get("K").reveal() == "v"
    assert isinstance(s, NativeStore)
    s.service.store.dispose()
    with pytest.raises(InvalidInput):
        open_store("keybroker://default/dev", environ={})
    with pytest.raises(UnsealFailed):
        open_store("keybroker://default/dev", environ={"KEYBROKER_DB_URL": store_url})


class _EP:
    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target

    def load(self) -> Any:
        return self._target


def test_plugin_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []

    def factory(url: str, environ: Any) -> KeyStore:
        made.append(url)
        return MemoryStore("plugin")

    def hijack(url: str, environ: Any) -> KeyStore:
        raise AssertionError("a plug-in must not override a built-in scheme")

    def broken() -> Any:
        raise ImportError("missing dependency")

    class BrokenEP(_EP):
        def load(self) -> Any:
            return broken()

    eps = [
        _EP("mystore", factory),
        _EP("env", hijack),
        BrokenEP("broken", None),
        _EP("notastore", lambda u, e: 42),
    ]
    monkeypatch.setattr(_url, "entry_points", lambda group: eps if group == _url.ENTRY_POINT_GROUP else [])
    s = open_store("mystore://anything/here")
    assert isinstance(s, MemoryStore) and made == ["mystore://anything/here"]
    with pytest.warns(EnvStoreWarning):
        assert isinstance(open_store("env://X_", environ={}), EnvStore)
    with pytest.raises(InvalidInput, match="could not be loaded"):
        open_store("broken://x")
    with pytest.raises(InvalidInput, match="did not return a KeyStore"):
        open_store("notastore://x")
