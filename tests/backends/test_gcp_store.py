"""GcpSecretManagerStore with the official client (REST transport) against a local server that
follows the documented Secret Manager v1 REST API. NOT the real service: see docs/backends.md."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("google.cloud.secretmanager")

from google.auth.credentials import AnonymousCredentials

from keybroker.backends import GcpSecretManagerStore, RetryPolicy, migrate
from keybroker.backends._memory import MemoryStore
from keybroker.errors import (
    AuthenticationError,
    InvalidInput,
    InvalidName,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)


class FakeSecretManager:
    """Enough of https://cloud.google.com/secret-manager/docs/reference/rest for the adapter."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.force: tuple[int, str] | None = None  # (http status, status name) for every call
        self.force_methods: set[str] = {"GET", "POST", "PATCH", "DELETE"}
        self.calls: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                outer.calls.append((self.command, self.path))
                status, out = outer.route(self.command, self.path, body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *a: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def err(code: int, status: str, msg: str = "") -> tuple[int, dict[str, Any]]:
        return code, {"error": {"code": code, "message": msg or status, "status": status}}

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.force and method in self.force_methods:
            return self.err(*self.force)
        u = urlsplit(path)
        q = parse_qs(u.query)
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        m = re.fullmatch(r"/v1/projects/([^/]+)/secrets", u.path)
        if m and method == "POST":
            name = f"projects/{m.group(1)}/secrets/{q['secretId'][0]}"
            if name in self.secrets:
                return self.err(409, "ALREADY_EXISTS")
            self.secrets[name] = {"name": name, "createTime": now, "labels": {}, **body}
            self.versions[name] = []
            return 200, self.secrets[name]
        if m and method == "GET":
            return 200, {"secrets": list(self.secrets.values())}
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/:]+)(:addVersion)?", u.path)
        if m:
            name = m.group(1)
            if name not in self.secrets:
                return self.err(404, "NOT_FOUND", f"Secret [{name}] not found")
            if m.group(2):
                vs = self.versions[name]
                v = {"name": f"{name}/versions/{len(vs) + 1}", "createTime": now, "state": "ENABLED"}
                vs.append({**v, "_data": body["payload"]["data"]})
                return 200, v
            if method == "PATCH":
                self.secrets[name]["labels"] = body.get("labels", {})
            return 200, self.secrets[name]
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/]+)/versions", u.path)
        if m:
            if m.group(1) not in self.secrets:
                return self.err(404, "NOT_FOUND")
            vs = [{k: v for k, v in x.items() if k != "_data"} for x in self.versions[m.group(1)]]
            return 200, {"versions": list(reversed(vs)), "totalSize": len(vs)}
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/]+)/versions/([^/:]+):(access|disable)", u.path)
        if m:
            name, ver, op = m.groups()
            vs = self.versions.get(name)
            if vs is None:
                return self.err(404, "NOT_FOUND")
            if ver == "latest":
                ver = str(len(vs))
            if not ver.isdigit() or not 1 <= int(ver) <= len(vs):
                return self.err(404, "NOT_FOUND")
            v = vs[int(ver) - 1]
            if op == "disable":
                v["state"] = "DISABLED"
                return 200, {k: x for k, x in v.items() if k != "_data"}
            if v["state"] != "ENABLED":
                return self.err(400, "FAILED_PRECONDITION", f"{v['name']} is in DISABLED state")
            return 200, {"name": v["name"], "payload": {"data": v["_data"]}}
        return self.err(404, "NOT_FOUND", "no route")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeSecretManager]:
    f = FakeSecretManager()
    yield f
    f.close()


@pytest.fixture
def gcp(fake: FakeSecretManager) -> GcpSecretManagerStore:
    return GcpSecretManagerStore.connect(
        "my-project",
        prefix="app_",
        credentials=AnonymousCredentials(),
        api_endpoint=fake.url,
        retry=RetryPolicy(sleep=lambda s: None),
    )


def test_round_trip_versions_labels(gcp: GcpSecretManagerStore, fake: FakeSecretManager) -> None:
    assert gcp.put("OPENAI_API_KEY", "sk-1") == "1"
    assert gcp.put("OPENAI_API_KEY", "sk-2") == "2"
    assert gcp.get("OPENAI_API_KEY").reveal() == "sk-2"
    assert gcp.get("OPENAI_API_KEY", label="previous").reveal() == "sk-1"
    assert gcp.get("OPENAI_API_KEY", version="1").reveal() == "sk-1"
    assert [(v.version, v.labels) for v in gcp.versions("OPENAI_API_KEY")] == [
        ("1", ("previous",)),
        ("2", ("current",)),
    ]
    assert gcp.metadata("OPENAI_API_KEY").current_version == "2"
    stored = fake.versions["projects/my-project/secrets/app_OPENAI_API_KEY"][0]["_data"]
    assert base64.b64decode(stored) == b"sk-1"  # the documented wire form: base64 payload data
    gcp.put("openai/org_id", "org")
    assert "projects/my-project/secrets/app_openai--org_id" in fake.secrets
    assert gcp.list() == ["OPENAI_API_KEY", "openai/org_id"]
    assert gcp.list("openai/") == ["openai/org_id"]


def test_missing_pending_names(gcp: GcpSecretManagerStore) -> None:
    with pytest.raises(SecretNotFound):
        gcp.get("NOPE")
    gcp.put("K", "v")
    with pytest.raises(VersionNotFound):
        gcp.get("K", version="7")
    with pytest.raises(VersionNotFound):
        gcp.get("K", label="previous")
    with pytest.raises(InvalidInput):
        gcp.put("K", "next", label="pending")
    with pytest.raises(InvalidName):
        gcp.put("a--b/c", "v")


def test_delete_disables_and_hides(gcp: GcpSecretManagerStore) -> None:
    gcp.put("K", "1")
    gcp.put("K", "2")
    gcp.delete("K")
    with pytest.raises(SecretDeleted):
        gcp.get("K")
    with pytest.raises(SecretDeleted):
        gcp.put("K", "3")
    assert gcp.list() == []
    assert gcp.metadata("K").deleted
    assert [v.state for v in gcp.versions("K")] == ["deleted", "deleted"]


def test_errors_translated(gcp: GcpSecretManagerStore, fake: FakeSecretManager) -> None:
    fake.force = (401, "UNAUTHENTICATED")
    with pytest.raises(AuthenticationError):
        gcp.get("K")
    fake.force = (403, "PERMISSION_DENIED")
    with pytest.raises(PermissionDenied):
        gcp.get("K")
    fake.force = (429, "RESOURCE_EXHAUSTED")
    fake.calls.clear()
    with pytest.raises(StoreError) as e:
        gcp.get("K")
    assert e.value.details.get("throttled")
    assert len(fake.calls) == 4  # a read: retried
    fake.force = None
    gcp.put("K", "v1")
    fake.force, fake.force_methods = (429, "RESOURCE_EXHAUSTED"), {"POST"}
    fake.calls.clear()
    with pytest.raises(StoreError):
        gcp.put("K", "v2")
    assert [m for m, _ in fake.calls].count("POST") == 1  # the write: exactly once


def test_migrate_into_gcp(gcp: GcpSecretManagerStore) -> None:
    src = MemoryStore("src")
    src.put("A", "a1")
    src.put("A", "a2")
    src.put("p/B", "b")
    assert migrate(src, gcp).ok
    assert [gcp.get("A", version=v.version).reveal() for v in gcp.versions("A")] == ["a1", "a2"]
    assert migrate(src, gcp).versions_written == 0
