"""``keybroker serve`` as a process (``python -m keybroker.server``): first run initialises the
embedded vault and writes a root token to a 0600 file (printing its path, never the token);
later runs unseal from the key file; a vault on another store starts sealed and unseals over
HTTP; TLS; graceful shutdown on SIGTERM."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybroker.core import PassphraseRoot, Vault, local_principal
from keybroker.crypto import Argon2Params
from keybroker.store import Store

pytestmark = pytest.mark.slow
PASSPHRASE = "a passphrase for this test only"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, home: Path, **env: str) -> None:
        self.port = _port()
        self.home = home
        scheme = "https" if "KEYBROKER_TLS_CERT" in env else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
        full.update(
            KEYBROKER_HOME=str(home),
            KEYBROKER_PORT=str(self.port),
            KEYBROKER_LOG_LEVEL="info",
            KEYBROKER_EVENTS_POLL_S="0",
            **env,
        )
        self.log = home.parent / f"serve-{self.port}.log"
        self._fh = self.log.open("wb")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "keybroker.server"], env=full, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def wait(self, statuses: tuple[int, ...] = (200, 503, 501)) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v1/sys/health", verify=False, timeout=2).status_code in statuses:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not come up: {self.output()}")

    def stop(self) -> int:
        """SIGTERM; uvicorn drains, runs the shutdown (seal, close the store), then re-raises
        the signal, so a graceful stop ends with -SIGTERM (or 0)."""
        try:
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGTERM)
                try:
                    self.p.wait(20)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait(5)
            return int(self.p.returncode)
        finally:
            self._fh.close()

    def stopped_gracefully(self) -> bool:
        rc = self.stop()
        return rc in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for p in made:
        p.stop()


def test_first_run_then_restart(tmp_path: Path, procs: list[Proc]) -> None:
    home = tmp_path / "home"
    p = Proc(home)
    procs.append(p)
    p.wait((200,))
    token_file = home / "root-token"
    token = token_file.read_text().strip()
    assert token.startswith("kbt_")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700  # the vault file's directory is private
    with httpx.Client(base_url=p.url, headers={"X-Vault-Token": token}) as c:
        assert c.put("/v1/secrets/default/dev/K", json={"value": "persisted-value"}).status_code == 200
        # serve mounts everything: agent access API, the gateway under /gw and MCP under /mcp
        assert c.get("/v1/access-requests").json() == {"requests": []}
        gw = c.post("/gw/openai/v1/chat/completions", headers={"Authorization": "Bearer kbp_x"}, json={})
        assert gw.status_code == 401 and gw.json()["error"]["code"] == "proxy_token_invalid"
        mcp = c.post("/mcp", json={}, headers={"X-Vault-Token": ""})
        assert mcp.status_code == 401
    assert p.stopped_gracefully()
    out = p.output()
    assert str(token_file) in out and f"127.0.0.1:{p.port}" in out
    assert token not in out and "persisted-value" not in out
    # the second run unseals from the key file and keeps the root token
    p2 = Proc(home)
    procs.append(p2)
    p2.wait((200,))
    assert token_file.read_text().strip() == token
    with httpx.Client(base_url=p2.url, headers={"X-Vault-Token": token}) as c:
        assert c.get("/v1/secrets/default/dev/K").json()["value"] == "persisted-value"
    assert p2.stopped_gracefully()


def test_starts_sealed_and_unseals_over_http(tmp_path: Path, procs: list[Proc]) -> None:
    db = tmp_path / "other.db"
    store = Store(f"sqlite:///{db}")
    fast = Argon2Params(os.urandom(16), memory_kib=19 * 1024, time_cost=2, parallelism=1)
    Vault(store).initialize(PassphraseRoot(PASSPHRASE, fast), local_principal("test"))
    store.dispose()
    p = Proc(tmp_path / "home", KEYBROKER_DB_URL=f"sqlite:///{db}")
    procs.append(p)
    p.wait((503,))
    with httpx.Client(base_url=p.url) as c:
        h = c.get("/v1/sys/health")
        assert h.status_code == 503 and h.json()["sealed"] is True
        assert c.get("/v1/secrets/default/dev/K").json()["error"]["code"] == "vault_sealed"
        r = c.post("/v1/sys/unseal", json={"passphrase": "wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unseal_failed"
        r = c.post("/v1/sys/unseal", json={"passphrase": PASSPHRASE})
        assert r.status_code == 200 and r.json()["sealed"] is False
        assert c.get("/v1/sys/health").status_code == 200
    assert not (tmp_path / "home" / "root-token").exists()  # not the embedded store: nothing created
    assert "wrong" not in p.output()


def test_tls(tmp_path: Path, procs: list[Proc]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    p = Proc(tmp_path / "home", KEYBROKER_TLS_CERT=str(cert_path), KEYBROKER_TLS_KEY=str(key_path))
    procs.append(p)
    p.wait((200,))
    assert p.url.startswith("https://")
    r = httpx.get(f"{p.url}/v1/sys/health", verify=ssl.create_default_context(cafile=str(cert_path)))
    assert r.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{p.port}/v1/sys/health", timeout=3)
