"""``keybroker migrate`` through a Typer app built here (the real CLI wires the same register)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from keybroker.backends import EncryptedFileStore, NativeStore
from keybroker.backends._cli import register
from keybroker.core import RawRoot, Scope, SecretService


@pytest.fixture
def file_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, RawRoot]:
    key = os.urandom(32)
    monkeypatch.setenv("KB_TEST_FILE_KEY", base64.b64encode(key).decode())
    return f"file://{tmp_path}/src.kbf?root_key_env=KB_TEST_FILE_KEY", RawRoot(key, kind="key")


def make_app(secrets: SecretService | None = None, me: Any = None) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """test root"""

    register(app, native_opener=(lambda scope: (secrets, me)) if secrets is not None else None)
    return app


def test_file_to_native_with_report(
    file_env: tuple[str, RawRoot], tmp_path: Path, secrets: SecretService, me: Any
) -> None:
    url, root = file_env
    src = EncryptedFileStore(tmp_path / "src.kbf", root)
    for i in range(5):
        src.put(f"K{i}", f"canary-cli-{i}")
    src.put("K0", "canary-cli-0b")
    runner = CliRunner()
    app = make_app(secrets, me)
    dry = runner.invoke(app, ["migrate", "--from", url, "--to", "keybroker://default/dev", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "5 would copy (6 version(s))" in dry.output
    state = tmp_path / "state.json"
    res = runner.invoke(
        app, ["migrate", "--from", url, "--to", "keybroker://default/dev", "--state-file", str(state)]
    )
    assert res.exit_code == 0, res.output
    assert "5 copied (6 version(s)), 0 skipped, 0 failed, of 5" in res.output
    assert "canary" not in res.output
    native = NativeStore(secrets, me, Scope("default", "dev"))
    assert native.get("K0").reveal() == "canary-cli-0b"
    assert native.get("K0", label="previous").reveal() == "canary-cli-0"
    again = runner.invoke(
        app,
        ["migrate", "--from", url, "--to", "keybroker://default/dev", "--state-file", str(state), "--json"],
    )
    assert again.exit_code == 0
    report = json.loads(again.stdout)
    assert report["copied"] == 0 and report["skipped"] == 5


def test_errors_exit_non_zero(file_env: tuple[str, RawRoot], tmp_path: Path) -> None:
    url, _ = file_env
    runner = CliRunner()
    app = make_app()
    res = runner.invoke(app, ["migrate", "--from", url, "--to", "vault://127.0.0.1:1/secret?token=abc"])
    assert res.exit_code == 1
    assert "credentials never go in a store URL" in res.output
    assert "abc" not in res.output
    res = runner.invoke(app, ["migrate", "--from", url, "--to", "nonsense://x", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["error"]["code"] == "invalid_input"


def test_failures_in_report_exit_1(
    file_env: tuple[str, RawRoot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = file_env
    src = EncryptedFileStore(tmp_path / "src.kbf", root)
    src.put("GOOD", "v")
    src.put("lower-case-bad", "v")  # fine in a file, not an env-var or path name in keybroker
    # a read-only target is refused before anything is copied
    monkeypatch.setenv("APP_X", "1")
    with pytest.warns(Warning):
        res = CliRunner().invoke(make_app(), ["migrate", "--from", url, "--to", "env://APP_"])
    assert res.exit_code == 1
    assert "read-only" in res.output
