"""``keybroker access list|show|approve|deny``: against the local vault (as its owner) and against
a server (KEYBROKER_ADDR + KEYBROKER_TOKEN); and ``keybroker gateway --help``."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keybroker.core import PassphraseRoot, Principal, SystemClock, Vault, local_principal
from keybroker.core._identity import IdentityService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.crypto import Argon2Params
from keybroker.gateway._cli import register
from keybroker.gateway._testing import AccessStack, ServerThread
from keybroker.server import create_app
from keybroker.server._access_api import install, router
from keybroker.store import Store

PASS = "correct horse battery staple"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


@pytest.fixture
def local_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vault]:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_"):
            monkeypatch.delenv(k)
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    pf.chmod(0o600)
    monkeypatch.setenv("KEYBROKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYBROKER_DB_URL", url)
    monkeypatch.setenv("KEYBROKER_PASSPHRASE_FILE", str(pf))
    vault = Vault(Store(url), SystemClock())
    vault.initialize(
        PassphraseRoot(PASS, Argon2Params(os.urandom(16), memory_kib=19 * 1024, time_cost=2)),
        local_principal("test"),
    )
    yield vault
    vault.store.dispose()


def _pending(stack: AccessStack, admin: Principal, risk: str = "medium") -> str:
    stack.put_key(admin, "OPENAI_API_KEY", "sk-cli-test-0123456789", provider="openai", risk=risk)
    agent = stack.agent(admin, "cli-bot")
    stack.tools.register(
        admin, "cli-bot", "t", allowed_secrets=["default/*"], environments=["dev"], max_risk="low"
    )
    req = stack.requests.request(
        agent,
        "t",
        ["default/dev/OPENAI_API_KEY"],
        justification="line one\n\x1b[31mred\x1b[0m",
        duration_s=600,
    )
    assert req.status == "pending"
    return req.id


def test_access_commands_on_the_local_vault(local_vault: Vault) -> None:
    admin = local_principal("test")
    stack = AccessStack.build(local_vault)
    rid = _pending(stack, admin)
    run = CliRunner()
    app = _app()
    r = run.invoke(app, ["access", "list", "--status", "pending"])
    assert r.exit_code == 0, r.output
    assert rid in r.stdout and "cli-bot" in r.stdout
    r = run.invoke(app, ["access", "show", rid])
    assert "line one" in r.stdout and "\x1b" not in r.stdout and "\\x1b[31mred" in r.stdout
    r = run.invoke(app, ["access", "approve", rid, "--duration", "5m", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["request"]
    assert out["status"] == "approved" and out["granted_duration_s"] == 300
    r = run.invoke(app, ["access", "deny", rid, "--reason", "late"])
    assert r.exit_code != 0  # request_not_pending: surfaced as an error by the CLI's boundary


def test_access_commands_against_a_server(local_vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    authz = RbacAuthorizer()
    ids = IdentityService(local_vault, TokenService(local_vault, authz), authz)
    root = ids.bootstrap_root(local_principal("test"))
    stack = AccessStack.build(local_vault)
    admin = local_principal("test")
    rid = _pending(stack, admin)
    app = create_app(
        vault=local_vault, routers=[router], extensions=[functools.partial(install, include_router=False)]
    )
    with ServerThread(app, lifespan="on") as srv:
        monkeypatch.setenv("KEYBROKER_ADDR", srv.url)
        monkeypatch.setenv("KEYBROKER_TOKEN", root.token.reveal())
        run = CliRunner()
        cli = _app()
        r = run.invoke(cli, ["access", "list", "--json"])
        assert r.exit_code == 0, r.output
        assert [x["id"] for x in json.loads(r.stdout)["requests"]] == [rid]
        r = run.invoke(cli, ["access", "deny", rid, "--reason", "not today"])
        assert r.exit_code == 0 and f"denied {rid}" in r.stdout
        assert stack.requests.get(admin, rid).status == "denied"
        r = run.invoke(cli, ["access", "approve", rid])
        assert r.exit_code != 0 and r.exception is not None
        assert getattr(r.exception, "code", None) == "request_not_pending"


def test_gateway_command_help() -> None:
    r = CliRunner().invoke(_app(), ["gateway", "--help"])
    assert r.exit_code == 0 and "proxy token" in r.stdout
