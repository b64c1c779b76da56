"""AzureKeyVaultStore with the official SDK against a local HTTPS server that follows the
documented Key Vault REST API (7.x), challenge-based bearer auth included. NOT the real service:
see docs/backends.md."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("azure.keyvault.secrets")

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybroker.backends import AzureKeyVaultStore, MemoryStore, RetryPolicy, migrate
from keybroker.errors import (
    AlreadyExists,
    AuthenticationError,
    InvalidInput,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

CHALLENGE = (
    'Bearer authorization="https://login.microsoftonline.com/tenant-1", resource="https://vault.azure.net"'
)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class FakeKeyVault:
    """Enough of https://learn.microsoft.com/rest/api/keyvault/secrets for the adapter."""

    def __init__(self, tmp: Path) -> None:
        self.secrets: dict[str, list[dict[str, Any]]] = {}
        self.deleted: dict[str, list[dict[str, Any]]] = {}
        self.token = "good-token"
        self.forbid = False
        self.throttle_methods: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.calls.append((self.command, self.path))
                headers: dict[str, str] = {}
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    status, out = 401, {"error": {"code": "Unauthorized", "message": "auth required"}}
                    headers["WWW-Authenticate"] = CHALLENGE
                elif self.command in outer.throttle_methods:
                    status, out = 429, {"error": {"code": "Throttled", "message": "slow down"}}
                elif outer.forbid:
                    status, out = 403, {"error": {"code": "Forbidden", "message": "no access policy"}}
                else:
                    status, out = outer.route(self.command, self.path, json.loads(raw) if raw else {})
                data = json.dumps(out).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_PATCH = do_POST = _handle

            def log_message(self, *a: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.cert, key = self_signed(tmp)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bundle(self, name: str, v: dict[str, Any], with_value: bool = True) -> dict[str, Any]:
        out = {
            "id": f"{self.url}/secrets/{name}/{v['version']}",
            "attributes": v["attributes"],
            "tags": v["tags"],
        }
        if with_value:
            out["value"] = v["value"]
        return out

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        p = urlsplit(path).path.rstrip("/")
        missing = (
            404,
            {"error": {"code": "SecretNotFound", "message": "A secret with (name/id) was not found"}},
        )
        if p == "/secrets" and method == "GET":
            items = []
            for name, vs in self.secrets.items():
                latest = vs[-1]
                items.append(
                    {
                        "id": f"{self.url}/secrets/{name}",
                        "attributes": latest["attributes"],
                        "tags": latest["tags"],
                    }
                )
            return 200, {"value": items, "nextLink": None}
        m = re.fullmatch(r"/secrets/([0-9A-Za-z-]+)(?:/([0-9a-f]+|versions))?", p)
        if m:
            name, ver = m.groups()
            if method == "PUT" and ver is None:
                if name in self.deleted:
                    return 409, {
                        "error": {"code": "Conflict", "innererror": {"code": "ObjectIsDeletedButRecoverable"}}
                    }
                now = int(time.time())
                v = {
                    "version": uuid.uuid4().hex,
                    "value": body["value"],
                    "tags": body.get("tags") or {},
                    "attributes": {
                        "enabled": True,
                        "created": now + len(self.secrets.get(name, [])),
                        "updated": now,
                    },
                }
                self.secrets.setdefault(name, []).append(v)
                return 200, self.bundle(name, v)
            vs = self.secrets.get(name)
            if vs is None:
                return missing
            if method == "DELETE" and ver is None:
                self.deleted[name] = self.secrets.pop(name)
                out = self.bundle(name, vs[-1], with_value=False)
                out.update(recoveryId=f"{self.url}/deletedsecrets/{name}", deletedDate=int(time.time()))
                return 200, out
            if ver == "versions":
                return 200, {"value": [self.bundle(name, v, with_value=False) for v in vs], "nextLink": None}
            if ver is None:
                return 200, self.bundle(name, vs[-1])
            for v in vs:
                if v["version"] == ver:
                    return 200, self.bundle(name, v)
            return missing
        m = re.fullmatch(r"/deletedsecrets/([0-9A-Za-z-]+)", p)
        if m and m.group(1) in self.deleted:
            out = self.bundle(m.group(1), self.deleted[m.group(1)][-1], with_value=False)
            out.update(recoveryId=f"{self.url}/deletedsecrets/{m.group(1)}", deletedDate=int(time.time()))
            return 200, out
        return missing

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Cred:
    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKeyVault]:
    f = FakeKeyVault(tmp_path)
    yield f
    f.close()


def connect(fake: FakeKeyVault, token: str = "good-token", prefix: str = "app-") -> AzureKeyVaultStore:
    return AzureKeyVaultStore.connect(
        fake.url,
        credential=Cred(token),
        prefix=prefix,
        retry=RetryPolicy(sleep=lambda s: None),
        verify_challenge_resource=False,  # the fake is not on *.vault.azure.net
        connection_verify=str(fake.cert),
        retry_total=0,
    )


def test_round_trip_versions_names(fake: FakeKeyVault) -> None:
    kv = connect(fake)
    v1 = kv.put("OPENAI_API_KEY", "sk-1")
    v2 = kv.put("OPENAI_API_KEY", "sk-2")
    assert kv.get("OPENAI_API_KEY").reveal() == "sk-2"
    assert kv.get("OPENAI_API_KEY", version=v1).reveal() == "sk-1"
    assert kv.get("OPENAI_API_KEY", label="previous").reveal() == "sk-1"
    assert [(v.version, v.labels) for v in kv.versions("OPENAI_API_KEY")] == [
        (v1, ("previous",)),
        (v2, ("current",)),
    ]
    assert kv.metadata("OPENAI_API_KEY").current_version == v2
    assert "app-OPENAI-API-KEY" in fake.secrets  # Key Vault's alphabet
    kv.put("openai/org_id", "org")
    assert "app-openai--org-id" in fake.secrets
    assert kv.list() == ["OPENAI_API_KEY", "openai/org_id"]  # exact names, from the tag
    assert kv.list("openai/") == ["openai/org_id"]
    with pytest.raises(AlreadyExists):
        kv.put("OPENAI-API-KEY", "collides")  # same Key Vault name as OPENAI_API_KEY


def test_missing_pending_binary_delete(fake: FakeKeyVault) -> None:
    kv = connect(fake)
    with pytest.raises(SecretNotFound):
        kv.get("NOPE")
    kv.put("K", "v")
    with pytest.raises(VersionNotFound):
        kv.get("K", version="0123abcd")
    with pytest.raises(VersionNotFound):
        kv.get("K", label="previous")
    with pytest.raises(InvalidInput):
        kv.put("K", "next", label="pending")
    with pytest.raises(InvalidInput):
        kv.put("B", b"\xff\xfe")
    kv.delete("K")
    with pytest.raises(SecretDeleted):
        kv.get("K")
    assert kv.metadata("K").deleted
    with pytest.raises(SecretDeleted):
        kv.put("K", "again")
    assert kv.list() == []


def test_auth_permission_throttle(fake: FakeKeyVault) -> None:
    with pytest.raises(AuthenticationError):
        connect(fake, token="wrong-token").get("K")
    kv = connect(fake)
    kv.put("K", "v")
    fake.forbid = True
    with pytest.raises(PermissionDenied):
        kv.get("K")
    fake.forbid = False
    fake.throttle_methods = {"GET"}
    fake.calls.clear()
    with pytest.raises(StoreError) as e:
        kv.get("K")
    assert e.value.details.get("throttled")
    assert len([c for c in fake.calls if c[0] == "GET"]) == 4
    fake.throttle_methods = {"PUT"}
    fake.calls.clear()
    with pytest.raises(StoreError):
        kv.put("K", "v2")
    assert [c[0] for c in fake.calls].count("PUT") == 1


def test_https_only_and_migrate(fake: FakeKeyVault) -> None:
    kv = connect(fake)
    src = MemoryStore("src")
    src.put("A", "a1")
    src.put("A", "a2")
    src.put("p/B", "b")
    assert migrate(src, kv).ok
    assert [kv.get("A", version=v.version).reveal() for v in kv.versions("A")] == ["a1", "a2"]
    assert migrate(src, kv).versions_written == 0
