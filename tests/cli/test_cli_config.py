"""Settings (``keybroker.config``) and the unseal session files, without a store."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from keybroker.cli._session import SESSION_PREFIX, SessionStore
from keybroker.config import Settings, load_settings, session_key_dir
from keybroker.core import ManualClock
from keybroker.errors import InvalidInput


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("KEYBROKER_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_defaults(clean_env: Path) -> None:
    s = load_settings()
    assert s.home.name == "keybroker"
    assert s.database_url() == f"sqlite:///{s.home / 'vault.db'}"
    assert (s.default_org(), s.default_project(), s.default_environment()) == ("default", "default", "dev")
    assert s.auto_seal_seconds() is None and s.dev_key() is None and not s.dev_mode
    assert session_key_dir(s) == Path(f"/tmp/keybroker-{os.getuid()}")


def test_environment_variables(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYBROKER_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("KEYBROKER_PROJECT", "web")
    monkeypatch.setenv("KEYBROKER_ENV", "prod")
    monkeypatch.setenv("KEYBROKER_ORG", "acme")
    monkeypatch.setenv("KEYBROKER_AUTO_SEAL_MINUTES", "30")
    monkeypatch.setenv("KEYBROKER_ADDR", "https://kb.example")
    monkeypatch.setenv("KEYBROKER_TOKEN", "kbt_secret_token")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    s = load_settings()
    assert s.database_url() == f"sqlite:///{tmp_path / 'h' / 'vault.db'}"
    assert (s.default_org(), s.default_project(), s.default_environment()) == ("acme", "web", "prod")
    assert s.auto_seal_seconds() == 1800
    assert s.addr == "https://kb.example" and s.token is not None
    assert "kbt_secret_token" not in repr(s)
    assert session_key_dir(s) == tmp_path / "keybroker"
    monkeypatch.setenv("KEYBROKER_PROJECT", "")  # empty means unset
    assert load_settings().default_project() == "default"


def test_project_file_in_a_parent(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".keybroker.toml").write_text('project = "billing"\nenvironment = "staging"\n')
    deep = clean_env / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    s = load_settings()
    assert (s.default_project(), s.default_environment()) == ("billing", "staging")
    monkeypatch.setenv("KEYBROKER_ENV", "prod")  # the variable beats the file
    assert load_settings().default_environment() == "prod"
    (clean_env / ".keybroker.toml").write_text("project = [1]\n")
    with pytest.raises(InvalidInput, match="must be a string"):
        load_settings().default_project()
    (clean_env / ".keybroker.toml").write_text("project = \n")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_settings().default_project()


def test_dev_key(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("KEYBROKER_DEV_ROOT_KEY", base64.b64encode(key).decode())
    assert load_settings().dev_key() is None  # dev mode off: ignored
    monkeypatch.setenv("KEYBROKER_DEV_MODE", "1")
    assert load_settings().dev_key() == key
    monkeypatch.setenv("KEYBROKER_DEV_ROOT_KEY", "not base64 of 32 bytes!")
    with pytest.raises(InvalidInput) as exc:
        load_settings().dev_key()
    assert "not base64" not in str(exc.value)


def test_bad_values_never_echoed(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBROKER_DEV_MODE", "sk-looks-like-a-secret")
    with pytest.raises(InvalidInput) as exc:
        load_settings()
    assert "KEYBROKER_DEV_MODE" in str(exc.value) and "sk-looks" not in str(exc.value)
    monkeypatch.delenv("KEYBROKER_DEV_MODE")
    monkeypatch.setenv("KEYBROKER_AUTO_SEAL_MINUTES", "-5")
    with pytest.raises(InvalidInput, match="KEYBROKER_AUTO_SEAL_MINUTES"):
        load_settings()


def test_no_dotenv_file_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text("KEYBROKER_PROJECT=from-dotenv\n")
    assert Settings().default_project() == "default"


# -- sessions ------------------------------------------------------------------------------------
VAULT = "v" * 32


@pytest.fixture
def sessions(tmp_path: Path) -> SessionStore:
    (tmp_path / "run").mkdir(mode=0o700)
    return SessionStore(tmp_path / "home", tmp_path / "run" / "keybroker", ManualClock())


def test_session_round_trip(sessions: SessionStore) -> None:
    root = os.urandom(32)
    token = sessions.create(VAULT, root, "passphrase", ttl_s=3600, idle_s=None)
    assert token.startswith(SESSION_PREFIX)
    doc = json.loads(sessions.path.read_text())
    assert root.hex() not in json.dumps(doc) and base64.b64encode(root).decode() not in json.dumps(doc)
    assert sessions.path.stat().st_mode & 0o777 == 0o600
    assert sessions.key_path(VAULT).stat().st_mode & 0o777 == 0o600
    assert sessions.key_path(VAULT).read_text().strip() == token
    session, why = sessions.load(VAULT)
    assert session is not None and session.root == root and why is None
    assert root.hex() not in repr(session)
    assert sessions.load("other" * 6 + "ab")[0] is None
    assert sessions.delete(VAULT)
    assert not sessions.path.exists() and not sessions.key_path(VAULT).exists()
    assert sessions.load(VAULT) == (None, None)


def test_session_expiry_and_idle(sessions: SessionStore) -> None:
    clock = sessions.clock
    assert isinstance(clock, ManualClock)
    sessions.create(VAULT, os.urandom(32), "passphrase", ttl_s=3600, idle_s=600)
    ts = clock.now().timestamp()
    os.utime(sessions.path, (ts, ts))
    clock.advance(300)
    assert sessions.load(VAULT)[0] is not None  # touches: idle timer restarts
    clock.advance(500)
    assert sessions.load(VAULT)[0] is not None
    clock.advance(601)
    session, why = sessions.load(VAULT)
    assert session is None and why == "auto-sealed after 10 minutes idle"
    assert not sessions.path.exists() and not sessions.key_path(VAULT).exists()
    sessions.create(VAULT, os.urandom(32), "passphrase", ttl_s=60, idle_s=None)
    clock.advance(timedelta(seconds=61).total_seconds())
    assert sessions.load(VAULT) == (None, "the unseal session expired")


def test_session_key_in_env_only(sessions: SessionStore) -> None:
    root = os.urandom(32)
    token = sessions.create(VAULT, root, "passphrase", ttl_s=None, idle_s=None, key_in_env=True)
    assert not sessions.key_path(VAULT).exists()
    assert sessions.load(VAULT) == (None, "the session key is missing")
    with_env = SessionStore(sessions.home, sessions.key_dir, sessions.clock, env_token=token)
    session, _ = with_env.load(VAULT)
    assert session is not None and session.root == root
    stale = SessionStore(sessions.home, sessions.key_dir, sessions.clock, env_token=SESSION_PREFIX + "A" * 43)
    assert stale.load(VAULT)[1] == "the session key does not match the session (stale KEYBROKER_SESSION?)"
    bad = SessionStore(sessions.home, sessions.key_dir, sessions.clock, env_token="garbage")
    assert bad.load(VAULT)[1] == "KEYBROKER_SESSION is malformed"


def test_session_file_bound_to_vault(sessions: SessionStore) -> None:
    """A session file edited to name another vault does not decrypt (the AAD binds the id)."""
    sessions.create(VAULT, os.urandom(32), "passphrase", ttl_s=None, idle_s=None)
    other = "w" * 32
    doc = json.loads(sessions.path.read_text())
    doc["vault_id"] = other
    sessions.path.write_text(json.dumps(doc))
    sessions.key_path(other).write_text(sessions.key_path(VAULT).read_text())
    assert sessions.load(other)[0] is None


def test_session_key_dir_must_be_private(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    store = SessionStore(tmp_path / "home", d, ManualClock())
    store.create(VAULT, os.urandom(32), "passphrase", ttl_s=None, idle_s=None)
    assert d.stat().st_mode & 0o777 == 0o700  # tightened
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(InvalidInput, match="not a directory owned by you"):
        SessionStore(tmp_path / "home", link, ManualClock()).create(
            VAULT, os.urandom(32), "passphrase", ttl_s=None, idle_s=None
        )


def test_public_surface() -> None:
    import keybroker.cli
    import keybroker.config

    assert keybroker.cli.__all__ == ["app", "main"]
    assert set(keybroker.config.__all__) == {
        "PROJECT_FILE",
        "ProjectFile",
        "Settings",
        "find_project_file",
        "load_settings",
        "session_key_dir",
    }
