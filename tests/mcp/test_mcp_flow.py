"""The whole agent flow through the official MCP client, in process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

import jsonschema
import pytest
from mcp_support import Client, World, body, err, ok

from keybroker.core._access_errors import AgentCannotApprove, ProxyTokenRevoked
from keybroker.core._proxy_tokens import is_proxy_token

TOOL_NAMES = [
    "list_secrets",
    "request_access",
    "access_status",
    "get_proxy_credentials",
    "list_sessions",
    "revoke_access",
]


def test_tools_have_descriptions_and_strict_schemas(client: Client) -> None:
    tools = client.tools()
    assert [t.name for t in tools] == TOOL_NAMES
    for t in tools:
        assert t.description and len(t.description) > 60
        schema = t.input_schema
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert "oneOf" not in schema and "anyOf" not in schema  # some model APIs refuse them
        for prop in schema["properties"].values():
            assert prop.get("description")
    req = next(t for t in tools if t.name == "request_access").input_schema
    assert req["required"] == ["secrets", "justification", "duration_s"]


def test_list_secrets_shows_what_the_tools_allow_and_never_a_value(client: Client, world: World) -> None:
    b = ok(client.call("list_secrets"))
    refs = [s["secret"] for s in b["secrets"]]
    assert refs == sorted(r for r in world.values if r.startswith("default/dev/"))
    assert "default/prod/PROD_KEY" not in refs  # the tool's environments say dev only
    by_ref = {s["secret"]: s for s in b["secrets"]}
    openai = by_ref["default/dev/OPENAI_API_KEY"]
    assert openai["risk"] == "medium" and openai["provider"] == "openai"
    assert openai["upstream"] == {"provider": "openai", "hosts": ["api.openai.com"]}
    assert openai["requestable_by"] == ["chat"] and openai["description"] == "OPENAI_API_KEY for tests"
    assert by_ref["default/dev/WEATHER_KEY"]["upstream"]["hosts"] == ["weather.example.com"]
    assert [t["tool"] for t in b["tools"]] == ["chat"]
    text = json.dumps(b)
    assert not any(v in text for v in world.values.values())
    assert ok(client.call("list_secrets", {"environment": "prod"}))["secrets"] == []
    assert len(ok(client.call("list_secrets", {"project": "default"}))["secrets"]) == 4


def test_low_risk_request_is_approved_by_policy(client: Client) -> None:
    b = ok(
        client.call(
            "request_access",
            {
                "secrets": ["default/dev/WEATHER_KEY"],
                "justification": "weather for the report",
                "duration_s": 600,
            },
        )
    )
    assert b["state"] == "approved" and b["session_id"].startswith("ses_")
    assert b["user_confirmation"] == "not_needed"
    creds = ok(
        client.call(
            "get_proxy_credentials", {"session_id": b["session_id"], "secret": "default/dev/WEATHER_KEY"}
        )
    )
    assert creds["provider"] == "generic" and creds["hosts"] == ["weather.example.com"]
    assert creds["base_url"] == "http://127.0.0.1:8270/gw/generic"


def test_full_flow_pending_approved_credentials_revoked(client: Client, world: World) -> None:
    ref = "default/dev/OPENAI_API_KEY"
    b = ok(
        client.call(
            "request_access",
            {
                "secrets": [ref],
                "justification": "summarise ticket 42 for the support team",
                "duration_s": 900,
                "context": {"ticket": 42},
            },
        )
    )
    rid = b["request_id"]
    assert b["state"] == "pending" and b["required_approvals"] == 1 and "session_id" not in b
    assert b["user_confirmation"] == "not_supported"  # this client declared no elicitation
    assert "justification" not in b and "summarise" not in json.dumps(b)  # never echoed
    st = ok(client.call("access_status", {"request_id": rid}))
    assert st["state"] == "pending" and st["kind"] == "request"
    # the agent cannot approve its own request: core refuses it, and no MCP tool offers it
    agent_p = world.mcp().login.principal()  # type: ignore[union-attr]
    with pytest.raises(AgentCannotApprove):
        world.services.access.approve(agent_p, rid)
    # a person approves while the agent waits
    timer = threading.Timer(0.5, world.approve, args=(rid,))
    timer.start()
    t0 = time.monotonic()
    st = ok(client.call("access_status", {"request_id": rid, "wait_s": 20}))
    timer.join()
    assert st["state"] == "approved" and time.monotonic() - t0 < 10
    sid = st["session_id"]
    assert st["session"]["state"] == "active" and st["session"]["secrets"] == [ref]
    creds = ok(client.call("get_proxy_credentials", {"session_id": sid, "secret": ref}))
    token = creds["api_key"]
    assert is_proxy_token(token) and creds["base_url"] == "http://127.0.0.1:8270/gw/openai/v1"
    assert creds["env"] == {"OPENAI_BASE_URL": creds["base_url"], "OPENAI_API_KEY": token}
    assert "from openai import OpenAI" in creds["how_to"]["python"]
    assert world.services.proxies.verify(token).session_id == sid
    sessions = ok(client.call("list_sessions"))["sessions"]
    assert [s["session_id"] for s in sessions] == [sid]
    ended = ok(client.call("revoke_access", {"session_id": sid}))
    assert ended["state"] == "ended" and ended["end_reason"] == "ended by the agent (MCP)"
    with pytest.raises(ProxyTokenRevoked):
        world.services.proxies.verify(token)
    assert err(client.call("get_proxy_credentials", {"session_id": sid, "secret": ref})) == "session_ended"
    assert ok(client.call("list_sessions"))["sessions"] == []
    assert len(ok(client.call("list_sessions", {"include_ended": True}))["sessions"]) == 1
    assert err(client.call("revoke_access", {"session_id": sid})) == "session_ended"


def test_high_risk_needs_two_people(client: Client, world: World) -> None:
    rid = ok(
        client.call(
            "request_access",
            {"secrets": ["default/dev/ANTHROPIC_API_KEY"], "justification": "eval run", "duration_s": 300},
        )
    )["request_id"]
    world.approve(rid, "alice")
    assert ok(client.call("access_status", {"request_id": rid}))["state"] == "pending"
    assert ok(client.call("access_status", {"request_id": rid}))["approvals"] == 1
    world.approve(rid, "bob")
    st = ok(client.call("access_status", {"request_id": rid}))
    assert st["state"] == "approved" and st["approvals"] == 2


def test_denied_request_carries_the_reason(client: Client, world: World) -> None:
    rid = ok(
        client.call(
            "request_access",
            {"secrets": ["default/dev/DB_PASSWORD"], "justification": "migrate", "duration_s": 60},
        )
    )["request_id"]
    world.services.access.deny(world.approver(), rid, reason="use the read replica")
    st = ok(client.call("access_status", {"request_id": rid, "wait_s": 5}))
    assert st["state"] == "denied" and st["reason"] == "use the read replica"
    assert err(client.call("revoke_access", {"request_id": rid})) == "request_not_pending"


def test_withdraw_pending_and_end_approved_by_request_id(client: Client, world: World) -> None:
    rid = ok(
        client.call(
            "request_access", {"secrets": ["default/dev/DB_PASSWORD"], "justification": "a", "duration_s": 60}
        )
    )["request_id"]
    assert ok(client.call("revoke_access", {"request_id": rid}))["state"] == "cancelled"
    assert ok(client.call("access_status", {"request_id": rid}))["state"] == "cancelled"
    rid2 = ok(
        client.call(
            "request_access", {"secrets": ["default/dev/WEATHER_KEY"], "justification": "b", "duration_s": 60}
        )
    )["request_id"]
    out = ok(client.call("revoke_access", {"request_id": rid2}))
    assert out["state"] == "approved" and out["session"]["state"] == "ended"


def test_errors_are_tool_errors_with_stable_codes(client: Client, world: World) -> None:
    cases = [
        ("no_such_tool", {}, "unknown_tool"),
        ("request_access", {}, "invalid_input"),
        ("request_access", {"secrets": ["x"], "justification": "j", "duration_s": 5}, "invalid_input"),
        (
            "request_access",
            {"secrets": ["default/dev/A"], "justification": " ", "duration_s": 5},
            "invalid_input",
        ),
        (
            "request_access",
            {"secrets": ["default/dev/A"], "justification": "j", "duration_s": 0},
            "invalid_input",
        ),
        (
            "request_access",
            {"secrets": ["default/dev/A"], "justification": "j", "duration_s": True},
            "invalid_input",
        ),
        (
            "request_access",
            {"secrets": ["default/prod/PROD_KEY"], "justification": "j", "duration_s": 5},
            "not_allowed_for_tool",
        ),
        (
            "request_access",
            {"secrets": ["default/dev/MISSING"], "justification": "j", "duration_s": 5},
            "secret_not_found",
        ),
        (
            "request_access",
            {"secrets": ["default/dev/WEATHER_KEY"], "justification": "j", "duration_s": 5, "tool": "other"},
            "tool_not_found",
        ),
        (
            "request_access",
            {"secrets": ["default/dev/WEATHER_KEY"], "justification": "j", "duration_s": 5, "approve": True},
            "invalid_input",
        ),
        ("access_status", {}, "invalid_input"),
        ("access_status", {"request_id": "req_1", "session_id": "ses_1"}, "invalid_input"),
        ("access_status", {"request_id": "req_0000"}, "access_request_not_found"),
        ("access_status", {"session_id": "ses_0000"}, "session_not_found"),
        (
            "get_proxy_credentials",
            {"session_id": "ses_0000", "secret": "default/dev/WEATHER_KEY"},
            "session_not_found",
        ),
        ("revoke_access", {"session_id": "ses_0000"}, "session_not_found"),
        ("list_sessions", {"include_ended": "yes"}, "invalid_input"),
    ]
    for tool, args, code in cases:
        result = client.call(tool, args)
        assert err(result) == code, (tool, args, body(result))
        assert body(result)["error"]["message"]


def test_another_agents_requests_and_sessions_are_invisible(client: Client, world: World) -> None:
    other = world.services.identities.create(world.owner, "agent2", "agent", org="default")
    creds = world.services.identities.new_client_secret(world.owner, "agent2", org="default")
    world.services.tools.register(
        world.owner, "agent2", "chat", allowed_secrets=["default/*"], environments=["dev"], org="default"
    )
    from keybroker.crypto import SecretValue
    from keybroker.mcp import AgentCredentials, AgentLogin

    p2 = AgentLogin(
        world.services,
        AgentCredentials(
            "t", client_id=creds.client_id, client_secret=SecretValue(creds.client_secret.reveal())
        ),
    ).principal()
    info = world.services.access.request(
        p2, "chat", ["default/dev/WEATHER_KEY"], justification="x", duration_s=60
    )
    assert info.session_id and other.id
    assert err(client.call("access_status", {"request_id": info.id})) == "access_request_not_found"
    assert err(client.call("access_status", {"session_id": info.session_id})) == "session_not_found"
    assert err(client.call("revoke_access", {"session_id": info.session_id})) == "session_not_found"
    assert (
        err(
            client.call(
                "get_proxy_credentials", {"session_id": info.session_id, "secret": "default/dev/WEATHER_KEY"}
            )
        )
        == "session_not_found"
    )
    assert ok(client.call("list_sessions"))["sessions"] == []


def test_every_call_is_audited_with_the_client_name_and_version(client: Client, world: World) -> None:
    ok(client.call("list_secrets"))
    err(client.call("access_status", {"request_id": "req_0000"}))
    entries = [e for e in world.vault.audit.iter_entries(action="mcp.call")]
    assert len(entries) >= 2
    last_two = entries[-2:]
    for e in last_two:
        detail = json.loads(e.detail) if isinstance(e.detail, str) else e.detail
        assert detail["client"] == {"name": "pytest-client", "version": "1.0"}
        assert detail["transport"] == "stdio"
        assert e.actor == f"agent:default/{world.agent}"
        assert e.client.startswith("mcp:stdio:pytest-client/1.0")
    assert [e.result for e in last_two] == ["ok", "error:access_request_not_found"]
    # the core records a call causes carry the client too
    reads = [e for e in world.vault.audit.iter_entries(action="secret.list")]
    assert reads and reads[-1].client.startswith("mcp:stdio:pytest-client/1.0")


def test_token_check_on_every_call_a_disabled_agent_stops_at_once(client: Client, world: World) -> None:
    ok(client.call("list_sessions"))
    world.services.identities.disable(world.owner, world.agent, org="default")
    assert err(client.call("list_sessions")) == "unauthenticated"
