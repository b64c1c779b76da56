"""The REST API v1 through the real HTTP stack (uvicorn on a free port), on SQLite and
PostgreSQL: happy paths and error codes, sys endpoints, identities and tokens, logins, audit.
Tests assert codes and shapes, never message text."""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from kb_live import ROOT_KEY, Live

VALUE = "sk-proj-SECRET-VALUE-0123456789"
P = "/v1/secrets/default/dev"


def code(r: httpx.Response) -> str:
    body = r.json()
    return str(body["error"]["code"])


def test_health_openapi_metrics(live: Live) -> None:
    with live.client() as c:
        r = c.get("/v1/sys/health")
        assert r.status_code == 200
        body = r.json()
        for k in ("initialized", "sealed", "standby", "version", "server_time_utc", "store"):
            assert k in body
        assert body["initialized"] and not body["sealed"] and not body["standby"]
        assert c.head("/v1/sys/health").status_code == 200
        assert c.get("/v1/sys/health", params={"activecode": 299}).status_code == 299
        spec = c.get("/openapi.json").json()
        assert "/v1/secrets/{project}/{env}/{name}" in spec["paths"]
        assert "/v1/tokens" in spec["paths"] and "/v1/identities" in spec["paths"]
        assert c.get("/v1/sys/seal-status").json()["sealed"] is False
        m = c.get("/metrics")
        assert m.status_code == 200 and "keybroker_http_requests_total" in m.text
        assert 'route="/v1/sys/health"' in m.text
        assert r.headers["x-request-id"]


def test_secret_lifecycle(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with live.root_client() as c:
        r = c.put(
            f"{P}/OPENAI_KEY", json={"value": VALUE, "description": "d", "tags": ["ai"], "risk": "high"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["latest_version"] == 1
        assert VALUE not in r.text
        r = c.get(f"{P}/OPENAI_KEY")
        assert r.status_code == 200
        assert r.json()["value"] == VALUE and r.json()["version"] == 1
        assert r.json()["metadata"]["risk"] == "high"
        # path-style names
        assert c.put(f"{P}/openai/api_key", json={"value": "v-path"}).status_code == 200
        assert c.get(f"{P}/openai/api_key").json()["value"] == "v-path"
        # check-and-set
        assert code(c.put(f"{P}/OPENAI_KEY", json={"value": "x", "cas": 0})) == "cas_mismatch"
        assert c.put(f"{P}/OPENAI_KEY", json={"value": VALUE + "2", "cas": 1}).status_code == 200
        assert c.get(f"{P}/OPENAI_KEY", params={"version": 1}).json()["value"] == VALUE
        # list, metadata, history
        names = [m["name"] for m in c.get(P).json()["secrets"]]
        assert names == ["OPENAI_KEY", "openai/api_key"]
        assert c.get(P, params={"prefix": "openai/"}).json()["secrets"][0]["name"] == "openai/api_key"
        r = c.patch(
            "/v1/metadata/default/dev/OPENAI_KEY", json={"owner": "ops", "custom_metadata": {"a": "b"}}
        )
        assert r.json()["metadata"]["owner"] == "ops"
        assert c.get("/v1/metadata/default/dev/OPENAI_KEY").json()["metadata"]["custom_metadata"] == {
            "a": "b"
        }
        hist = c.get("/v1/history/default/dev/OPENAI_KEY").json()["versions"]
        assert [v["version"] for v in hist] == [1, 2] and hist[1]["labels"] == ["current"]
        # rotate / promote / rollback
        r = c.post("/v1/rotate/default/dev/OPENAI_KEY", json={"value": "rotated"})
        assert r.json()["metadata"]["pending_version"] == 3
        assert c.get(f"{P}/OPENAI_KEY").json()["version"] == 2
        assert c.get(f"{P}/OPENAI_KEY", params={"label": "pending"}).json()["value"] == "rotated"
        assert c.post("/v1/promote/default/dev/OPENAI_KEY").json()["metadata"]["current_version"] == 3
        assert c.get(f"{P}/OPENAI_KEY", params={"label": "previous"}).json()["version"] == 2
        assert (
            c.post("/v1/rollback/default/dev/OPENAI_KEY", json={"version": 1}).json()["metadata"][
                "current_version"
            ]
            == 4
        )
        assert c.get(f"{P}/OPENAI_KEY").json()["value"] == VALUE
        # delete versions, undelete, destroy, whole delete, purge
        assert c.delete(f"{P}/OPENAI_KEY", params={"versions": "1"}).status_code == 204
        assert code(c.get(f"{P}/OPENAI_KEY", params={"version": 1})) == "version_not_found"
        assert c.post("/v1/undelete/default/dev/OPENAI_KEY", json={"versions": [1]}).status_code == 204
        assert c.get(f"{P}/OPENAI_KEY", params={"version": 1}).status_code == 200
        assert c.post("/v1/destroy/default/dev/OPENAI_KEY", json={"versions": [1]}).status_code == 204
        r = c.get(f"{P}/OPENAI_KEY", params={"version": 1})
        assert code(r) == "version_not_found" and r.json()["error"]["details"]["state"] == "destroyed"
        assert c.delete(f"{P}/OPENAI_KEY").status_code == 204
        assert code(c.get(f"{P}/OPENAI_KEY")) == "secret_deleted"
        assert [m["name"] for m in c.get(P).json()["secrets"]] == ["openai/api_key"]
        listed = c.get(P, params={"deleted": "true"}).json()["secrets"]
        assert "OPENAI_KEY" in [m["name"] for m in listed]
        assert c.post("/v1/undelete/default/dev/OPENAI_KEY").status_code == 204
        assert c.get(f"{P}/OPENAI_KEY").status_code == 200
        assert c.delete(f"{P}/OPENAI_KEY", params={"purge": "true"}).status_code == 204
        assert code(c.get(f"{P}/OPENAI_KEY")) == "secret_not_found"
        # batch read
        c.put(f"{P}/A", json={"value": "a"})
        r = c.post(
            "/v1/batch/read",
            json={"project": "default", "environment": "dev", "names": ["A", "NOPE", "bad name"]},
        )
        body = r.json()
        assert body["secrets"] == {"A": {"version": 1, "value": "a"}}
        assert body["errors"]["NOPE"]["code"] == "secret_not_found"
        assert body["errors"]["bad name"]["code"] == "invalid_name"
        # references resolve
        c.put(f"{P}/URL", json={"value": "https://x/?k=${A}"})
        r = c.get(f"{P}/URL").json()
        assert r["value"] == "https://x/?k=a" and r["references"] == ["default/default/dev/A"]
        assert c.get(f"{P}/URL", params={"resolve": "false"}).json()["value"] == "https://x/?k=${A}"
    # no value ever reached a log line
    assert VALUE not in caplog.text and "rotated" not in caplog.text


def test_projects_keypairs_import_export(live: Live) -> None:
    with live.root_client() as c:
        r = c.post("/v1/projects", json={"name": "billing", "environments": ["dev", "prod"]})
        assert r.status_code == 201
        assert code(c.post("/v1/projects", json={"name": "billing"})) == "already_exists"
        assert code(c.post("/v1/projects", json={"name": "Bad Name"})) == "invalid_name"
        assert c.post("/v1/projects/billing/environments", json={"name": "qa"}).status_code == 201
        projects = {p["name"]: p["environments"] for p in c.get("/v1/projects").json()["projects"]}
        assert projects["billing"] == ["dev", "prod", "qa"]
        assert code(c.get("/v1/secrets/nope/dev/X")) == "project_not_found"
        assert code(c.get("/v1/secrets/billing/nope/X")) == "environment_not_found"
        # key pairs
        r = c.post("/v1/keypairs/billing/dev/signer", json={"algorithm": "ed25519"})
        assert r.status_code == 200 and r.json()["public_key"].startswith("-----BEGIN PUBLIC KEY")
        assert code(c.post("/v1/keypairs/billing/dev/signer", json={})) == "already_exists"
        r2 = c.post("/v1/keypairs/billing/dev/signer", json={"rotate": True})
        assert r2.json()["public_key"] != r.json()["public_key"]
        pub = c.get("/v1/keypairs/billing/dev/signer", params={"version": 1}).json()
        assert (
            pub["version"] == 1
            and pub["algorithm"] == "ed25519"
            and pub["public_key"] == r.json()["public_key"]
        )
        # import: JSON and .env; existing names kept unless overwrite
        r = c.post("/v1/import/billing/dev", json={"secrets": {"K1": "v1", "K2": "v2"}})
        assert r.json()["imported"] == ["K1", "K2"]
        r = c.post(
            "/v1/import/billing/dev",
            json={"dotenv": "K2=new\nK3='ok'\nexport K4=\"q\"\nnot a line\nbad-key=1\n"},
        )
        body = r.json()
        assert body["unchanged"] == ["K2"] and "K3" in body["imported"]
        assert body["skipped_lines"] and "bad-key" in body["errors"]
        assert code(c.post("/v1/import/billing/dev", json={})) == "invalid_input"
        r = c.post("/v1/import/billing/dev", json={"secrets": {"K2": "new"}, "overwrite": True})
        assert r.json()["imported"] == ["K2"]
        exp = c.get("/v1/export/billing/dev").json()["secrets"]
        assert exp["K1"] == "v1" and exp["K2"] == "new" and "signer" not in exp
        text = c.get("/v1/export/billing/dev", params={"format": "dotenv"}).text
        assert "K1='v1'" in text
        # a proxy-only secret is left out of an export; it does not fail the export
        c.put("/v1/secrets/billing/dev/PROXIED", json={"value": "proxied-real-value"})
        assert c.patch("/v1/metadata/billing/dev/PROXIED", json={"proxy_only": True}).status_code == 200
        r = c.get("/v1/export/billing/dev")
        assert r.status_code == 200 and "PROXIED" not in r.json()["secrets"] and "K1" in r.json()["secrets"]
        assert "proxied-real-value" not in r.text
        assert code(c.get("/v1/secrets/billing/dev/PROXIED")) == "proxy_only"


def test_validation_and_error_shapes(live: Live) -> None:
    with live.client() as anon:
        r = anon.get(f"{P}/X")
        assert r.status_code == 401 and code(r) == "unauthenticated"
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = anon.get(f"{P}/X", headers={"Authorization": "Bearer kbt_garbage"})
        assert r.status_code == 401
        r = anon.get(f"{P}/X", headers={"X-Vault-Token": live.root})
        assert r.status_code == 404 and code(r) == "secret_not_found"
        r = anon.get("/v1/nothing-here")
        assert r.status_code in (403, 404)
    with live.root_client() as c:
        for body in (
            {},
            {"value": 5},
            {"value": "x", "extra": 1},
            {"value": "x", "cas": -1},
            {"value": "x", "risk": "extreme"},
            {"value": "x", "expires_at": "not-a-date"},
            {"value": "x", "custom_metadata": {"a": 1}},
        ):
            r = c.put(f"{P}/GOOD", json=body)
            assert r.status_code == 400, body
            assert code(r) == "invalid_input"
            for e in r.json()["error"].get("details", {}).get("errors", []):
                assert set(e) <= {"loc", "msg", "type"}  # never the input itself
        # a value never echoed in a validation error
        r = c.put(f"{P}/GOOD", json={"value": VALUE, "bogus": VALUE})
        assert r.status_code == 400 and VALUE not in r.text
        r = c.put(f"{P}/GOOD", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert code(c.put(f"{P}/bad%20name", json={"value": "x"})) == "invalid_name"
        assert (
            code(c.put(f"{P}/GOOD", json={"value": "x", "expires_at": "2030-01-01T00:00:00"}))
            == "invalid_input"
        )
        assert code(c.get(f"{P}/X", params={"version": 0})) == "invalid_input"
        assert code(c.get(f"{P}/X", params={"version": 1, "label": "current"})) == "invalid_input"
        assert code(c.delete(f"{P}/X", params={"versions": "1,a"})) == "invalid_input"
        assert code(c.post("/v1/destroy/default/dev/X", json={"versions": []})) == "invalid_input"
        assert c.request("TRACE", f"{P}/X").status_code == 405
        # PUT without a content type (as the bao CLI does) works
        r = c.put(f"{P}/NOCT", content=b'{"value": "x"}')
        assert r.status_code == 200


def test_identities_tokens_and_logins(live: Live) -> None:
    with live.root_client() as root:
        r = root.post("/v1/identities", json={"name": "ci-bot", "kind": "service"})
        assert r.status_code == 201 and r.json()["identity"]["kind"] == "service"
        assert code(root.post("/v1/identities", json={"name": "ci-bot"})) == "already_exists"
        assert code(root.post("/v1/identities", json={"name": "x", "kind": "robot"})) == "invalid_input"
        r = root.put("/v1/identities/ci-bot/roles", json={"role": "viewer", "project": "default"})
        assert r.json()["identity"]["roles"] == {"default": "viewer"}
        cred = root.post("/v1/identities/ci-bot/client-secret").json()
        assert cred["client_id"].startswith("kbc_") and cred["client_secret"].startswith("kbs_")
        assert "client_secret" not in root.get("/v1/identities/ci-bot").json()["identity"]
        root.put(f"{P}/OPENAI_KEY", json={"value": VALUE})
    with live.client() as anon:
        r = anon.post("/v1/auth/login", json=cred)
        assert r.status_code == 200, r.text
        tok = r.json()["token"]
        assert tok.startswith("kbt_") and r.json()["identity"]["name"] == "ci-bot"
        assert (
            code(anon.post("/v1/auth/login", json={**cred, "client_secret": "kbs_wrong"}))
            == "unauthenticated"
        )
    with live.client(tok) as bot:
        assert bot.get(f"{P}/OPENAI_KEY").json()["value"] == VALUE
        assert code(bot.put(f"{P}/OPENAI_KEY", json={"value": "x"})) == "permission_denied"
        me = bot.get("/v1/auth/token/self").json()
        assert me["identity"]["name"] == "ci-bot" and me["roles"] == {"default": "viewer"}
        assert tok not in str(me)
        # a child token narrows; widening is refused with its own code
        r = bot.post("/v1/tokens", json={"scope": {"names": ["OPENAI_*"], "actions": ["read"]}, "ttl_s": 60})
        assert r.status_code == 201
        child = r.json()["token"]
        with live.client(child) as ch:
            r = ch.post("/v1/tokens", json={"scope": {"actions": ["write"]}})
            assert r.status_code == 403 and code(r) == "token_widening"
            assert r.json()["error"]["details"]["field"] == "scope.actions"
        assert code(bot.post("/v1/tokens", json={"ttl_s": 10**6})) == "token_widening"
        assert code(bot.post("/v1/tokens", json={"identity": "root"})) == "permission_denied"
        with live.client(child) as ch:
            assert ch.get(f"{P}/OPENAI_KEY").status_code == 200
            assert ch.get(P).status_code == 403  # no list action
        # renew, then revoke self: the child goes too
        assert bot.post("/v1/auth/token/renew", json={"increment_s": 30}).status_code == 200
        assert bot.post("/v1/auth/token/revoke").json()["revoked"] == 2
        assert bot.get("/v1/auth/token/self").status_code == 401
        with live.client(child) as ch:
            assert ch.get(f"{P}/OPENAI_KEY").status_code == 401
    with live.root_client() as root:
        toks = root.get("/v1/tokens", params={"identity": "ci-bot", "revoked": "true"}).json()["tokens"]
        assert len(toks) == 2 and all(t["revoked_at"] for t in toks)
        assert "token_hash" not in str(toks)
        acc = toks[0]["accessor"]
        assert root.get(f"/v1/tokens/{acc}").json()["token"]["accessor"] == acc
        assert code(root.get("/v1/tokens/kba_nope")) == "token_not_found"
        # signed-challenge login with a registered Ed25519 key
        key = ed25519.Ed25519PrivateKey.generate()
        pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        assert root.put("/v1/identities/ci-bot/public-key", json={"public_key": pem}).status_code == 200
        ch = root.post("/v1/auth/challenge", json={"client_id": cred["client_id"]}).json()
        sig = base64.b64encode(key.sign(base64.b64decode(ch["message"]))).decode()
        r = root.post("/v1/auth/login/signed", json={"challenge_id": ch["challenge_id"], "signature": sig})
        assert r.status_code == 200 and r.json()["token"].startswith("kbt_")
        assert (
            code(
                root.post(
                    "/v1/auth/login/signed", json={"challenge_id": ch["challenge_id"], "signature": sig}
                )
            )
            == "unauthenticated"
        )
        assert (
            code(root.post("/v1/auth/login/signed", json={"challenge_id": "x", "signature": "%%"}))
            == "invalid_input"
        )
        # disabling revokes
        t2 = root.post("/v1/auth/login", json=cred).json()["token"]
        assert root.delete("/v1/identities/ci-bot").json()["tokens_revoked"] >= 1
        with live.client(t2) as gone:
            assert gone.get("/v1/auth/token/self").status_code == 401


def test_lockout_over_http(live: Live) -> None:
    with live.root_client() as root:
        root.post("/v1/identities", json={"name": "svc"})
        cred = root.post("/v1/identities/svc/client-secret").json()
    with live.client() as anon:
        for _ in range(5):
            assert anon.post("/v1/auth/login", json={**cred, "client_secret": "kbs_x"}).status_code == 401
        r = anon.post("/v1/auth/login", json=cred)
        assert r.status_code == 429 and code(r) == "login_locked_out"
        assert int(r.headers["retry-after"]) >= 5
        live.clock.advance(6)
        assert anon.post("/v1/auth/login", json=cred).status_code == 200


def test_rate_limits(make_live: Any) -> None:
    live = make_live(token_rate=1, token_burst=3, address_rate=0)
    with live.root_client() as c:
        assert [c.get("/v1/auth/token/self").status_code for _ in range(4)] == [200, 200, 200, 429]
        r = c.get("/v1/auth/token/self")
        assert code(r) == "rate_limited" and "retry-after" in r.headers
        live.clock.advance(1)
        assert c.get("/v1/auth/token/self").status_code == 200


def test_address_rate_limit(make_live: Any) -> None:
    live2 = make_live(address_rate=1, address_burst=2)
    with live2.client() as anon:
        codes = [anon.get(f"{P}/X").status_code for _ in range(3)]
        assert codes == [401, 401, 429]


def test_token_ttl_over_http(live: Live) -> None:
    with live.root_client() as root:
        t = root.post("/v1/tokens", json={"ttl_s": 30, "uses": 2}).json()["token"]
    with live.client(t) as c:
        assert c.get("/v1/auth/token/self").json()["uses_left"] == 1
        live.clock.advance(31)
        r = c.get("/v1/auth/token/self")
        assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "expired"


def test_audit_query_export_verify(live: Live) -> None:
    with live.root_client() as c:
        c.put(f"{P}/OPENAI_KEY", json={"value": VALUE})
        c.get(f"{P}/OPENAI_KEY")
        entries = c.get("/v1/audit", params={"action": "secret.read"}).json()["entries"]
        assert entries and entries[-1]["target"] == "default/default/dev/OPENAI_KEY"
        assert entries[-1]["actor"] == "user:default/root" and entries[-1]["value_hmac"].startswith(
            "hmac-sha256:"
        )
        lines = c.get("/v1/audit/export").text.splitlines()
        assert len(lines) > 3
        csv = c.get("/v1/audit/export", params={"format": "csv"}).text
        assert csv.startswith("seq,ts,actor")
        v = c.get("/v1/audit/verify").json()
        assert v["ok"] is True and v["checked"] > 0
        everything = "\n".join(lines) + csv + str(entries)
        assert VALUE not in everything and live.root not in everything
        assert code(c.get("/v1/audit", params={"since": "yesterday"})) == "invalid_input"
        assert code(c.get("/v1/audit/export", params={"format": "xml"})) == "invalid_input"


def test_seal_unseal_cycle(make_live: Any) -> None:
    live = make_live()
    with live.root_client() as c:
        c.put(f"{P}/K", json={"value": "v"})
        assert c.post("/v1/sys/seal").status_code == 204
        h = c.get("/v1/sys/health")
        assert h.status_code == 503 and h.json()["sealed"] is True
        assert c.head("/v1/sys/health").status_code == 503
        assert c.get("/v1/sys/health", params={"sealedcode": 200}).status_code == 200
        r = c.get(f"{P}/K")
        assert r.status_code == 503 and code(r) == "vault_sealed"
        r = c.post("/v1/sys/unseal", json={"key": base64.b64encode(b"\x00" * 32).decode()})
        assert r.status_code == 401 and code(r) == "unseal_failed"
        assert code(c.post("/v1/sys/unseal", json={})) == "invalid_input"
        r = c.put("/v1/sys/unseal", json={"key": base64.b64encode(ROOT_KEY).decode()})
        assert r.status_code == 200 and r.json()["sealed"] is False
        assert c.get(f"{P}/K").json()["value"] == "v"


def test_org_admin_and_cross_org(live: Live) -> None:
    with live.root_client() as root:
        assert root.post("/v1/orgs", json={"name": "acme"}).status_code == 201
        assert code(root.post("/v1/orgs", json={"name": "acme"})) == "already_exists"
        root.post("/v1/identities", params={"org": "acme"}, json={"name": "alice", "kind": "user"})
        root.put("/v1/identities/alice/roles", params={"org": "acme"}, json={"role": "owner"})
        cred = root.post("/v1/identities/alice/client-secret", params={"org": "acme"}).json()
        root.put(f"{P}/ROOT_ONLY", json={"value": VALUE})
        assert [o["name"] for o in root.get("/v1/orgs").json()["orgs"]] == ["acme", "default"]
    with live.client() as anon:
        alice = anon.post("/v1/auth/login", json=cred).json()["token"]
    with live.client(alice) as a:
        assert a.post("/v1/projects", json={"name": "app"}).status_code == 201
        assert a.put("/v1/secrets/app/dev/K", json={"value": "acme-v"}).status_code == 200
        # org "default" is invisible: its project, identities, audit, tokens
        assert [p["name"] for p in a.get("/v1/projects").json()["projects"]] == ["app"]
        assert code(a.get(f"{P}/ROOT_ONLY")) == "project_not_found"  # resolved in acme, where it is absent
        assert [i["name"] for i in a.get("/v1/identities").json()["identities"]] == ["alice"]
        assert a.get("/v1/identities", params={"org": "default"}).status_code == 403
        assert a.get("/v1/identities/root", params={"org": "default"}).status_code == 403
        assert a.get("/v1/identities/root").status_code == 404
        assert a.get("/v1/orgs").status_code == 403
        assert a.get("/v1/audit/verify").status_code == 403
        audit = a.get("/v1/audit", params={"limit": 1000}).json()["entries"]
        assert audit and all(e["target"].startswith("acme/") for e in audit)
        assert a.get("/v1/audit", params={"all": "true"}).status_code == 403
        toks = a.get("/v1/tokens").json()["tokens"]
        assert {t["org"] for t in toks} == {"acme"}
    with live.root_client() as root:
        root_acc = root.get("/v1/auth/token/self").json()["accessor"]
    with live.client(alice) as a:
        assert code(a.get(f"/v1/tokens/{root_acc}")) == "token_not_found"
        assert code(a.delete(f"/v1/tokens/{root_acc}")) == "token_not_found"
