"""Over stdio, as Claude Desktop, Claude Code or Cursor run it: the official MCP client spawns
``python -m keybroker.mcp`` (a test KEYBROKER_HOME, the agent's credentials file), and the agent
goes all the way to a real ``openai`` SDK call through the gateway to a local upstream that checks
it got the real key. SQLite (the embedded default store)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import mcp_types as types
import openai
import pytest
from mcp_support import World, all_text, body, err, make_world, ok

from keybroker.gateway import Gateway, GatewayConfig
from keybroker.gateway._testing import FakeUpstream, ServerThread
from mcp import ClientSession, StdioServerParameters, stdio_client

pytestmark = pytest.mark.slow


class Stdio:
    """A blocking handle on an MCP session with a spawned ``python -m keybroker.mcp``."""

    def __init__(self, portal: Any, session: ClientSession) -> None:
        self.portal = portal
        self.session = session

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        result = self.portal.call(self.session.call_tool, tool, arguments)
        assert isinstance(result, types.CallToolResult)
        return result


def server_params(home: Path, env: dict[str, str], args: list[str] | None = None) -> StdioServerParameters:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    clean.update({"KEYBROKER_HOME": str(home), **env})
    return StdioServerParameters(
        command=sys.executable, args=["-m", "keybroker.mcp", *(args or [])], env=clean
    )


class Rig:
    def __init__(self, world: World, upstream: FakeUpstream, upstream_url: str, gateway_url: str, home: Path):
        self.world, self.upstream, self.upstream_url, self.gateway_url, self.home = (
            world,
            upstream,
            upstream_url,
            gateway_url,
            home,
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    upstream = FakeUpstream(keys=set())
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(upstream))
        world = make_world(f"sqlite:///{home / 'vault.db'}", upstream_url=up.url)
        stack.callback(world.vault.store.dispose)  # runs last, once every server thread is gone
        stack.callback(world.services.close)
        upstream.keys.add(world.values["default/dev/OPENAI_API_KEY"])
        # recheck_s=0: the gateway re-checks every token, so a revocation made in the MCP
        # server's process is seen by the very next request
        gw = stack.enter_context(
            ServerThread(Gateway(world.services.proxies, config=GatewayConfig(recheck_s=0.0)))
        )
        yield Rig(world, upstream, up.url, gw.url, home)


@asynccontextmanager
async def open_stdio(params: StdioServerParameters, errlog: Any) -> AsyncIterator[ClientSession]:
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(
            read, write, client_info=types.Implementation(name="claude-code", version="2.0.1")
        ) as session:
            await session.initialize()
            yield session


def _stdio(rig: Rig, tmp_path: Path, errlog: Any, **env: str) -> Any:
    cred = rig.world.write_credentials(tmp_path / "agent.json")
    params = server_params(
        rig.home,
        {"KEYBROKER_AGENT_CREDENTIALS": str(cred), "KEYBROKER_MCP_GATEWAY_URL": rig.gateway_url, **env},
    )
    return open_stdio(params, errlog)


def test_stdio_whole_flow_to_a_real_openai_call(rig: Rig, tmp_path: Path) -> None:
    w = rig.world
    ref = "default/dev/OPENAI_API_KEY"
    real_key = w.values[ref]
    errlog_path = tmp_path / "server.stderr"
    seen: list[types.CallToolResult] = []
    with (
        errlog_path.open("w") as errlog,
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(_stdio(rig, tmp_path, errlog)) as session,
    ):
        mcp = Stdio(portal, session)

        def call(tool: str, args: dict[str, Any] | None = None) -> types.CallToolResult:
            r = mcp.call(tool, args)
            seen.append(r)
            return r

        names = [t.name for t in portal.call(session.list_tools).tools]
        assert names[:2] == ["list_secrets", "request_access"] and "reveal_secret" not in names
        listed = ok(call("list_secrets"))
        assert ref in [s["secret"] for s in listed["secrets"]]
        req = ok(
            call(
                "request_access", {"secrets": [ref], "justification": "answer a customer", "duration_s": 600}
            )
        )
        assert req["state"] == "pending"
        rid = req["request_id"]
        assert ok(call("access_status", {"request_id": rid}))["state"] == "pending"
        # a person approves, through core's approve (what `keybroker access approve` calls)
        w.approve(rid)
        st = ok(call("access_status", {"request_id": rid, "wait_s": 10}))
        assert st["state"] == "approved"
        sid = st["session_id"]
        creds = ok(call("get_proxy_credentials", {"session_id": sid, "secret": ref}))
        assert creds["base_url"] == f"{rig.gateway_url}/openai/v1"
        # the agent's code: the official OpenAI SDK, unmodified, with the gateway and a proxy token
        client = openai.OpenAI(base_url=creds["base_url"], api_key=creds["api_key"], max_retries=0)
        reply = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert rig.upstream.seen[-1].key == real_key  # the upstream got the real key...
        assert not rig.upstream.proxy_token_seen  # ...and never the proxy token
        ended = ok(call("revoke_access", {"session_id": sid}))
        assert ended["state"] == "ended"
        with pytest.raises(openai.AuthenticationError) as exc_info:
            client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "again"}])
        assert exc_info.value.code == "proxy_token_revoked"
        assert err(call("get_proxy_credentials", {"session_id": sid, "secret": ref})) == "session_ended"
    # nothing the agent received, and nothing the server logged, holds a value
    for r in seen:
        text = all_text(r)
        assert not any(v in text for v in w.values.values())
    log_text = errlog_path.read_text()
    assert not any(v in log_text for v in w.values.values())
    calls = [e for e in w.vault.audit.iter_entries(action="mcp.call")]
    assert len(calls) == len(seen)
    detail = json.loads(calls[0].detail) if isinstance(calls[0].detail, str) else calls[0].detail
    assert detail["client"] == {"name": "claude-code", "version": "2.0.1"} and detail["transport"] == "stdio"


def test_stdio_without_a_credential_fails_at_start(rig: Rig, tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env["KEYBROKER_HOME"] = str(rig.home)
    proc = subprocess.run(
        [sys.executable, "-m", "keybroker.mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert "KEYBROKER_AGENT_CREDENTIALS" in proc.stderr and proc.stdout == ""
    # a credentials file others can read is refused, as ssh refuses such keys
    cred = rig.world.write_credentials(tmp_path / "loose.json")
    cred.chmod(0o644)
    env["KEYBROKER_AGENT_CREDENTIALS"] = str(cred)
    proc = subprocess.run(
        [sys.executable, "-m", "keybroker.mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and "chmod 600" in proc.stderr
    assert rig.world.client_secret not in proc.stderr
    # a wrong secret: one line, no secret echoed
    cred.write_text(json.dumps({"client_id": rig.world.client_id, "client_secret": "kbs_" + "A" * 49}))
    cred.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "keybroker.mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and "login failed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stdio_tool_errors_keep_the_session_alive(rig: Rig, tmp_path: Path) -> None:
    with (
        (tmp_path / "e.log").open("w") as errlog,
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(_stdio(rig, tmp_path, errlog)) as session,
    ):
        mcp = Stdio(portal, session)
        assert err(mcp.call("access_status", {"request_id": "req_missing"})) == "access_request_not_found"
        assert (
            err(
                mcp.call(
                    "request_access",
                    {"secrets": ["default/prod/PROD_KEY"], "justification": "x", "duration_s": 5},
                )
            )
            == "not_allowed_for_tool"
        )
        assert body(mcp.call("list_sessions"))["sessions"] == []
