"""``keybroker run`` with proxy-only secrets: the child gets a proxy token under the secret's name
and the variables pointing the provider SDKs at the gateway, never the value; the other secrets
still get their values; ``secret get`` of a proxy-only secret is refused. Local vault (SQLite) and
a real ``keybroker serve``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keybroker.cli import app
from keybroker.core import ManualClock
from keybroker.server import create_app
from keybroker.server._access_api import install, router

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from kb_live import LiveServer, new_vault, server_settings  # type: ignore[import-not-found,unused-ignore]

SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)

REAL = "sk-proj-REALVALUE-0123456789abcdef"
PLAIN = "plain-db-password-98765"
CHILD = (
    "import os, json, sys\n"
    "print(os.environ['OPENAI_API_KEY'][:4], os.environ['OPENAI_BASE_URL'])\n"
    "print('gw=' + os.environ['KEYBROKER_GATEWAY_URL'])\n"
    "print('db=' + os.environ['DB_PASSWORD'])\n"
    "print('token=' + os.environ['OPENAI_API_KEY'])\n"
    "open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))\n"
)


def _vault(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb.init()
    kb("secret", "set", "OPENAI_API_KEY", "--stdin", "--provider", "openai", "--proxy-only", input=REAL)
    kb("secret", "set", "DB_PASSWORD", "--stdin", input=PLAIN)


@SQLITE
def test_run_gives_proxy_token_and_gateway_not_the_value(kb, kbp, cli_env) -> None:  # type: ignore[no-untyped-def]
    _vault(kb, cli_env)
    dump = cli_env.tmp / "child-env.json"
    out = kbp("run", "--", sys.executable, "-c", CHILD, str(dump))
    lines = out.stdout.splitlines()
    assert lines[0] == "kbp_ http://127.0.0.1:8270/gw/openai/v1"
    assert lines[1] == "gw=http://127.0.0.1:8270/gw"
    # the normal secret got its value (masked in the output), the proxy token is masked too
    assert lines[2] == "db=<concealed by keybroker>"
    assert lines[3] == "token=<concealed by keybroker>"
    assert REAL not in out.stdout + out.stderr
    env = json.loads(dump.read_text())
    assert env["DB_PASSWORD"] == PLAIN
    assert env["OPENAI_API_KEY"].startswith("kbp_") and env["OPENAI_API_KEY"] != REAL
    assert REAL not in json.dumps(env)
    # the proxy token is audited as issued, and run records what was proxied
    audit = json.loads(kb("audit", "list", "--action", "run", "--output", "json").stdout)
    detail = json.loads(audit[0]["detail"])
    assert detail["proxied"] == ["OPENAI_API_KEY"]
    assert sorted(detail["names"]) == ["DB_PASSWORD", "OPENAI_API_KEY"]
    issued = json.loads(kb("audit", "list", "--output", "json").stdout)
    assert any(a["action"].startswith("proxy_token") for a in issued)
    assert env["OPENAI_API_KEY"] not in json.dumps(issued)


@SQLITE
def test_gateway_url_and_ttl_options(kb, kbp, cli_env) -> None:  # type: ignore[no-untyped-def]
    _vault(kb, cli_env)
    dump = cli_env.tmp / "child-env.json"
    out = kbp(
        "run",
        "--proxy-ttl",
        "60",
        "--",
        sys.executable,
        "-c",
        CHILD,
        str(dump),
        env={"KEYBROKER_GATEWAY_URL": "https://kb.example/gw/"},
    )
    assert out.stdout.splitlines()[0] == "kbp_ https://kb.example/gw/openai/v1"
    assert json.loads(dump.read_text())["KEYBROKER_GATEWAY_URL"] == "https://kb.example/gw"
    kbp("run", "--proxy-ttl", "0", "--", "true", code=2)


@SQLITE
def test_secret_get_and_export_refuse_proxy_only(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    _vault(kb, cli_env)
    out = kb("secret", "get", "OPENAI_API_KEY", "--output", "json", code=1)
    assert json.loads(out.stderr)["code"] == "proxy_only"
    out = kb("secret", "get", "OPENAI_API_KEY", code=1)
    assert REAL not in out.stdout + out.stderr
    exported = kb("export").stdout
    assert REAL not in exported and "DB_PASSWORD" in exported
    assert json.loads(kb("secret", "describe", "OPENAI_API_KEY", "--output", "json").stdout)["proxy_only"]


def _mount_access(app: Any, kb: Any) -> None:
    install(app, kb, include_router=False)


# -- against a server --------------------------------------------------------------------------------
@pytest.fixture
def server_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_"):
            monkeypatch.delenv(k)
    clock = ManualClock()
    vault, root = new_vault(f"sqlite:///{tmp_path / 'server.db'}", clock)
    app = create_app(
        server_settings(),
        vault=vault,
        clock=clock,
        routers=[router],
        extensions=[_mount_access],
    )
    server = LiveServer(app).start()
    (tmp_path / "work").mkdir()
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("KEYBROKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYBROKER_DB_URL", f"sqlite:///{tmp_path / 'local.db'}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("KEYBROKER_ADDR", server.url)
    monkeypatch.setenv("KEYBROKER_TOKEN", root)
    monkeypatch.chdir(tmp_path / "work")
    try:
        yield server.url, root
    finally:
        server.stop()
        vault.store.dispose()


def test_remote_run_gives_proxy_token(server_env: tuple[str, str], tmp_path: Path) -> None:
    url, root = server_env
    runner = CliRunner()

    def cli(*args: str, code: int = 0, input: str | None = None) -> str:
        r = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        assert r.exit_code == code, (args, r.stdout, r.stderr)
        assert root not in r.stdout + r.stderr
        return str(r.stdout + r.stderr)

    cli("secret", "set", "OPENAI_API_KEY", "--stdin", "--provider", "openai", "--proxy-only", input=REAL)
    cli("secret", "set", "DB_PASSWORD", "--stdin", input=PLAIN)
    assert '"proxy_only"' in cli("secret", "get", "OPENAI_API_KEY", "--output", "json", code=1)
    dump = tmp_path / "child-env.json"
    out = cli("run", "--", sys.executable, "-c", CHILD, str(dump))
    assert f"kbp_ {url}/gw/openai/v1" in out
    assert REAL not in out
    env = json.loads(dump.read_text())
    assert env["DB_PASSWORD"] == PLAIN and env["OPENAI_API_KEY"].startswith("kbp_")
    assert env["KEYBROKER_GATEWAY_URL"] == f"{url}/gw"
    assert REAL not in json.dumps(env)
