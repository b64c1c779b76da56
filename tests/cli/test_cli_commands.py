"""Every command's happy path and the bad-input paths, in process (CliRunner), on both stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keybroker.cli import _io

# For tests of the command line itself (help, parsing, settings, prompts): the store is
# irrelevant to them, so they run on SQLite only.
sqlite_only = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def js(out: Any) -> Any:
    return json.loads(out.stdout)


# -- init / status / seal / unseal ---------------------------------------------------------------
def test_init_status_and_session(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    st = js(kb("status", "--output", "json"))
    assert st["initialized"] is False
    out = kb.init()
    assert "initialised vault" in out.stdout and "unsealed" in out.stdout
    st = js(kb("--output", "json", "status"))
    assert st["initialized"] and st["sealed"] is False and st["root_kind"] == "passphrase"
    assert st["session"]["expires_at"] and st["secrets"] == 0 and st["audit_records"] >= 1
    # the session file is private and holds no root key in clear
    sess = cli_env.home / "session.json"
    assert sess.stat().st_mode & 0o777 == 0o600
    assert cli_env.home.stat().st_mode & 0o777 == 0o700
    key_files = list((cli_env.run_dir / "keybroker").iterdir())
    assert len(key_files) == 1 and key_files[0].stat().st_mode & 0o777 == 0o600
    assert (cli_env.run_dir / "keybroker").stat().st_mode & 0o777 == 0o700
    text = kb("status").stdout
    assert "sealed" in text and "no" in text
    # second init refuses and changes nothing
    again = kb.init(code=1)
    assert again.err_line.startswith("error: a vault already exists")


def test_seal_then_sealed_error_then_unseal(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "A_KEY", "--stdin", input="value-a\n")
    kb("seal")
    assert not (cli_env.home / "session.json").exists()
    assert not list((cli_env.run_dir / "keybroker").iterdir())
    out = kb("secret", "get", "A_KEY", code=1)
    assert out.stderr == "error: the vault is sealed: run `keybroker unseal`\n"
    assert js(kb("status", "--output", "json"))["sealed"] is True
    # metadata reads work while sealed; values do not
    assert [m["name"] for m in js(kb("secret", "list", "--output", "json"))] == ["A_KEY"]
    # a passphrase file unseals for one command only
    assert (
        kb("secret", "get", "A_KEY", "--passphrase-file", str(cli_env.passphrase_file)).stdout == "value-a\n"
    )
    kb("secret", "get", "A_KEY", code=1)
    # the env var does the same for scripts
    env = {"KEYBROKER_PASSPHRASE_FILE": str(cli_env.passphrase_file)}
    assert kb("secret", "get", "A_KEY", "--plain", env=env).stdout == "value-a"
    kb("unseal", "--passphrase-stdin", input="correct horse battery staple\n")
    assert kb("secret", "get", "A_KEY").stdout == "value-a\n"


def test_idle_auto_seal_and_session_audit(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    import os
    import time

    kb = vault_cli
    kb("secret", "set", "K", "--stdin", input="v")
    kb("unseal", "--passphrase-file", str(cli_env.passphrase_file), env={"KEYBROKER_AUTO_SEAL_MINUTES": "1"})
    st = js(kb("status", "--output", "json"))
    assert st["sealed"] is False and st["session"]["idle_timeout_minutes"] == 1
    kb("secret", "get", "K")  # a use restarts the idle timer
    sess = cli_env.home / "session.json"
    assert time.time() - sess.stat().st_mtime < 30
    old = time.time() - 120
    os.utime(sess, (old, old))
    out = kb("secret", "get", "K", code=1)
    assert (
        out.stderr == "error: the vault is sealed (auto-sealed after 1 minute idle): run `keybroker unseal`\n"
    )
    assert not sess.exists() and not list((cli_env.run_dir / "keybroker").iterdir())
    # every command that used the session is audited as an unseal from the session
    entries = js(kb("audit", "list", "--action", "vault.unseal", "--limit", "0", "--output", "json"))
    clients = [e["client"] for e in entries]
    assert clients.count("keybroker-cli/session") == 2 and "keybroker-cli" in clients


def test_wrong_passphrase_changes_nothing(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "A_KEY", "--stdin", input="value-a")
    kb("seal")
    before = js(kb("status", "--output", "json"))
    out = kb("unseal", "--passphrase-stdin", input="not the passphrase\n", code=1)
    assert out.stderr.count("\n") == 1
    assert out.err_line == "error: wrong passphrase: the vault stays sealed and nothing was changed"
    bad = cli_env.tmp / "bad"
    bad.write_text("nope\n")
    bad.chmod(0o600)
    assert kb("secret", "get", "A_KEY", "--passphrase-file", str(bad), code=1).err_line.startswith(
        "error: wrong passphrase"
    )
    after = js(kb("status", "--output", "json"))
    assert after["sealed"] and after["secrets"] == before["secrets"] == 1
    assert not (cli_env.home / "session.json").exists()
    kb("unseal", "--passphrase-file", str(cli_env.passphrase_file))
    assert kb("secret", "get", "A_KEY", "--plain").stdout == "value-a"


def test_json_errors_and_codes(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    out = kb("--output", "json", "secret", "get", "MISSING", code=1)
    assert json.loads(out.stderr) == {
        "error": "no secret 'MISSING' in default/default/dev",
        "code": "secret_not_found",
    }
    out = kb("secret", "get", "MISSING", "--output", "json", code=1)
    assert json.loads(out.stderr)["code"] == "secret_not_found"
    assert out.stdout == ""


def test_not_initialised(kb) -> None:  # type: ignore[no-untyped-def]
    out = kb("secret", "list", code=1)
    assert out.stderr == "error: no vault here yet: run `keybroker init`\n"
    kb("unseal", code=1)


@sqlite_only
def test_usage_errors_exit_2(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    assert kb("secret", "get", code=2).code == 2
    assert kb("nonsense", code=2).code == 2
    assert kb("export", "--format", "xml", code=2).code == 2


@sqlite_only
def test_init_refuses_weak_kdf(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    out = kb("init", "--passphrase-file", str(cli_env.passphrase_file), "--kdf-memory-kib", "1024", code=1)
    assert "OWASP" in out.err_line
    assert js(kb("status", "--output", "json"))["initialized"] is False


def test_init_with_key_file(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    key = cli_env.tmp / "keys" / "root.key"
    out = kb("init", "--key-file", str(key), "--project", "web")
    assert "back it up" in out.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    kb("secret", "set", "K", "--stdin", "-p", "web", input="v")
    kb("seal")
    assert "key file" in kb("unseal", code=1).err_line
    kb("secret", "get", "K", "-p", "web", code=1)
    assert kb("secret", "get", "K", "-p", "web", env={"KEYBROKER_KEY_FILE": str(key)}).stdout == "v\n"
    kb("unseal", "--key-file", str(key))
    assert kb("-p", "web", "secret", "get", "K").stdout == "v\n"


def test_init_dev_mode(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    import base64
    import os

    dev_key = base64.b64encode(os.urandom(32)).decode()
    out = kb("init", "--dev", code=1, env={"KEYBROKER_DEV_ROOT_KEY": dev_key})
    assert "ignored unless KEYBROKER_DEV_MODE=1" in out.stderr
    env = {"KEYBROKER_DEV_MODE": "1", "KEYBROKER_DEV_ROOT_KEY": dev_key}
    out = kb("init", "--dev", env=env)
    assert out.stderr.startswith("warning: dev mode")
    kb("seal")
    # dev mode unseals every command from the environment, warning every time
    out = kb("secret", "set", "D", "--stdin", input="dv", env=env)
    assert "warning: dev mode" in out.stderr
    assert kb("secret", "get", "D", env=env).stdout == "dv\n"
    assert kb("secret", "get", "D", code=1).err_line.startswith("error: the vault is sealed")
    bad = {"KEYBROKER_DEV_MODE": "1", "KEYBROKER_DEV_ROOT_KEY": "c2hvcnQ="}
    out = kb("secret", "get", "D", env=bad, code=1)
    assert out.err_line == "error: KEYBROKER_DEV_ROOT_KEY must be the base64 form of 32 random bytes"


@sqlite_only
def test_init_keychain(kb, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import keyring
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.store: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.store.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.store[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        kb("init", "--keychain")
        kb("secret", "set", "K", "--stdin", input="kv")
        kb("seal")
        kb("unseal")
        assert kb("secret", "get", "K").stdout == "kv\n"
    finally:
        keyring.set_keyring(previous)


@sqlite_only
def test_interactive_prompts(kb, cli_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_io, "is_interactive", lambda: True)
    pw = "a long passphrase"
    kb("init", *["--kdf-memory-kib", "19456", "--kdf-time-cost", "2"], "--yes", input=f"{pw}\n{pw}\n")
    kb("secret", "set", "P", input="prompted-value\n")
    kb("seal")
    kb("unseal", input=f"{pw}\n")
    assert kb("secret", "get", "P").stdout == "prompted-value\n"
    # confirmation: "n" keeps the secret
    kb("secret", "delete", "P", input="n\n", code=1)
    assert kb("secret", "get", "P").stdout == "prompted-value\n"
    kb("secret", "delete", "P", input="y\n")
    kb("secret", "get", "P", code=1)


# -- secrets -------------------------------------------------------------------------------------
def test_secret_set_get_variants(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    out = kb("secret", "set", "ARG_KEY", "from-arg")
    assert "shell history" in out.stderr and "stored ARG_KEY version 1" in out.stdout
    f = cli_env.tmp / "value.bin"
    f.write_bytes(b"line1\nline2\n")
    kb("secret", "set", "FILE_KEY", "--file", str(f))
    assert kb("secret", "get", "FILE_KEY", "--plain").stdout == "line1\nline2\n"
    kb("secret", "set", "STDIN_KEY", "--stdin", input="from-stdin\n")
    assert kb("secret", "get", "STDIN_KEY", "--plain").stdout == "from-stdin"
    kb("secret", "set", "openai/api_key", "--stdin", input="path-style")
    got = js(kb("secret", "get", "openai/api_key", "--output", "json"))
    assert got["value"] == "path-style" and got["version"] == 1
    assert (
        "give the value one way only" in kb("secret", "set", "X", "v", "--stdin", input="v", code=1).err_line
    )
    assert "no value given" in kb("secret", "set", "X", code=1).err_line
    assert (
        "--plain or --output json"
        in kb("secret", "get", "ARG_KEY", "--plain", "--output", "json", code=1).stderr
    )


def test_secret_metadata_and_list(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb(
        "secret", "set", "STRIPE_KEY", "--stdin",
        "--description", "billing", "--tag", "pay", "--tag", "prod",
        "--owner", "ops", "--expires", "2000-01-01", "--rotation-period", "30d",
        "--risk", "high", "--provider", "stripe",
        input="sk_live_x",
    )  # fmt: skip
    d = js(kb("secret", "describe", "STRIPE_KEY", "--output", "json"))
    assert d["tags"] == ["pay", "prod"] and d["owner"] == "ops" and d["risk"] == "high"
    assert d["provider"] == "stripe" and d["rotation_period_s"] == 30 * 86400 and d["expired"] is True
    assert d["expires_at"].startswith("2000-01-01")
    text = kb("secret", "describe", "STRIPE_KEY").stdout
    assert "billing" in text and "30d" in text
    kb("secret", "set", "OTHER", "--stdin", "--expires", "90d", input="x")
    listing = kb("secret", "list").stdout
    assert "STRIPE_KEY" in listing and "expired" in listing and "stripe" in listing and "OTHER" in listing
    assert [m["name"] for m in js(kb("secret", "list", "--prefix", "STR", "--output", "json"))] == [
        "STRIPE_KEY"
    ]
    assert (
        "invalid risk level"
        in kb("secret", "set", "R", "--stdin", "--risk", "extreme", input="x", code=1).stderr
    )
    assert (
        "invalid expiry" in kb("secret", "set", "R", "--stdin", "--expires", "soon", input="x", code=1).stderr
    )
    assert (
        "invalid rotation period"
        in kb("secret", "set", "R", "--stdin", "--rotation-period", "30", input="x", code=1).stderr
    )


def test_versions_labels_rollback(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "K", "--stdin", input="v1")
    kb("secret", "set", "K", "--stdin", "--cas", "1", input="v2")
    out = kb("secret", "rotate", "K", "--stdin", input="v3")
    assert "version 3 is pending" in out.stdout
    assert kb("secret", "get", "K", "--plain").stdout == "v2"
    assert kb("secret", "get", "K", "--label", "pending", "--plain").stdout == "v3"
    assert "version 3 is current" in kb("secret", "promote", "K").stdout
    assert kb("secret", "get", "K", "--plain").stdout == "v3"
    assert kb("secret", "get", "K", "--label", "previous", "--plain").stdout == "v2"
    assert kb("secret", "get", "K", "--version", "1", "--plain").stdout == "v1"
    kb("secret", "rollback", "K", "1")
    assert kb("secret", "get", "K", "--plain").stdout == "v1"
    hist = js(kb("secret", "history", "K", "--output", "json"))
    assert [h["version"] for h in hist] == [1, 2, 3, 4] and hist[3]["labels"] == ["current"]
    assert "previous" in kb("secret", "history", "K").stdout
    # missing version / label / secret / promote without pending
    assert kb("secret", "get", "K", "--version", "9", code=1).err_line == "error: secret 'K' has no version 9"
    assert "no pending version" in kb("secret", "promote", "K", code=1).err_line
    assert "no secret 'NOPE'" in kb("secret", "get", "NOPE", code=1).err_line
    assert kb("secret", "history", "NOPE", code=1).code == 1


def test_cas_conflict_leaves_value(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "K", "--stdin", "--cas", "0", input="original")
    out = kb("secret", "set", "K", "--stdin", "--cas", "0", input="clobber", code=1)
    assert out.err_line == "error: check-and-set failed for 'K': latest version is 1, not 0"
    out = kb("secret", "set", "K", "--stdin", "--cas", "5", input="clobber", code=1)
    assert "latest version is 1, not 5" in out.err_line
    assert kb("secret", "get", "K", "--plain").stdout == "original"
    assert js(kb("secret", "describe", "K", "--output", "json"))["latest_version"] == 1


def test_invalid_names(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    for bad in ("bad name", "-x", "a//b", "9lives!", "x" * 300):
        out = kb("secret", "set", bad, "--stdin", input="v", code=None)
        assert out.code in (1, 2)
        if out.code == 1:
            assert out.err_line.startswith("error: invalid secret name")
            assert bad not in out.stderr
    assert "invalid project name" in kb("secret", "list", "-p", "Bad Project", code=1).err_line
    assert "no project 'ghost'" in kb("secret", "list", "-p", "ghost", code=1).err_line
    assert "no environment 'qa'" in kb("secret", "list", "-e", "qa", code=1).err_line


def test_delete_undelete_destroy(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "K", "--stdin", input="v1")
    kb("secret", "set", "K", "--stdin", input="v2")
    assert "pass --yes" in kb("secret", "delete", "K", code=1).err_line
    kb("secret", "delete", "K", "--yes")
    assert "deleted" in kb("secret", "get", "K", code=1).err_line
    assert js(kb("secret", "list", "--output", "json")) == []
    assert "deleted" in kb("secret", "list", "--deleted").stdout
    kb("secret", "undelete", "K")
    assert kb("secret", "get", "K", "--plain").stdout == "v2"
    kb("secret", "delete", "K", "--version", "1", "--yes")
    assert "is deleted" in kb("secret", "get", "K", "--version", "1", code=1).err_line
    kb("secret", "undelete", "K", "--version", "1")
    assert kb("secret", "get", "K", "--version", "1", "--plain").stdout == "v1"
    assert "pass --yes" in kb("secret", "destroy", "K", "--version", "1", code=1).err_line
    kb("secret", "destroy", "K", "--version", "1", "--yes")
    assert "destroyed" in kb("secret", "get", "K", "--version", "1", code=1).err_line
    assert "no version(s) 7" in kb("secret", "destroy", "K", "--version", "7", "--yes", code=1).err_line
    assert kb("secret", "get", "K", "--plain").stdout == "v2"
    assert kb("secret", "destroy", "K", "--yes", code=2).code == 2  # --version is required


def test_references(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "HOST", "--stdin", input="db.example")
    kb("secret", "set", "URL", "--stdin", input="postgres://${HOST}/app")
    assert kb("secret", "get", "URL", "--plain").stdout == "postgres://db.example/app"
    assert kb("secret", "get", "URL", "--plain", "--no-resolve").stdout == "postgres://${HOST}/app"
    kb("secret", "set", "LOOP", "--stdin", input="${LOOP}")
    assert "reference cycle" in kb("secret", "get", "LOOP", code=1).err_line
    kb("secret", "set", "DANGLING", "--stdin", input="${NOPE}")
    assert "does not exist" in kb("secret", "get", "DANGLING", code=1).err_line


# -- projects and environments -------------------------------------------------------------------
def test_projects_and_envs(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("project", "create", "web", "--env", "dev", "--env", "prod", "--description", "site")
    assert "already exists" in kb("project", "create", "web", code=1).err_line
    projects = js(kb("project", "list", "--output", "json"))
    assert {p["name"]: p["environments"] for p in projects}["web"] == ["dev", "prod"]
    assert "web" in kb("project", "list").stdout
    kb("env", "create", "qa", "--project", "web")
    assert js(kb("env", "list", "-p", "web", "--output", "json")) == ["dev", "prod", "qa"]
    kb("-p", "web", "-e", "qa", "secret", "set", "K", "--stdin", input="qa-value")
    assert kb("secret", "get", "K", "-p", "web", "-e", "qa", "--plain").stdout == "qa-value"
    kb("secret", "get", "K", code=1)  # not in default/dev
    # environment variables and .keybroker.toml choose the default scope
    assert kb(
        "secret", "get", "K", "--plain", env={"KEYBROKER_PROJECT": "web", "KEYBROKER_ENV": "qa"}
    ).stdout == ("qa-value")
    (Path.cwd() / ".keybroker.toml").write_text('project = "web"\nenvironment = "qa"\n')
    sub = Path.cwd() / "sub"
    sub.mkdir()
    import os

    os.chdir(sub)
    assert kb("secret", "get", "K", "--plain").stdout == "qa-value"
    # a flag beats the file
    kb("secret", "get", "K", "-e", "dev", code=1)


# -- key pairs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_keypairs(vault_cli, algorithm) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    pub = kb("keypair", "generate", "agents/bot", "--algorithm", algorithm).stdout
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    assert kb("keypair", "get", "agents/bot").stdout == pub
    assert kb("keypair", "public", "agents/bot").stdout == pub
    priv = kb("keypair", "get", "agents/bot", "--reveal").stdout
    assert priv.startswith("-----BEGIN PRIVATE KEY-----")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(priv.encode(), password=None)
    assert (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        == pub
    )
    rotated = js(kb("keypair", "rotate", "agents/bot", "--output", "json"))
    assert rotated["version"] == 2 and rotated["algorithm"] == algorithm and rotated["public_key"] != pub
    assert kb("keypair", "public", "agents/bot", "--version", "1").stdout == pub
    assert "keypair rotate" in kb("keypair", "generate", "agents/bot", code=1).err_line
    other = "rsa-3072" if algorithm == "ed25519" else "ed25519"
    assert "change the algorithm" in kb("keypair", "rotate", "agents/bot", "-a", other, code=1).err_line
    kb("seal")
    assert kb("keypair", "public", "agents/bot").stdout == rotated["public_key"] + (
        "" if rotated["public_key"].endswith("\n") else "\n"
    )
    kb("keypair", "get", "agents/bot", "--reveal", code=1)


# -- audit ---------------------------------------------------------------------------------------
def test_audit_list_export_hash_verify(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "LEAKY", "--stdin", input="leaked-value-123")
    kb("secret", "get", "LEAKY")
    entries = js(kb("audit", "list", "--output", "json"))
    actions = [e["action"] for e in entries]
    assert "vault.init" in actions and "secret.write" in actions and "secret.read" in actions
    assert all(e["client"].startswith("keybroker-cli") for e in entries)
    assert js(kb("audit", "list", "--action", "secret.read", "--output", "json"))[0]["target"] == (
        "default/default/dev/LEAKY"
    )
    assert len(js(kb("audit", "list", "--limit", "2", "--output", "json"))) == 2
    assert js(kb("audit", "list", "--since", "2999-01-01", "--output", "json")) == []
    assert len(js(kb("audit", "list", "--since", "1h", "--output", "json"))) >= 3
    assert "secret.read" in kb("audit", "list").stdout
    lines = kb("audit", "export", "--format", "jsonl").stdout.splitlines()
    assert all(json.loads(line)["hash"] for line in lines)
    out_file = cli_env.tmp / "audit.csv"
    kb("audit", "export", "--format", "csv", "-o", str(out_file), "--since", "2000-01-01")
    assert out_file.read_text().startswith("seq,ts,actor,action")
    hashed = js(kb("audit", "hash", "--stdin", "--output", "json", input="leaked-value-123"))
    assert hashed["value_hmac"].startswith("hmac-sha256:")
    assert {r["action"] for r in hashed["records"]} == {"secret.write", "secret.read"}
    assert "no audit record" in kb("audit", "hash", "--stdin", input="never-stored").stdout
    assert "intact" in kb("audit", "verify").stdout
    assert js(kb("audit", "verify", "--output", "json"))["ok"] is True


def test_audit_verify_detects_tampering(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    for i in range(3):
        kb("secret", "set", f"K{i}", "--stdin", input=f"v{i}")
    find = "SELECT seq FROM kb_audit_log WHERE target LIKE '%/K1' AND action = 'secret.write'"
    if cli_env.sqlite_path is not None:  # edit the row behind keybroker's back, with sqlite3
        import sqlite3

        con = sqlite3.connect(cli_env.sqlite_path)
        try:
            (seq,) = con.execute(find).fetchone()
            con.execute("UPDATE kb_audit_log SET actor = 'user:mallory' WHERE seq = ?", (seq,))
            con.commit()
        finally:
            con.close()
    else:
        import sqlalchemy as sa

        eng = sa.create_engine(cli_env.store_url)
        try:
            with eng.begin() as c:
                seq = c.execute(sa.text(find)).scalar_one()
                c.execute(
                    sa.text("UPDATE kb_audit_log SET actor = 'user:mallory' WHERE seq = :s"), {"s": seq}
                )
        finally:
            eng.dispose()
    out = kb("audit", "verify", code=1)
    assert (
        out.stderr
        == f"error: audit log broken at record {seq}: its contents were changed after it was written\n"
    )
    res = js(kb("audit", "verify", "--output", "json", code=1))
    assert res["ok"] is False and res["first_bad_seq"] == seq


# -- rekey ---------------------------------------------------------------------------------------
def test_rekey_keeps_values(vault_cli) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    for i in range(5):
        kb("secret", "set", f"K{i}", "--stdin", input=f"value-{i}")
    kb("secret", "rotate", "K0", "--stdin", input="value-0b")
    assert "pass --yes" in kb("rekey", code=1).err_line
    out = kb("rekey", "--yes")
    assert "key-encryption key 2 is current; 6 data keys re-wrapped" in out.stdout
    assert "re-wrapping data keys" in out.stderr
    assert js(kb("rekey", "--yes", "--output", "json"))["kek_id"] == 3
    for i in range(5):
        assert kb("secret", "get", f"K{i}", "--plain").stdout == f"value-{i}"
    assert kb("secret", "get", "K0", "--label", "pending", "--plain").stdout == "value-0b"
    assert js(kb("status", "--output", "json"))["keks"] == 3
    kb("audit", "verify")


# -- errors from the store and from corrupted data -------------------------------------------------
def test_corrupted_ciphertext_names_secret_and_version(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    kb("secret", "set", "K", "--stdin", input="v1")
    kb("secret", "set", "K", "--stdin", input="v2")
    import sqlalchemy as sa

    eng = sa.create_engine(cli_env.store_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with eng.begin() as c:
            ct = c.execute(
                sa.text("SELECT ciphertext FROM kb_secret_versions WHERE version = 2")
            ).scalar_one()
            flipped = bytes(ct[:-1]) + bytes([ct[-1] ^ 1])
            c.execute(
                sa.text("UPDATE kb_secret_versions SET ciphertext = :c WHERE version = 2"), {"c": flipped}
            )
    finally:
        eng.dispose()
    out = kb("secret", "get", "K", code=1)
    assert out.stderr == (
        "error: secret 'K' version 2 in default/default/dev could not be decrypted "
        "(corrupted, tampered with, or moved)\n"
    )
    assert kb("secret", "get", "K", "--version", "1", "--plain").stdout == "v1"


@sqlite_only
def test_unreachable_database_is_one_line(kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    out = kb("status", code=1, env={"KEYBROKER_DB_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: the database is unreachable")
    out = kb("status", code=1, env={"KEYBROKER_DB_URL": "nonsense://"})
    assert out.stderr == (
        "error: KEYBROKER_DB_URL is not a usable database URL (sqlite:///PATH or postgresql://...)\n"
    )


@sqlite_only
def test_locked_database_is_one_line(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    kb = vault_cli
    holder = sqlite3.connect(cli_env.sqlite_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        from keybroker.store import _engine

        original = _engine.Store.__init__

        def fast(self, url, *, engine=None, busy_timeout_ms=10000):  # type: ignore[no-untyped-def]
            original(self, url, engine=engine, busy_timeout_ms=200)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_engine.Store, "__init__", fast)
            out = kb("secret", "set", "K", "--stdin", input="v", code=1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.stderr.count("\n") == 1
    assert out.err_line == "error: the database is locked by another writer; try again"
    kb("secret", "set", "K", "--stdin", input="v")


def test_disk_full_is_one_line(vault_cli) -> None:  # type: ignore[no-untyped-def]
    from keybroker.core import SecretService
    from keybroker.errors import StoreFull

    kb = vault_cli
    kb("secret", "set", "K", "--stdin", input="kept")

    def full(*a, **k):  # type: ignore[no-untyped-def]
        raise StoreFull("the disk is full; the write was not stored and nothing else changed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SecretService, "put", full)
        out = kb("secret", "set", "K", "--stdin", input="new", code=1)
    assert out.stderr == "error: the disk is full; the write was not stored and nothing else changed\n"
    assert kb("secret", "get", "K", "--plain").stdout == "kept"


def test_unexpected_error_is_one_line_with_hint(vault_cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from keybroker.core import SecretService

    kb = vault_cli

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("internal detail that may hold anything")

    monkeypatch.setattr(SecretService, "list_secrets", boom)
    out = kb("secret", "list", code=1)
    assert (
        out.stderr == "error: unexpected RuntimeError; re-run with KEYBROKER_DEBUG=1 to see the traceback\n"
    )
    with pytest.raises(RuntimeError):
        kb("secret", "list", env={"KEYBROKER_DEBUG": "1"}, code=None)


@sqlite_only
def test_bad_settings_are_one_line(kb) -> None:  # type: ignore[no-untyped-def]
    out = kb("status", env={"KEYBROKER_AUTO_SEAL_MINUTES": "soon"}, code=1)
    assert out.stderr.startswith("error: invalid setting KEYBROKER_AUTO_SEAL_MINUTES:")
    assert "soon" not in out.stderr


@sqlite_only
def test_version_and_help(kb) -> None:  # type: ignore[no-untyped-def]
    assert kb("--version").stdout.startswith("keybroker ")
    assert "secret" in kb("--help").stdout
    for group in ("secret", "project", "env", "keypair", "audit"):
        assert "Usage" in kb(group, "--help").stdout
