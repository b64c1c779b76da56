"""``keybroker gateway`` as a process of its own over the same store: it serves proxy tokens issued
elsewhere, and a revocation made by another process reaches it within its recheck interval."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keybroker.core import KeyFileRoot, Principal, Scope, SystemClock, Vault
from keybroker.gateway._testing import AccessStack, FakeUpstream, ServerThread
from keybroker.store import Store

SRC = Path(__file__).resolve().parents[2] / "src"
REAL = "sk-proj-STANDALONE-key-0123456789abcdef"
ADMIN = Principal(id="admin", kind="user", client="test", local=True)
LAUNCH = (
    "import typer, sys\n"
    "from keybroker.gateway._cli import register\n"
    "app = typer.Typer()\n"
    "@app.callback()\n"
    "def _r() -> None: ...\n"
    "register(app)\n"
    "app(sys.argv[1:])\n"
)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vault, Path, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    key = tmp_path / "root.key"
    vault = Vault(Store(url), SystemClock())
    vault.initialize(KeyFileRoot(key), ADMIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env.update(
        PYTHONPATH=str(SRC) + os.pathsep + env.get("PYTHONPATH", ""),
        KEYBROKER_DB_URL=url,
        KEYBROKER_HOME=str(tmp_path / "home"),
        KEYBROKER_GATEWAY_RECHECK_S="0.2",
    )
    yield vault, key, env
    vault.store.dispose()


@pytest.mark.slow
def test_standalone_gateway_process(setup: tuple[Vault, Path, dict[str, str]]) -> None:
    vault, key, env = setup
    stack = AccessStack.build(vault)
    up = FakeUpstream(keys={REAL})
    with ServerThread(up) as up_srv:
        stack.put_key(ADMIN, "OPENAI_API_KEY", REAL, provider="openai", base_url=up_srv.url)
        session = stack.sessions.open_use_session(ADMIN, Scope(), ["OPENAI_API_KEY"])
        issued = stack.tokens.issue(ADMIN, session.id, Scope(), "OPENAI_API_KEY")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "gateway", "--port", str(port), "--key-file", str(key)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/_health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
            h = {"authorization": f"Bearer {issued.token.reveal()}"}
            r = httpx.post(f"{base}/openai/v1/chat/completions", json={"model": "gpt-test"}, headers=h)
            assert r.status_code == 200 and up.seen[-1].key == REAL
            stack.sessions.revoke(ADMIN, session.id)  # in this process, not the gateway's
            time.sleep(0.5)
            r = httpx.post(f"{base}/openai/v1/chat/completions", json={"model": "gpt-test"}, headers=h)
            assert r.status_code == 401 and r.json()["error"]["code"] == "proxy_token_revoked"
            assert len(up.seen) == 1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    uses = [e for e in vault.audit.iter_entries(action="gateway.use")]
    assert [e.result for e in uses] == ["ok", "denied:proxy_token_revoked"]
