"""``keybroker mcp config`` and ``keybroker mcp credentials`` (a Typer app with ``register``), and
``python -m keybroker.mcp`` as a process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from mcp_support import World, make_world
from typer.testing import CliRunner

from keybroker.cli._app import KeybrokerGroup
from keybroker.mcp import AgentLogin, client_config
from keybroker.mcp._auth import credentials_from_file
from keybroker.mcp._cli import register
from keybroker.mcp._config import safe_db_url


@pytest.fixture
def home_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key in list(os.environ):
        if key.startswith("KEYBROKER_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("KEYBROKER_HOME", str(home))
    w = make_world(f"sqlite:///{home / 'vault.db'}")
    yield w
    w.services.close()
    w.vault.store.dispose()


def _app() -> typer.Typer:
    app = typer.Typer(cls=KeybrokerGroup)

    @app.callback()
    def _root() -> None:
        """root"""

    register(app)
    return app


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), ["mcp", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_credentials_then_config_for_each_client(home_world: World, tmp_path: Path) -> None:
    w = home_world
    cred = tmp_path / "creds" / "agent1.json"
    code, out, errout = run("credentials", w.agent, "--out", str(cred))
    assert code == 0, errout
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    data = json.loads(cred.read_text())
    assert data["client_id"].startswith("kbc_") and data["client_secret"].startswith("kbs_")
    assert data["client_secret"] not in out + errout  # written, never printed
    assert AgentLogin(w.services, credentials_from_file(cred)).principal().kind == "agent"
    # the old secret stops working
    with pytest.raises(Exception, match="login failed"):
        w.services.identities.login_client_secret(w.client_id, w.client_secret)
    code, _, errout = run("credentials", w.agent, "--out", str(cred))
    assert code != 0
    code, _, errout = run("credentials", "no-such-agent", "--out", str(tmp_path / "x.json"))
    assert code != 0 and not (tmp_path / "x.json").exists()

    for client in ("claude-desktop", "claude-code", "cursor"):
        code, out, errout = run("config", "--client", client, "--credentials", str(cred))
        assert code == 0, errout
        cfg = json.loads(out)
        entry = cfg["mcpServers"]["keybroker"]
        assert entry["env"]["KEYBROKER_AGENT_CREDENTIALS"] == str(cred)
        assert entry["env"]["KEYBROKER_HOME"] == os.environ["KEYBROKER_HOME"]
        assert entry["command"] and (
            entry["args"][-1] == "mcp" or entry["args"][-2:] == ["-m", "keybroker.mcp"]
        )
        assert (entry.get("type") == "stdio") == (client == "claude-code")
        assert data["client_secret"] not in out and data["client_id"] not in out

    code, out, _ = run(
        "config", "--client", "claude-code", "-t", "http", "--url", "https://kb.example.com/mcp"
    )
    assert code == 0
    assert json.loads(out) == {
        "mcpServers": {
            "keybroker": {
                "type": "http",
                "url": "https://kb.example.com/mcp",
                "headers": {"Authorization": "Bearer ${KEYBROKER_AGENT_TOKEN}"},
            }
        }
    }
    code, out, _ = run(
        "config",
        "--client",
        "cursor",
        "-t",
        "http",
        "--url",
        "http://127.0.0.1:8271/mcp",
        "--token-env",
        "KB_TOK",
    )
    assert json.loads(out)["mcpServers"]["keybroker"]["headers"] == {"Authorization": "Bearer ${env:KB_TOK}"}


def test_config_refusals(home_world: World, tmp_path: Path) -> None:
    code, out, errout = run("config", "--client", "claude-desktop", "-t", "http", "--url", "http://x/mcp")
    assert code != 0 and out == ""
    code, out, _ = run("config", "--client", "claude-desktop")
    assert code != 0 and out == ""
    code, out, errout = run("config", "--client", "notepad", "--credentials", str(tmp_path / "c.json"))
    assert code == 2
    code, out, errout = run("config", "--client", "cursor", "--credentials", "relative.json")
    assert code == 0 and "absolute" in errout


def test_config_never_carries_a_database_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, stripped = safe_db_url("postgresql+psycopg://kb:hunter2@db.internal:5432/kb")
    assert stripped and "hunter2" not in url and url.startswith("postgresql+psycopg://kb@db.internal")
    assert safe_db_url("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", False)
    for key in list(os.environ):
        if key.startswith("KEYBROKER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KEYBROKER_DB_URL", "postgresql+psycopg://kb:hunter2@db.internal:5432/kb")
    cred = tmp_path / "c.json"
    code, out, errout = run("config", "--client", "cursor", "--credentials", str(cred))
    assert code == 0 and "hunter2" not in out and ".pgpass" in errout
    assert json.loads(out)["mcpServers"]["keybroker"]["env"]["KEYBROKER_DB_URL"].endswith(
        "@db.internal:5432/kb"
    )


def test_client_config_shapes() -> None:
    cfg = client_config("claude-desktop", command=["/usr/bin/keybroker", "mcp"], env={"A": "b"})
    assert cfg == {
        "mcpServers": {"keybroker": {"command": "/usr/bin/keybroker", "args": ["mcp"], "env": {"A": "b"}}}
    }
    with pytest.raises(Exception, match="environment variable"):
        client_config("cursor", transport="http", command=["x"], env={}, url="http://x", token_env="bad name")


@pytest.mark.slow
def test_python_dash_m_reports_errors_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env["KEYBROKER_HOME"] = str(tmp_path / "empty-home")
    env["KEYBROKER_AGENT_TOKEN"] = "kbt_whatever"
    proc = subprocess.run(
        [sys.executable, "-m", "keybroker.mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error:") and "keybroker init" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "keybroker.mcp", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--transport" in proc.stdout and "config" in proc.stdout
