"""Over streamable HTTP (uvicorn on a free port, the gateway mounted beside it at ``/gw``), with
the official MCP client and the agent's bearer token: the whole flow to a real ``openai`` call,
plus the HTTP authentication rules. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import anyio.from_thread
import httpx
import mcp_types as types
import openai
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_support import World, all_text, err, make_world, ok

from keybroker.gateway import Gateway
from keybroker.gateway._testing import FakeUpstream, ServerThread
from keybroker.mcp import KeybrokerMCP, McpHttpApp, McpSettings
from mcp import ClientSession

pytestmark = pytest.mark.slow

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


class Http:
    def __init__(self, world: World, upstream: FakeUpstream, url: str) -> None:
        self.world, self.upstream, self.url = world, upstream, url

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def agent_token(self, name: str | None = None) -> str:
        w = self.world
        if name is None:
            return w.services.identities.login_client_secret(w.client_id, w.client_secret).token.reveal()
        w.services.identities.create(w.owner, name, "agent", org="default")
        c = w.services.identities.new_client_secret(w.owner, name, org="default")
        return w.services.identities.login_client_secret(c.client_id, c.client_secret.reveal()).token.reveal()


@pytest.fixture
def http(store_url: str) -> Iterator[Http]:
    upstream = FakeUpstream(keys=set())
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(upstream))
        world = make_world(store_url, upstream_url=up.url)
        stack.callback(world.vault.store.dispose)  # runs last, once every server thread is gone
        upstream.keys.add(world.values["default/dev/OPENAI_API_KEY"])
        # one process, one set of services: the gateway hears of a revocation at once
        gateway = Gateway(world.services.proxies)
        holder: dict[str, McpHttpApp] = {}

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await holder["app"](scope, receive, send)

        server = ServerThread(app, lifespan="on")  # binds its port now: the gateway URL is known
        settings = McpSettings(gateway_url=f"{server.url}/gw")
        mcp = KeybrokerMCP(world.services, settings, transport="http")
        holder["app"] = McpHttpApp(mcp, mounts={"/gw": gateway})
        stack.enter_context(server)
        yield Http(world, upstream, server.url)


@asynccontextmanager
async def open_http(url: str, token: str, elicitation: Any = None) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(
                read,
                write,
                client_info=types.Implementation(name="cursor", version="1.7.0"),
                elicitation_callback=elicitation,
            ) as session:
                await session.initialize()
                yield session


def test_http_whole_flow_to_a_real_openai_call(http: Http) -> None:
    w = http.world
    ref = "default/dev/OPENAI_API_KEY"
    asked: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"keep": True})

    seen: list[types.CallToolResult] = []
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(open_http(http.mcp_url, http.agent_token(), elicit)) as session,
    ):

        def call(tool: str, args: dict[str, Any] | None = None) -> types.CallToolResult:
            r = portal.call(session.call_tool, tool, args)
            assert isinstance(r, types.CallToolResult)
            seen.append(r)
            return r

        assert ref in [s["secret"] for s in ok(call("list_secrets"))["secrets"]]
        req = ok(
            call("request_access", {"secrets": [ref], "justification": "nightly digest", "duration_s": 600})
        )
        assert req["state"] == "pending" and req["user_confirmation"] == "confirmed"
        assert len(asked) == 1 and "nightly digest" in asked[0] and req["request_id"] in asked[0]
        st = ok(call("access_status", {"request_id": req["request_id"]}))
        assert st["state"] == "pending"
        w.approve(req["request_id"])
        st = ok(call("access_status", {"request_id": req["request_id"], "wait_s": 10}))
        assert st["state"] == "approved"
        creds = ok(call("get_proxy_credentials", {"session_id": st["session_id"], "secret": ref}))
        assert creds["base_url"] == f"{http.url}/gw/openai/v1"
        client = openai.OpenAI(base_url=creds["base_url"], api_key=creds["api_key"], max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [c.choices[0].delta.content for c in stream if c.choices]
        assert "".join(x for x in chunks if x)
        assert http.upstream.seen[-1].key == w.values[ref] and not http.upstream.proxy_token_seen
        assert ok(call("revoke_access", {"session_id": st["session_id"]}))["state"] == "ended"
        with pytest.raises(openai.AuthenticationError) as exc_info:
            client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "again"}])
        assert exc_info.value.code == "proxy_token_revoked"
    for r in seen:
        assert not any(v in all_text(r) for v in w.values.values())
    calls = list(w.vault.audit.iter_entries(action="mcp.call"))
    detail = json.loads(calls[-1].detail) if isinstance(calls[-1].detail, str) else calls[-1].detail
    assert detail["client"] == {"name": "cursor", "version": "1.7.0"} and detail["transport"] == "http"


def test_http_needs_an_agent_bearer_token(http: Http) -> None:
    w = http.world
    with httpx.Client(timeout=10) as c:
        r = c.post(http.mcp_url, json=INIT, headers=ACCEPT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.post(http.mcp_url, json=INIT, headers={**ACCEPT, "Authorization": "Bearer kbt_nonsense"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        root = w.services.identities.bootstrap_root(w.owner).token.reveal()
        r = c.post(http.mcp_url, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {root}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        token = http.agent_token()
        r = c.post(http.mcp_url, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        # an MCP session belongs to the agent that opened it
        other = http.agent_token("agent2")
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        r = c.post(
            http.mcp_url,
            json=listing,
            headers={**ACCEPT, "Authorization": f"Bearer {other}", "mcp-session-id": sid},
        )
        assert r.status_code == 404
        # a revoked token stops at the next request
        w.services.tokens.revoke(w.services.tokens.authenticate(token))
        r = c.post(
            http.mcp_url,
            json=listing,
            headers={**ACCEPT, "Authorization": f"Bearer {token}", "mcp-session-id": sid},
        )
        assert r.status_code == 401
        assert c.get(f"{http.url}/healthz").json() == {"status": "ok"}
        assert c.get(f"{http.url}/nope").status_code == 404


def test_http_declined_elicitation_withdraws_the_request(http: Http) -> None:
    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(open_http(http.mcp_url, http.agent_token(), decline)) as session,
    ):
        r = portal.call(
            session.call_tool,
            "request_access",
            {"secrets": ["default/dev/DB_PASSWORD"], "justification": "x", "duration_s": 60},
        )
        b = ok(r)
        assert b["state"] == "cancelled" and b["user_confirmation"] == "withdrawn"
        assert err(portal.call(session.call_tool, "revoke_access", {"request_id": b["request_id"]})) == (
            "request_not_pending"
        )


def test_mounted_in_keybroker_serve(store_url: str) -> None:
    """``create_app(extensions=[keybroker.mcp.install])``: /mcp beside the REST API, over the
    server's own services, the session manager started by the first request."""
    from keybroker.mcp import install
    from keybroker.server import create_app

    world = make_world(store_url)
    try:
        app = create_app(vault=world.vault, extensions=[install])
        token = world.services.identities.login_client_secret(
            world.client_id, world.client_secret
        ).token.reveal()
        with ServerThread(app, lifespan="on") as srv:
            with (
                anyio.from_thread.start_blocking_portal() as portal,
                portal.wrap_async_context_manager(open_http(f"{srv.url}/mcp", token)) as session,
            ):
                r = portal.call(session.call_tool, "list_secrets", {})
                assert isinstance(r, types.CallToolResult)
                assert len(ok(r)["secrets"]) == 4
                r = portal.call(
                    session.call_tool,
                    "request_access",
                    {"secrets": ["default/dev/WEATHER_KEY"], "justification": "j", "duration_s": 60},
                )
                assert ok(r)["state"] == "approved"
            with httpx.Client(timeout=10) as c:
                assert c.post(f"{srv.url}/mcp", json=INIT, headers=ACCEPT).status_code == 401
                assert c.get(f"{srv.url}/v1/sys/health").status_code in (200, 503)
    finally:
        world.vault.store.dispose()


def test_http_2026_era_client(http: Http) -> None:
    """A client speaking the 2026-07-28 protocol (no handshake, stateless requests) is served and
    audited the same way; it gets no elicitation (that era has no server-to-client requests)."""
    from mcp import Client as McpClient

    token = http.agent_token()

    async def main() -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as hc:
            async with McpClient(
                streamable_http_client(http.mcp_url, http_client=hc),
                mode="auto",
                client_info=types.Implementation(name="modern-http", version="9"),
            ) as client:
                listed = await client.call_tool("list_secrets", {})
                asked = await client.call_tool(
                    "request_access",
                    {"secrets": ["default/dev/OPENAI_API_KEY"], "justification": "x", "duration_s": 60},
                )
                assert listed.structured_content and asked.structured_content
                return client.session.protocol_version, listed.structured_content, asked.structured_content

    version, listed, asked = anyio.run(main)
    assert version == "2026-07-28"
    assert len(listed["secrets"]) == 4
    assert asked["state"] == "pending" and asked["user_confirmation"] == "not_supported"
    calls = list(http.world.vault.audit.iter_entries(action="mcp.call"))
    assert [c.client for c in calls[-2:]] == ["mcp:http:modern-http/9"] * 2
