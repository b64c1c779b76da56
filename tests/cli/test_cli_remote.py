"""The CLI in client mode (``--addr``/``KEYBROKER_ADDR`` + ``KEYBROKER_TOKEN``): the same commands,
outputs and one-line errors against a real ``keybroker serve`` (uvicorn on a free port, SQLite)
as against the local vault file. The token never shows in any output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keybroker.cli import app
from keybroker.core import ManualClock
from keybroker.server import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from kb_live import LiveServer, new_vault, server_settings  # type: ignore[import-not-found,unused-ignore]

P, E = "default", "dev"


@dataclass
class Remote:
    url: str
    token: str
    tmp: Path
    outputs: list[str] = field(default_factory=list)
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(
        self, *args: str, code: int | None = 0, input: str | None = None, env: dict[str, str] | None = None
    ) -> Any:
        r = self.runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)
        self.outputs += [r.stdout, r.stderr]
        if code is not None:
            assert r.exit_code == code, f"{args}: exit {r.exit_code} stdout={r.stdout!r} stderr={r.stderr!r}"
        return r

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_"):
            monkeypatch.delenv(k)
    clock = ManualClock()
    vault, root = new_vault(f"sqlite:///{tmp_path / 'server.db'}", clock)
    server = LiveServer(create_app(server_settings(), vault=vault, clock=clock)).start()
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "run").mkdir(mode=0o700)
    # a local store that was never initialised: anything that fell back to it would fail
    monkeypatch.setenv("KEYBROKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYBROKER_DB_URL", f"sqlite:///{tmp_path / 'local.db'}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("KEYBROKER_ADDR", server.url)
    monkeypatch.setenv("KEYBROKER_TOKEN", root)
    monkeypatch.chdir(work)
    r = Remote(server.url, root, tmp_path)
    try:
        yield r
    finally:
        for out in r.outputs:
            assert root not in out, "the token leaked into CLI output"
        server.stop()
        vault.store.dispose()


def test_set_in_cli_reads_over_rest_and_back(remote: Remote) -> None:
    out = remote("secret", "set", "OPENAI_API_KEY", "--stdin", "--description", "llm", input="sk-one\n")
    assert "stored OPENAI_API_KEY version 1" in out.stdout
    with remote.http() as h:
        r = h.get(f"/v1/secrets/{P}/{E}/OPENAI_API_KEY")
        assert r.status_code == 200 and r.json()["value"] == "sk-one"
        assert r.json()["metadata"]["description"] == "llm"
        r = h.put(f"/v1/secrets/{P}/{E}/db/password", json={"value": "hunter2"})
        assert r.status_code == 200, r.text
    assert remote("secret", "get", "db/password", "--plain").stdout == "hunter2"
    doc = json.loads(remote("secret", "get", "OPENAI_API_KEY", "--output", "json").stdout)
    assert doc["value"] == "sk-one" and doc["version"] == 1 and doc["metadata"]["description"] == "llm"
    listed = remote("secret", "list").stdout
    assert "OPENAI_API_KEY" in listed and "db/password" in listed and "hunter2" not in listed
    rows = json.loads(remote("--output", "json", "secret", "list").stdout)
    assert sorted(m["name"] for m in rows) == ["OPENAI_API_KEY", "db/password"]
    desc = json.loads(remote("secret", "describe", "OPENAI_API_KEY", "--output", "json").stdout)
    assert desc["description"] == "llm" and desc["current_version"] == 1
    assert "llm" in remote("secret", "describe", "OPENAI_API_KEY").stdout


def test_lifecycle_history_rotate_promote_delete_undelete(remote: Remote) -> None:
    remote("secret", "set", "K", "--stdin", input="v1\n")
    remote("secret", "set", "K", "--stdin", input="v2\n")
    assert "version 3 is pending" in remote("secret", "rotate", "K", "--stdin", input="v3\n").stdout
    assert remote("secret", "get", "K", "--plain").stdout == "v2"
    assert remote("secret", "get", "K", "--label", "pending", "--plain").stdout == "v3"
    assert "version 3 is current" in remote("secret", "promote", "K").stdout
    assert remote("secret", "get", "K", "--plain").stdout == "v3"
    hist = json.loads(remote("secret", "history", "K", "--output", "json").stdout)
    assert [v["version"] for v in hist] == [1, 2, 3]
    labels = {v["version"]: v["labels"] for v in hist}
    assert "current" in labels[3] and "previous" in labels[2]
    assert "VERSION" in remote("secret", "history", "K").stdout
    out = remote("secret", "rollback", "K", "1", "--output", "json").stdout
    assert json.loads(out)["version"] == 4
    assert remote("secret", "get", "K", "--plain").stdout == "v1"
    remote("secret", "delete", "K", "--yes")
    gone = remote("secret", "get", "K", code=1)
    assert gone.stderr.startswith("error: ") and len(gone.stderr.strip().splitlines()) == 1
    assert "K" in remote("secret", "list", "--deleted").stdout
    remote("secret", "undelete", "K")
    assert remote("secret", "get", "K", "--plain").stdout == "v1"
    remote("secret", "destroy", "K", "--version", "2", "--yes")
    states = {
        v["version"]: v["state"]
        for v in json.loads(remote("secret", "history", "K", "--output", "json").stdout)
    }
    assert states[2] == "destroyed"


def test_cas_conflict_exit_1_value_untouched(remote: Remote) -> None:
    remote("secret", "set", "C", "--stdin", input="first\n")
    r = remote("secret", "set", "C", "--stdin", "--cas", "0", input="second\n", code=1)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "second" not in r.stderr
    rj = remote("--output", "json", "secret", "set", "C", "--stdin", "--cas", "7", input="third\n", code=1)
    assert json.loads(rj.stderr)["code"] == "cas_mismatch"
    with remote.http() as h:
        assert h.get(f"/v1/secrets/{P}/{E}/C").json()["value"] == "first"
    remote("secret", "set", "C", "--stdin", "--cas", "1", input="fourth\n")
    assert remote("secret", "get", "C", "--plain").stdout == "fourth"


def test_wrong_or_missing_token_is_one_line(remote: Remote) -> None:
    bad = "kbt_not-a-real-token-0123456789"
    r = remote("secret", "list", code=1, env={"KEYBROKER_TOKEN": bad})
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert bad not in r.stderr + r.stdout
    rj = remote("--output", "json", "secret", "get", "X", code=1, env={"KEYBROKER_TOKEN": bad})
    assert json.loads(rj.stderr)["code"] in (
        "authentication_failed",
        "authentication_error",
        "unauthenticated",
    )
    r = remote("secret", "list", code=1, env={"KEYBROKER_TOKEN": ""})
    assert "KEYBROKER_TOKEN" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_token_file_and_addr_option(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = remote.tmp / "token"
    tf.write_text(remote.token + "\n")
    tf.chmod(0o600)
    monkeypatch.delenv("KEYBROKER_TOKEN")
    monkeypatch.delenv("KEYBROKER_ADDR")
    monkeypatch.setenv("KEYBROKER_TOKEN_FILE", str(tf))
    remote("--addr", remote.url, "secret", "set", "F", "--stdin", input="from-file\n")
    assert remote("--addr", remote.url, "secret", "get", "F", "--plain").stdout == "from-file"
    # `run` hands the child neither the token nor where it is kept
    dump = remote.tmp / "child-env"
    code = f"import os; open({str(dump)!r}, 'w').write(os.environ.get('KEYBROKER_TOKEN_FILE', 'none'))"
    remote("--addr", remote.url, "run", "--", sys.executable, "-c", code)
    assert dump.read_text() == "none"
    # no address: the local vault (never initialised here)
    assert remote("secret", "get", "F", code=1).stderr.startswith("error: ")


def test_run_injects_and_masks(remote: Remote) -> None:
    remote("secret", "set", "API_TOKEN", "--stdin", input="s3cr3t-value-xyz\n")
    remote("secret", "set", "db/url", "--stdin", input="postgres://u:p@h/db\n")
    code = (
        "import os,sys; print(os.environ['API_TOKEN']); print(os.environ['DB_URL']);"
        "print('token' if 'KEYBROKER_TOKEN' in os.environ else 'no-token')"
    )
    r = remote("run", "--", sys.executable, "-c", code)
    assert "s3cr3t-value-xyz" not in r.stdout and "postgres://u:p@h/db" not in r.stdout
    assert "no-token" in r.stdout
    assert "<concealed by keybroker>" in r.stdout
    # the child really got the values (written where no masking applies)
    dump = remote.tmp / "child-env"
    code = f"import os; open({str(dump)!r}, 'w').write(os.environ['API_TOKEN'] + ' ' + os.environ['DB_URL'])"
    remote("run", "--", sys.executable, "-c", code)
    assert dump.read_text() == "s3cr3t-value-xyz postgres://u:p@h/db"


def test_export_and_import(remote: Remote) -> None:
    env_file = remote.tmp / "in.env"
    env_file.write_text("ALPHA=one\nBETA='two words'\n")
    out = remote("import", str(env_file)).stdout
    assert "imported 2 secrets" in out
    with remote.http() as h:
        assert h.get(f"/v1/secrets/{P}/{E}/BETA").json()["value"] == "two words"
    assert "skipped line 1 (ALPHA): exists" in remote("import", str(env_file)).stdout
    exported = json.loads(remote("export", "--format", "json").stdout)
    assert exported == {"ALPHA": "one", "BETA": "two words"}
    assert 'ALPHA="one"' in remote("export").stdout


@pytest.mark.parametrize(
    "args",
    [
        ("init",),
        ("unseal",),
        ("seal",),
        ("rekey",),
        ("keypair", "public", "K"),
        ("audit", "hash"),
        ("project", "list"),
    ],
)
def test_local_only_commands_refuse(remote: Remote, args: tuple[str, ...]) -> None:
    r = remote(*args, code=1)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "local vault" in lines[0], r.stderr


def test_status_shows_the_server(remote: Remote) -> None:
    doc = json.loads(remote("status", "--output", "json").stdout)
    assert doc["addr"] == remote.url and doc["initialized"] is True and doc["sealed"] is False


def test_local_only_help_still_works(remote: Remote) -> None:
    assert "Usage" in remote("init", "--help").stdout
