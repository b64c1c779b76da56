"""The unmodified ``hvac`` client against ``keybroker serve`` (the real app on uvicorn), KV v2
through ``X-Vault-Token: kbt_...``, on SQLite and PostgreSQL; and the KV <-> keybroker secret
mapping both ways (docs/kv-compat.md)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import pytest

# hvac's own kv.v2.patch() reads without passing raise_on_deleted_version, which warns
pytestmark = pytest.mark.filterwarnings("ignore:The raise_on_deleted_version parameter:DeprecationWarning")


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


@pytest.fixture
def server(store_url: str) -> Iterator[tuple[str, str]]:
    from keybroker.core import ManualClock
    from keybroker.server import create_app

    kl = _kb_live()
    clock = ManualClock()
    vault, root = kl.new_vault(store_url, clock)
    srv = kl.LiveServer(create_app(kl.server_settings(), vault=vault, clock=clock)).start()
    with httpx.Client(base_url=srv.url, headers={"X-Vault-Token": root}) as c:
        assert (
            c.post("/v1/projects", json={"name": "secret", "environments": ["dev", "prod"]}).status_code
            == 201
        )
    yield srv.url, root
    srv.stop()
    vault.store.dispose()


def test_hvac_kv_v2_round_trip(server: tuple[str, str]) -> None:
    url, token = server
    client = hvac.Client(url=url, token=token)
    assert client.is_authenticated()
    assert client.sys.is_initialized() and not client.sys.is_sealed()
    health = client.sys.read_health_status(method="GET")
    assert health["initialized"] and not health["sealed"]
    kv = client.secrets.kv.v2
    # write (POST JSON), read, versions
    r = kv.create_or_update_secret("dev/openai", {"api_key": "sk-1", "org": "acme"})
    assert r["data"]["version"] == 1 and r["data"]["destroyed"] is False
    assert {
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    } <= set(r)
    kv.create_or_update_secret("dev/openai", {"api_key": "sk-2", "org": "acme"})
    got = kv.read_secret_version("dev/openai", raise_on_deleted_version=True)
    assert (
        got["data"]["data"] == {"api_key": "sk-2", "org": "acme"} and got["data"]["metadata"]["version"] == 2
    )
    v1 = kv.read_secret_version("dev/openai", version=1, raise_on_deleted_version=True)
    assert v1["data"]["data"]["api_key"] == "sk-1"
    # patch (hvac: read + CAS write)
    p = kv.patch("dev/openai", {"org": "globex"})
    assert p["data"]["version"] == 3
    assert kv.read_secret_version("dev/openai", raise_on_deleted_version=True)["data"]["data"] == {
        "api_key": "sk-2",
        "org": "globex",
    }
    # CAS
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret("dev/openai", {"api_key": "x"}, cas=1)
    assert kv.create_or_update_secret("dev/openai", {"api_key": "sk-4"}, cas=3)["data"]["version"] == 4
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret("dev/new", {"a": "b"}, cas=1)
    assert kv.create_or_update_secret("dev/new", {"a": "b"}, cas=0)["data"]["version"] == 1
    # list (LIST method), with folders for path-style names
    kv.create_or_update_secret("dev/team/db", {"password": "p"})
    assert kv.list_secrets("dev")["data"]["keys"] == ["new", "openai", "team/"]
    assert kv.list_secrets("dev/team")["data"]["keys"] == ["db"]
    assert kv.list_secrets("")["data"]["keys"] == ["dev/", "prod/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("prod")
    # metadata: custom metadata, max versions, cas_required
    kv.update_metadata("dev/openai", max_versions=3, custom_metadata={"owner": "ml"})
    md = kv.read_secret_metadata("dev/openai")["data"]
    assert md["max_versions"] == 3 and md["custom_metadata"] == {"owner": "ml"} and md["current_version"] == 4
    kv.create_or_update_secret("dev/openai", {"api_key": "sk-5"})
    md = kv.read_secret_metadata("dev/openai")["data"]
    assert sorted(md["versions"], key=int) == ["3", "4", "5"]
    assert md["oldest_version"] == 3
    kv.update_metadata("dev/openai", cas_required=True)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret("dev/openai", {"api_key": "x"})
    kv.update_metadata("dev/openai", cas_required=False)
    # delete latest -> 404 with the version's metadata (hvac returns it when asked not to raise)
    kv.delete_latest_version_of_secret("dev/openai")
    deleted = kv.read_secret_version("dev/openai", raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["version"] == 5 and deleted["data"]["metadata"]["deletion_time"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("dev/openai", raise_on_deleted_version=True)
    kv.undelete_secret_versions("dev/openai", versions=[5])
    assert (
        kv.read_secret_version("dev/openai", raise_on_deleted_version=True)["data"]["data"]["api_key"]
        == "sk-5"
    )
    kv.delete_secret_versions("dev/openai", versions=[4])
    kv.destroy_secret_versions("dev/openai", versions=[3])
    md = kv.read_secret_metadata("dev/openai")["data"]["versions"]
    assert md["3"]["destroyed"] is True and md["4"]["deletion_time"] and not md["5"]["deletion_time"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("dev/openai", version=3, raise_on_deleted_version=True)
    # delete metadata: gone
    kv.delete_metadata_and_all_versions("dev/openai")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("dev/openai", raise_on_deleted_version=True)
    # mount configuration
    kv.configure(max_versions=7, mount_point="secret")
    assert kv.read_configuration()["data"]["max_versions"] == 7
    assert "secret/" in client.sys.list_mounted_secrets_engines()["data"]
    # errors in Vault's shape
    bad = hvac.Client(url=url, token="kbt_" + "0" * 49)
    with pytest.raises(hvac.exceptions.Forbidden):
        bad.secrets.kv.v2.read_secret_version("dev/new", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("dev/nope", raise_on_deleted_version=True)


def test_kv_and_rest_see_the_same_secrets(server: tuple[str, str]) -> None:
    url, token = server
    kv = hvac.Client(url=url, token=token).secrets.kv.v2
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as rest:
        # a plain secret (secret set) reads through KV as {"value": ...}
        assert rest.put("/v1/secrets/secret/dev/OPENAI_KEY", json={"value": "sk-plain"}).status_code == 200
        got = kv.read_secret_version("dev/OPENAI_KEY", raise_on_deleted_version=True)
        assert got["data"]["data"] == {"value": "sk-plain"}
        # a KV write of {"value": ...} alone stores the plain string
        kv.create_or_update_secret("dev/ANTHROPIC_KEY", {"value": "sk-ant"})
        assert rest.get("/v1/secrets/secret/dev/ANTHROPIC_KEY").json()["value"] == "sk-ant"
        # several keys are stored as JSON, and read back as the same object
        kv.create_or_update_secret("dev/db", {"user": "u", "password": "p"})
        import json

        assert json.loads(rest.get("/v1/secrets/secret/dev/db").json()["value"]) == {
            "user": "u",
            "password": "p",
        }
        # a value that is itself a JSON object text keeps its meaning through KV
        kv.create_or_update_secret("dev/tricky", {"value": '{"a": "b"}'})
        assert kv.read_secret_version("dev/tricky", raise_on_deleted_version=True)["data"]["data"] == {
            "value": '{"a": "b"}'
        }
        # versions, deletes and metadata are shared
        rest.put("/v1/secrets/secret/dev/OPENAI_KEY", json={"value": "sk-plain-2"})
        assert kv.read_secret_metadata("dev/OPENAI_KEY")["data"]["current_version"] == 2
        kv.delete_secret_versions("dev/OPENAI_KEY", versions=[1])
        r = rest.get("/v1/secrets/secret/dev/OPENAI_KEY", params={"version": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
        kv.update_metadata("dev/OPENAI_KEY", custom_metadata={"team": "ml"})
        meta = rest.get("/v1/metadata/secret/dev/OPENAI_KEY").json()["metadata"]
        assert meta["custom_metadata"] == {"team": "ml"}
        # a whole-secret delete (secret delete) reads as deleted through KV; KV undelete restores it
        assert rest.delete("/v1/secrets/secret/dev/ANTHROPIC_KEY").status_code == 204
        d = kv.read_secret_version("dev/ANTHROPIC_KEY", raise_on_deleted_version=False)
        assert d["data"]["metadata"]["deletion_time"]
        kv.undelete_secret_versions("dev/ANTHROPIC_KEY", versions=[1])
        assert rest.get("/v1/secrets/secret/dev/ANTHROPIC_KEY").json()["value"] == "sk-ant"


def test_hvac_token_endpoints_and_scoped_tokens(server: tuple[str, str]) -> None:
    url, token = server
    client = hvac.Client(url=url, token=token)
    me = client.auth.token.lookup_self()["data"]
    assert me["policies"] == ["root"] and me["accessor"].startswith("kba_")
    assert "id" not in me  # never the token itself
    child = client.auth.token.create(ttl="10m", num_uses=0)["auth"]
    assert child["client_token"].startswith("kbt_") and child["lease_duration"] == 600
    c2 = hvac.Client(url=url, token=child["client_token"])
    assert c2.auth.token.lookup_self()["data"]["orphan"] is False
    c2.auth.token.renew_self(increment="5m")
    c2.auth.token.revoke_self()
    assert not c2.is_authenticated()
    # a token limited to read on one name: hvac sees Vault's 403
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as rest:
        rest.put("/v1/secrets/secret/dev/ONLY", json={"value": "x"})
        rest.put("/v1/secrets/secret/dev/OTHER", json={"value": "y"})
        t = rest.post(
            "/v1/tokens", json={"scope": {"names": ["ONLY"], "actions": ["read"]}, "ttl_s": 60}
        ).json()
    ro = hvac.Client(url=url, token=t["token"]).secrets.kv.v2
    assert ro.read_secret_version("dev/ONLY", raise_on_deleted_version=True)["data"]["data"] == {"value": "x"}
    with pytest.raises(hvac.exceptions.Forbidden):
        ro.read_secret_version("dev/OTHER", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        ro.create_or_update_secret("dev/ONLY", {"value": "z"})
