"""Real ``python -m keybroker`` processes: the unseal session across invocations, ``run``
(environment, masking, exit codes, signals) and the canary."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST_KDF = ["--kdf-memory-kib", "19456", "--kdf-time-cost", "2"]


def test_session_flow_across_processes(kbp, kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    pf = str(cli_env.passphrase_file)
    kb.init()
    kbp("secret", "set", "K", "--stdin", input=b"session-value")
    assert kbp("secret", "get", "K").stdout == "session-value\n"
    kbp("seal")
    out = kbp("secret", "get", "K", code=1)
    assert out.stderr == "error: the vault is sealed: run `keybroker unseal`\n"
    # --print-session: the key lives only in the caller's environment
    out = kbp("unseal", "--passphrase-file", pf, "--print-session")
    line = out.stdout.strip()
    assert line.startswith("export KEYBROKER_SESSION=kbs_") and out.stdout.count("\n") == 1
    assert not list((cli_env.run_dir / "keybroker").iterdir())
    token = line.split("=", 1)[1]
    assert kbp("secret", "get", "K", env={"KEYBROKER_SESSION": token}).stdout == "session-value\n"
    kbp("secret", "get", "K", code=1)


CHILD = r"""
import os, sys, time
v = os.environ["RUN_SECRET"]
# the value split across two writes, on both streams
sys.stdout.write("out:" + v[:5]); sys.stdout.flush(); time.sleep(0.05)
sys.stdout.write(v[5:] + ":end\n"); sys.stdout.flush()
sys.stderr.write("err:" + v + "\n"); sys.stderr.flush()
sys.stdout.write("path=" + os.environ.get("OPENAI_API_KEY", "-") + "\n")
sys.stdout.write("session=" + os.environ.get("KEYBROKER_SESSION", "absent") + "\n")
sys.exit(int(os.environ.get("CHILD_EXIT", "0")))
"""


def test_run_injects_masks_and_passes_exit_code(kbp, kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb.init()
    kb("secret", "set", "RUN_SECRET", "--stdin", input=b"run-secret-0123456789")
    kb("secret", "set", "openai/api-key", "--stdin", input=b"sk-path-style-key")
    out = kbp(
        "run",
        "--",
        sys.executable,
        "-c",
        CHILD,
        env={"CHILD_EXIT": "7", "KEYBROKER_SESSION": "kbs_x"},
        code=7,
    )
    assert "run-secret-0123456789" not in out.stdout + out.stderr
    assert "out:<concealed by keybroker>:end" in out.stdout
    assert "err:<concealed by keybroker>" in out.stderr
    assert "path=<concealed by keybroker>" in out.stdout
    assert "session=absent" in out.stdout
    out = kbp("run", "--no-masking", "--", sys.executable, "-c", CHILD)
    assert "out:run-secret-0123456789:end" in out.stdout and "path=sk-path-style-key" in out.stdout
    audit = json.loads(kb("audit", "list", "--action", "run", "--output", "json").stdout)
    assert len(audit) == 2
    detail = json.loads(audit[0]["detail"])
    assert detail["names"] == ["RUN_SECRET", "openai/api-key"] and detail["masking"] is True
    assert "run-secret" not in json.dumps(audit)
    out = kbp("run", "--", "/nonexistent/command", code=127)
    assert out.stderr == "error: command not found: /nonexistent/command\n"
    kb("seal")
    assert kbp("run", "--", "true", code=1).stderr.startswith("error: the vault is sealed")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_run_forwards_signals(kbp, kb, cli_env) -> None:  # type: ignore[no-untyped-def]
    kb.init()
    child = (
        "import signal, sys, time\n"
        "def bye(n, f):\n"
        "    print('got', n, flush=True); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        kbp.cmd("run", "--", sys.executable, "-c", child),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=kbp.environ(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert out == b"got 15\n"
    # killed by a signal it does not handle: 128 + signal number
    proc = subprocess.Popen(
        kbp.cmd("run", "--", sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=kbp.environ(),
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode in (130, 1)  # SIGINT -> KeyboardInterrupt in a Python child exits 1


CANARY = "kb-canary-7f3a9c2e5d"


def _no_canary(blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in (CANARY.encode(), CANARY.encode().hex().encode(), CANARY.encode("utf-16-le")):
        assert form not in data, f"the canary leaked into {where}"


def test_canary(kbp, kb, cli_env, caplog) -> None:  # type: ignore[no-untyped-def]
    """A whole CLI session with a recognisable value; afterwards it is nowhere it must not be."""
    caplog.set_level(logging.DEBUG)
    tmp: Path = cli_env.tmp
    allowed: list[str] = []  # outputs that may hold the value: get, export, the run child
    kbp("init", "--passphrase-file", str(cli_env.passphrase_file), *FAST_KDF)
    kbp("secret", "set", "CANARY", "--stdin", input=CANARY.encode() + b"\n")
    got = kbp("secret", "get", "CANARY")
    assert got.stdout == CANARY + "\n"
    allowed.append(got.stdout)
    kbp("secret", "rotate", "CANARY", "--stdin", input=(CANARY + "-rotated").encode())
    kbp("secret", "promote", "CANARY")
    env_file = tmp / "canary.env"
    env_file.write_text(f"IMPORTED={CANARY}-imported\nBROKEN='{CANARY}\n")
    out = kbp("import", str(env_file), code=1)  # the malformed line is reported, by number only
    assert "skipped line 2" in out.stdout
    _no_canary(out.stdout, "the import report")
    export_file = tmp / "export.env"
    kbp("export", "--format", "dotenv", "--output-file", str(export_file))
    assert CANARY in export_file.read_text()
    out = kb("export", "--format", "json")
    allowed.append(out.stdout)
    child = "import os; print(os.environ['CANARY']); print(os.environ['IMPORTED'])"
    out = kbp("run", "--", sys.executable, "-c", child)
    _no_canary(out.stdout, "masked run output")
    audit_file = tmp / "audit.jsonl"
    kbp("audit", "export", "--format", "jsonl", "-o", str(audit_file))
    csv_out = kb("audit", "export", "--format", "csv").stdout
    listing = kb("audit", "list", "--limit", "0", "--output", "json").stdout
    # bad inputs that involve the value: their errors must not repeat it
    bad = [
        kbp("secret", "set", CANARY, "--stdin", input=b"x", code=1),  # the value typed as a name
        kb("secret", "set", "CANARY", "--stdin", "--cas", "1", input=CANARY.encode(), code=1),
        kb("secret", "get", CANARY, code=1),
        kb("secret", "set", "bad name", CANARY, code=1),
    ]
    for r in bad:
        assert r.stderr.startswith("error:") or "\nerror:" in r.stderr
    # and in process, where logging is captured too
    kb("secret", "set", CANARY, "--stdin", input=b"x", code=1)
    kb("secret", "get", "CANARY", "--version", "99", code=1)
    kb("secret", "set", "CANARY", "--stdin", "--cas", "0", input=CANARY.encode(), code=1)
    kb("import", str(env_file), "--overwrite", code=1)
    kb("audit", "hash", "--stdin", input=CANARY.encode())
    kb("secret", "list")
    kb("secret", "describe", "CANARY")
    kb("secret", "history", "CANARY")
    kb("status")

    # -- where the value must not be -------------------------------------------------------------
    for i, stderr in enumerate(cli_env.stderr_log):
        _no_canary(stderr, f"the stderr of command #{i}")
    for stdout in cli_env.stdout_log:
        if stdout not in allowed:
            _no_canary(stdout, "a command's stdout")
    _no_canary(audit_file.read_bytes(), "the audit export")
    _no_canary(csv_out, "the CSV audit export")
    _no_canary(listing, "the audit listing")
    _no_canary(caplog.text, "log output")
    for rec in caplog.records:
        _no_canary(rec.getMessage(), "a log record")
    for path in [*cli_env.home.rglob("*"), *cli_env.run_dir.rglob("*")]:
        if path.is_file():
            _no_canary(path.read_bytes(), str(path))
    if cli_env.sqlite_path is not None:
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(cli_env.sqlite_path) + suffix)
            if p.exists():
                _no_canary(p.read_bytes(), p.name)
    else:
        import sqlalchemy as sa

        eng = sa.create_engine(cli_env.store_url)
        try:
            with eng.connect() as c:
                tables = c.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                ).scalars()
                for t in list(tables):
                    for row in c.execute(sa.text(f'SELECT t::text FROM "{t}" t')).scalars():
                        _no_canary(row, f"PostgreSQL table {t}")
        finally:
            eng.dispose()
