"""The whole agent-access story over the real HTTP stack of ``keybroker serve`` (REST API +
gateway mounted at /gw), on SQLite and PostgreSQL: an agent identity logs in with a client secret,
an admin registers its tool, the agent asks for a high-risk key, two people approve over the API,
the agent takes a proxy token and calls the provider with the official OpenAI SDK through /gw,
the session is revoked over the API and the very next request fails. Plus proxy-only secrets,
``/v1/proxy-env`` for ``keybroker run``, incident rotation and the access API's refusals."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from keybroker.core import ManualClock, Vault, local_principal
from keybroker.core._access_requests import MemoryNotifier
from keybroker.core._identity import IdentityService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.gateway._settings import GatewaySettings
from keybroker.gateway._testing import FakeUpstream, ServerThread
from keybroker.server import create_app
from keybroker.server._access_api import install, router

REAL = "sk-proj-REST-flow-key-0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]


class Api:
    opened: list[httpx.Client] = []

    def __init__(self, url: str, token: str) -> None:
        self.c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        Api.opened.append(self.c)

    def __call__(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.json() if r.content else None


@pytest.fixture
def served(vault: Vault, clock: ManualClock) -> Iterator[tuple[str, Api, MemoryNotifier, FakeUpstream]]:
    authz = RbacAuthorizer()
    root = IdentityService(vault, TokenService(vault, authz), authz).bootstrap_root(local_principal("test"))
    notifier = MemoryNotifier()
    settings = GatewaySettings(keepalive=0.5, read_timeout=5)
    app = create_app(
        vault=vault,
        clock=clock,
        routers=[router],
        extensions=[functools.partial(install, include_router=False, settings=settings, notifier=notifier)],
    )
    up = FakeUpstream(keys={REAL, REAL + "-v2"})
    with ServerThread(up) as up_srv, ServerThread(app, lifespan="on") as srv:
        admin = Api(srv.url, root.token.reveal())
        admin(
            "PUT",
            "/v1/secrets/default/dev/OPENAI_API_KEY",
            json={
                "value": REAL,
                "provider": "openai",
                "risk": "high",
                "custom_metadata": {"gateway.base_url": up_srv.url},
            },
        )
        try:
            yield srv.url, admin, notifier, up
        finally:
            while Api.opened:
                Api.opened.pop().close()


def _login(url: str, admin: Api, name: str, kind: str, role: str | None = None) -> Api:
    admin("POST", "/v1/identities", 201, json={"name": name, "kind": kind})
    if role:
        admin("PUT", f"/v1/identities/{name}/roles", json={"role": role, "project": "*"})
    cred = admin("POST", f"/v1/identities/{name}/client-secret", 201)
    tok = httpx.post(
        f"{url}/v1/auth/login", json={"client_id": cred["client_id"], "client_secret": cred["client_secret"]}
    )
    assert tok.status_code == 200, tok.text
    return Api(url, tok.json()["token"])


def test_request_approve_use_revoke_over_http(served: tuple[str, Api, MemoryNotifier, FakeUpstream]) -> None:
    url, admin, notifier, up = served
    agent = _login(url, admin, "support-bot", "agent")
    alice = _login(url, admin, "alice", "user", "admin")
    bob = _login(url, admin, "bob", "user", "admin")
    viewer = _login(url, admin, "victor", "user", "viewer")
    # deny by default: no tool yet
    err = agent(
        "POST",
        "/v1/access-requests",
        404,
        json={
            "tool": "triage",
            "secrets": ["default/dev/OPENAI_API_KEY"],
            "justification": "x",
            "duration_s": 60,
        },
    )
    assert err["error"]["code"] == "tool_not_found"
    agent("PUT", "/v1/agents/support-bot/tools/triage", 403, json={"allowed_secrets": ["*"]})  # agents cannot
    admin(
        "PUT",
        "/v1/agents/support-bot/tools/triage",
        json={
            "allowed_secrets": ["default/OPENAI_*"],
            "environments": ["dev"],
            "max_risk": "high",
            "max_session_s": 3600,
            "budget": {"max_requests": 10},
        },
    )
    assert [t["tool_id"] for t in agent("GET", "/v1/agents/support-bot/tools")["tools"]] == ["triage"]
    req = agent(
        "POST",
        "/v1/access-requests",
        201,
        json={
            "tool": "triage",
            "secrets": [{"project": "default", "environment": "dev", "name": "OPENAI_API_KEY"}],
            "justification": "Classify ticket #991 (customer asked for a refund)",
            "duration_s": 1200,
            "context": {"ticket": "991"},
        },
    )["request"]
    assert req["status"] == "pending" and req["required_approvals"] == 2
    assert notifier.events[-1][0] == "access_request.pending"
    rid = req["id"]
    assert [r["id"] for r in alice("GET", "/v1/access-requests?status=pending")["requests"]] == [rid]
    assert (
        agent("POST", f"/v1/access-requests/{rid}/approve", 403, json={})["error"]["code"]
        == "agent_cannot_approve"
    )
    assert (
        viewer("POST", f"/v1/access-requests/{rid}/approve", 403, json={})["error"]["code"]
        == "permission_denied"
    )
    assert (
        alice("POST", f"/v1/access-requests/{rid}/approve", json={"duration_s": 900})["request"]["status"]
        == "pending"
    )
    assert (
        alice("POST", f"/v1/access-requests/{rid}/approve", 409, json={})["error"]["code"] == "already_exists"
    )
    done = bob("POST", f"/v1/access-requests/{rid}/approve", json={"comment": "ok"})["request"]
    assert done["status"] == "approved" and done["granted_duration_s"] == 900
    sid = done["session_id"]
    assert agent("GET", f"/v1/access-requests/{rid}")["request"]["session_id"] == sid
    pt = agent(
        "POST",
        f"/v1/sessions/{sid}/tokens",
        201,
        json={
            "project": "default",
            "environment": "dev",
            "name": "OPENAI_API_KEY",
        },
    )["proxy_token"]
    assert pt["base_url"] == f"{url}/gw/openai/v1" and pt["token"].startswith("kbp_")
    assert pt["budget"]["max_requests"] == 10
    # another agent (or anyone else) cannot take tokens from this session
    other = _login(url, admin, "other-bot", "agent")
    other(
        "POST",
        f"/v1/sessions/{sid}/tokens",
        404,
        json={"project": "default", "environment": "dev", "name": "OPENAI_API_KEY"},
    )
    client = openai.OpenAI(api_key=pt["token"], base_url=pt["base_url"], max_retries=2)
    try:
        r = client.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "hello from upstream" and up.seen[-1].key == REAL
        listed = agent("GET", f"/v1/sessions/{sid}/tokens")["proxy_tokens"]
        assert "token" not in listed[0] and listed[0]["id"] == pt["id"]
        # a person revokes the session over the API: the very next request fails, without retries
        alice("DELETE", f"/v1/sessions/{sid}", params={"reason": "ticket closed"})
        with pytest.raises(openai.AuthenticationError) as ei:
            client.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
        assert ei.value.code == "proxy_token_revoked" and len(up.seen) == 1
    finally:
        client.close()
    state = agent("GET", f"/v1/sessions/{sid}")["session"]
    assert state["state"] == "ended" and state["end_reason"] == "ticket closed"


def test_agent_revocation_and_incident_rotation(
    served: tuple[str, Api, MemoryNotifier, FakeUpstream],
) -> None:
    url, admin, _, up = served
    agent = _login(url, admin, "etl-bot", "agent")
    admin("PATCH", "/v1/metadata/default/dev/OPENAI_API_KEY", json={"risk": "low"})
    admin(
        "PUT",
        "/v1/agents/etl-bot/tools/etl",
        json={"allowed_secrets": ["default/*"], "environments": ["dev"]},
    )

    def session_token() -> tuple[str, str]:
        r = agent(
            "POST",
            "/v1/access-requests",
            201,
            json={
                "tool": "etl",
                "secrets": ["default/dev/OPENAI_API_KEY"],
                "justification": "nightly",
                "duration_s": 300,
            },
        )["request"]
        assert r["status"] == "approved"
        t = agent(
            "POST",
            f"/v1/sessions/{r['session_id']}/tokens",
            201,
            json={"project": "default", "environment": "dev", "name": "OPENAI_API_KEY"},
        )["proxy_token"]
        return t["token"], t["base_url"]

    token, base = session_token()
    assert (
        httpx.post(
            f"{base}/chat/completions", json={"model": "x"}, headers={"authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    rot = admin("POST", "/v1/incident-rotate/default/dev/OPENAI_API_KEY", json={"value": REAL + "-v2"})
    assert len(rot["ended_sessions"]) == 1
    r = httpx.post(
        f"{base}/chat/completions", json={"model": "x"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "proxy_token_revoked"
    token, base = session_token()
    httpx.post(f"{base}/chat/completions", json={"model": "x"}, headers={"authorization": f"Bearer {token}"})
    assert up.seen[-1].key == REAL + "-v2"
    out = admin("POST", "/v1/agents/etl-bot/revoke")
    assert len(out["ended_sessions"]) == 1
    r = httpx.post(
        f"{base}/chat/completions", json={"model": "x"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401
    assert (
        httpx.get(f"{url}/v1/access-requests", headers=agent.c.headers).status_code == 401
    )  # logged out too


def test_proxy_only_and_run_env(served: tuple[str, Api, MemoryNotifier, FakeUpstream]) -> None:
    url, admin, _, up = served
    admin("PATCH", "/v1/metadata/default/dev/OPENAI_API_KEY", json={"proxy_only": True})
    err = admin("GET", "/v1/secrets/default/dev/OPENAI_API_KEY", 403)
    assert err["error"]["code"] == "proxy_only" and REAL not in str(err)
    out = admin(
        "POST",
        "/v1/proxy-env",
        201,
        json={"project": "default", "environment": "dev", "names": ["OPENAI_API_KEY"]},
    )
    assert (
        out["env"]["OPENAI_BASE_URL"] == f"{url}/gw/openai/v1"
        and out["env"]["KEYBROKER_GATEWAY_URL"] == f"{url}/gw"
    )
    token = out["tokens"]["OPENAI_API_KEY"]
    assert token.startswith("kbp_") and REAL not in str(out)
    client = openai.OpenAI(api_key=token, base_url=out["env"]["OPENAI_BASE_URL"], max_retries=0)
    try:
        assert client.chat.completions.create(model="gpt-test", messages=MSG).choices  # type: ignore[arg-type]
    finally:
        client.close()
    assert up.seen[-1].key == REAL
    assert admin("POST", "/v1/access/cleanup")["sessions"] == 0
    assert httpx.get(f"{url}/gw/_health").json() == {"status": "ok"}
