"""``import`` and ``export``: reports with line numbers, python-dotenv round trips."""

from __future__ import annotations

import io
import json

import dotenv
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.cli._cmd_data import detect_format, dotenv_quote, env_var_name, render
from keybroker.core._dotenv import parse_dotenv

NASTY = {
    "PLAIN": "sk-abc123",
    "SPACES": "  padded value  ",
    "QUOTES": 'it\'s "quoted"',
    "BACKSLASH": "C:\\path\\n\\t\\\\",
    "NEWLINES": "line1\nline2\r\nline3\n",
    "HASH": "value # not a comment",
    "DOLLAR": "$HOME and $5",
    "REF": "postgres://${HOST}/db and $${LITERAL}",
    "UNICODE": "ключ 🔑",
    "EMPTY": "",
    "EQUALS": "a=b=c",
    "PEM": "-----BEGIN KEY-----\nabc\n-----END KEY-----\n",
}


def test_dotenv_quote_round_trips_through_python_dotenv() -> None:
    text = render(NASTY, _fmt("dotenv"))
    raw = dotenv.dotenv_values(stream=io.StringIO(text), interpolate=False)
    assert raw == NASTY
    interpolated = dotenv.dotenv_values(stream=io.StringIO(text), interpolate=True)
    assert {k: v for k, v in interpolated.items() if "${" not in NASTY[k]} == {
        k: v for k, v in NASTY.items() if "${" not in v
    }
    # keybroker's own parser reads it back exactly, references and all
    assert parse_dotenv(text, expand=True).as_dict() == NASTY


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_dotenv_quote_property(value: str) -> None:
    line = f"K={dotenv_quote(value)}\n"
    assert dotenv.dotenv_values(stream=io.StringIO(line), interpolate=False) == {"K": value}
    assert parse_dotenv(line, expand=True).as_dict() == {"K": value}
    if "${" not in value:
        assert dotenv.dotenv_values(stream=io.StringIO(line), interpolate=True) == {"K": value}


def _fmt(name: str):  # type: ignore[no-untyped-def]
    from keybroker.cli._cmd_data import ExportFormat

    return ExportFormat(name)


def test_detect_format_and_env_names() -> None:
    from pathlib import Path

    for name in (".zshrc", ".bashrc", ".profile", ".bash_profile", "env.sh", "zshrc"):
        assert detect_format(Path(name)).value == "shell", name
    for name in (".env", ".env.local", "prod.env", "secrets.txt"):
        assert detect_format(Path(name)).value == "dotenv", name
    assert env_var_name("OPENAI_API_KEY") == "OPENAI_API_KEY"
    assert env_var_name("openai/api-key") == "OPENAI_API_KEY"


def test_import_dotenv_reports_lines(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    f = cli_env.tmp / ".env"
    f.write_text(
        "# comment\n"
        "OPENAI_API_KEY=sk-one\n"
        'export MULTI="a\n'
        'b"\n'
        "BROKEN='never closed\n"
        "bad-name!=x\n"
        "JUST_A_KEY\n"
        "EMPTY=\n"
        "EXPANDED=${OPENAI_API_KEY}-x\n"
    )
    out = kb("import", str(f), code=1)
    assert "imported 4 secrets into default/default/dev: OPENAI_API_KEY, MULTI, EMPTY, EXPANDED" in out.stdout
    assert (
        "skipped line 5:" in out.stdout
        and "skipped line 6:" in out.stdout
        and "skipped line 7:" in out.stdout
    )
    assert out.stderr.startswith("error: 3 lines of .env could not be imported (line 5, 6, 7)")
    assert "never closed" not in out.stdout + out.stderr
    assert kb("secret", "get", "MULTI", "--plain").stdout == "a\nb"
    assert kb("secret", "get", "EXPANDED", "--plain").stdout == "sk-one-x"
    assert kb("secret", "get", "EMPTY", "--plain").stdout == ""
    # a second import skips what exists unless told to overwrite
    f2 = cli_env.tmp / "second.env"
    f2.write_text("OPENAI_API_KEY=sk-two\nNEW_ONE=n\n")
    rep = json.loads(kb("import", str(f2), "--output", "json").stdout)
    assert [i["name"] for i in rep["imported"]] == ["NEW_ONE"]
    assert rep["skipped"] == [{"line": 1, "name": "OPENAI_API_KEY", "reason": "exists (use --overwrite)"}]
    assert kb("secret", "get", "OPENAI_API_KEY", "--plain").stdout == "sk-one"
    rep = json.loads(kb("import", str(f2), "--overwrite", "--dry-run", "--output", "json").stdout)
    assert rep["dry_run"] and [i["name"] for i in rep["imported"]] == ["OPENAI_API_KEY", "NEW_ONE"]
    assert kb("secret", "get", "OPENAI_API_KEY", "--plain").stdout == "sk-one"
    kb("import", str(f2), "--overwrite")
    assert kb("secret", "get", "OPENAI_API_KEY", "--plain").stdout == "sk-two"
    audit = json.loads(kb("audit", "list", "--action", "import", "--output", "json").stdout)
    assert [a["result"] for a in audit] == ["partial", "ok", "dry-run", "ok"]
    assert "sk-" not in json.dumps(audit)


def test_import_shell_rc(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    rc = cli_env.tmp / ".zshrc"
    rc.write_text(
        "alias ll='ls -l'\n"
        "export ANTHROPIC_API_KEY='sk-ant-1'\n"
        'export PATH="$HOME/bin:$PATH"\n'
        "export STRIPE_KEY=sk_test_2 # billing\n"
        "setopt autocd\n"
    )
    out = kb("import", str(rc))
    assert "imported 2 secrets" in out.stdout and "ANTHROPIC_API_KEY, STRIPE_KEY" in out.stdout
    assert "skipped line 3: needs shell evaluation" in out.stdout
    assert "skipped 2 other lines: not export lines" in out.stdout
    assert kb("secret", "get", "STRIPE_KEY", "--plain").stdout == "sk_test_2"
    # --format overrides the name-based guess
    env_like = cli_env.tmp / "vars.txt"
    env_like.write_text("export ONLY_SHELL=1\nPLAIN=2\n")
    rep = json.loads(kb("import", str(env_like), "--format", "shell", "--output", "json", "--dry-run").stdout)
    assert [i["name"] for i in rep["imported"]] == ["ONLY_SHELL"]


def test_import_unreadable_files(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    assert "cannot read" in kb("import", str(cli_env.tmp / "missing.env"), code=1).err_line
    binary = cli_env.tmp / "bin.env"
    binary.write_bytes(b"K=\xff\xfe\n")
    assert "not UTF-8" in kb("import", str(binary), code=1).err_line


def test_import_while_sealed(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    f = cli_env.tmp / "a.env"
    f.write_text("A=1\n")
    kb("seal")
    assert "would import 1 secret" in kb("import", str(f), "--dry-run").stdout
    assert kb("import", str(f), code=1).err_line.startswith("error: the vault is sealed")
    kb("import", str(f), "--passphrase-file", str(cli_env.passphrase_file))


def test_export_formats_round_trip(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    for name, value in NASTY.items():
        kb("secret", "set", name, "--stdin", input=value.encode() + b"\n")
    kb("secret", "set", "HOST", "--stdin", input="db")
    expected = {**NASTY, "HOST": "db", "REF": "postgres://db/db and ${LITERAL}"}
    kb("keypair", "generate", "agent")  # key pairs are not exported
    for fmt in ("dotenv", "json", "yaml"):
        out = kb("export", "--format", fmt).stdout
        if fmt == "dotenv":
            got = dotenv.dotenv_values(stream=io.StringIO(out), interpolate=False)
        elif fmt == "json":
            got = json.loads(out)
        else:
            got = yaml.safe_load(out)
        assert got == expected, fmt
        target = cli_env.tmp / f"out.{fmt}"
        err = kb("export", "--format", fmt, "--output-file", str(target)).stderr
        assert f"exported {len(expected)} secrets" in err
        assert target.read_text() == out and target.stat().st_mode & 0o777 == 0o600
    audit = json.loads(kb("audit", "list", "--action", "export", "--output", "json").stdout)
    assert len(audit) == 6 and json.loads(audit[-1]["detail"])["names"] == sorted(expected)
    assert "sk-abc123" not in json.dumps(audit)


def test_export_reimport(vault_cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb = vault_cli
    values = {k: v for k, v in NASTY.items() if "${" not in v}
    for name, value in values.items():
        kb("secret", "set", name, "--stdin", input=value.encode() + b"\n")
    target = cli_env.tmp / "all.env"
    kb("export", "--output-file", str(target))
    kb("project", "create", "copy")
    kb("import", str(target), "-p", "copy")
    again = dotenv.dotenv_values(stream=io.StringIO(kb("export", "-p", "copy").stdout), interpolate=False)
    assert again == values
