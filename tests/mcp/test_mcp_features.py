"""Elicitation, rate limits, the operator's reveal setting, agent credentials, and the 2026 era."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import mcp_types as types
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from mcp_support import Client, World, all_text, connect, err, ok
from pydantic import SecretStr

from keybroker.core import Scope
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, PermissionDenied
from keybroker.mcp import AgentCredentials, AgentLogin, KeybrokerMCP, McpSettings, load_credentials
from keybroker.mcp._auth import credentials_from_file
from keybroker.mcp._server import input_ngrams, unquote
from keybroker.mcp._settings import load_mcp_settings
from mcp import Client as McpClient

PENDING = {"secrets": ["default/dev/OPENAI_API_KEY"], "justification": "why not", "duration_s": 60}


def _session(world: World, settings: McpSettings | None = None, elicitation: Any = None) -> Any:
    return connect(world.mcp(settings), elicitation=elicitation)


@pytest.fixture
def portal() -> Iterator[Any]:
    with anyio.from_thread.start_blocking_portal() as p:
        yield p


# ---------------------------------------------------------------------------- elicitation
@pytest.mark.parametrize(
    ("answer", "outcome", "state"),
    [
        (types.ElicitResult(action="accept", content={"keep": True}), "confirmed", "pending"),
        (types.ElicitResult(action="accept", content={"keep": False}), "withdrawn", "cancelled"),
        (types.ElicitResult(action="decline"), "withdrawn", "cancelled"),
        (types.ElicitResult(action="cancel"), "dismissed", "pending"),
        (types.ErrorData(code=-32600, message="no UI"), "unavailable", "pending"),
    ],
)
def test_elicitation_lets_the_person_keep_or_withdraw_never_approve(
    sqlite_world: World, portal: Any, answer: Any, outcome: str, state: str
) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> Any:
        asked.append(params)
        return answer

    with portal.wrap_async_context_manager(_session(sqlite_world, elicitation=elicit)) as session:
        b = ok(Client(portal, session).call("request_access", PENDING))
    assert b["user_confirmation"] == outcome and b["state"] == state
    assert len(asked) == 1
    params = asked[0]
    assert isinstance(params, types.ElicitRequestFormParams)
    assert set(params.requested_schema["properties"]) == {"keep"}  # keep or withdraw: nothing else
    assert '"""\nwhy not\n"""' in params.message and "Nothing is approved here" in params.message
    info = sqlite_world.services.access.get(sqlite_world.owner, b["request_id"])
    assert info.status == state and not info.approvals
    audit = [e for e in sqlite_world.vault.audit.iter_entries(action="mcp.elicitation")]
    assert [e.result for e in audit] == [outcome]


def test_elicitation_timeout_and_switch(sqlite_world: World, portal: Any) -> None:
    async def slow(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        await anyio.sleep(5)
        return types.ElicitResult(action="accept", content={"keep": False})

    s = McpSettings(elicitation_timeout_s=0.3)
    with portal.wrap_async_context_manager(_session(sqlite_world, s, slow)) as session:
        b = ok(Client(portal, session).call("request_access", PENDING))
    assert b["user_confirmation"] == "no_answer" and b["state"] == "pending"

    async def never(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        raise AssertionError("elicitation is switched off")

    with portal.wrap_async_context_manager(
        _session(sqlite_world, McpSettings(elicitation=False), never)
    ) as session:
        b = ok(Client(portal, session).call("request_access", PENDING))
    assert b["user_confirmation"] == "not_asked" and b["state"] == "pending"


# ---------------------------------------------------------------------------- limits
def test_calls_are_rate_limited_per_agent(sqlite_world: World, portal: Any) -> None:
    s = McpSettings(rate=0.01, burst=3)
    with portal.wrap_async_context_manager(_session(sqlite_world, s)) as session:
        c = Client(portal, session)
        for _ in range(3):
            ok(c.call("list_sessions"))
        r = c.call("list_sessions")
        assert err(r) == "rate_limited"
        assert json.loads(all_text(r).split("\n", 1)[1])["error"]["details"]["retry_after"] > 0


def test_malformed_calls_count_too(sqlite_world: World, portal: Any) -> None:
    with portal.wrap_async_context_manager(
        _session(sqlite_world, McpSettings(rate=0.01, burst=2))
    ) as session:
        c = Client(portal, session)
        assert err(c.call("no_such_tool")) == "unknown_tool"
        assert err(c.call("list_sessions", {"bogus": 1})) == "invalid_input"
        assert err(c.call("list_sessions")) == "rate_limited"


def test_access_requests_are_limited_and_pending_ones_capped(sqlite_world: World, portal: Any) -> None:
    s = McpSettings(request_rate_per_min=0.01, request_burst=2, elicitation=False)
    with portal.wrap_async_context_manager(_session(sqlite_world, s)) as session:
        c = Client(portal, session)
        ok(c.call("request_access", PENDING))
        ok(c.call("request_access", PENDING))
        assert err(c.call("request_access", PENDING)) == "rate_limited"
    s = McpSettings(max_pending=2, elicitation=False)
    with portal.wrap_async_context_manager(_session(sqlite_world, s)) as session:
        c = Client(portal, session)
        assert err(c.call("request_access", PENDING)) == "too_many_pending"
        # withdrawing one makes room
        rid = sqlite_world.services.access.list_requests(sqlite_world.owner, status="pending")[0].id
        ok(c.call("revoke_access", {"request_id": rid}))
        assert ok(c.call("request_access", PENDING))["state"] == "pending"


# ---------------------------------------------------------------------------- reveal
def test_reveal_is_off_by_default_and_only_for_allowed_low_risk_secrets(
    sqlite_world: World, portal: Any
) -> None:
    w = sqlite_world
    sc = Scope("default", "dev", "default")
    w.services.secrets.put(
        w.owner,
        sc,
        "LOW_PROXY_ONLY",
        (po := "low-proxy-only-value-9f8e7d"),
        risk="low",
        proxy_only=True,
        provider="generic",
        custom_metadata={"gateway.base_url": "https://x.example.com"},
    )
    w.values["default/dev/LOW_PROXY_ONLY"] = po
    assert "reveal_secret" not in [t.name for t in KeybrokerMCP(w.services).tools()]
    allowed = ("default/dev/WEATHER_KEY", "default/dev/OPENAI_API_KEY", "default/dev/LOW_PROXY_ONLY")
    s = McpSettings(reveal=allowed, elicitation=False)
    with portal.wrap_async_context_manager(_session(w, s)) as session:
        c = Client(portal, session)
        assert "reveal_secret" in [t.name for t in c.tools()]
        refs = ["default/dev/WEATHER_KEY", "default/dev/LOW_PROXY_ONLY", "default/dev/DB_PASSWORD"]
        req = ok(c.call("request_access", {"secrets": refs, "justification": "j", "duration_s": 60}))
        w.approve(req["request_id"], "alice")
        w.approve(req["request_id"], "bob")
        sid = ok(c.call("access_status", {"request_id": req["request_id"]}))["session_id"]
        got = ok(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/WEATHER_KEY"}))
        assert got["value"] == w.values["default/dev/WEATHER_KEY"]
        # listed but proxy-only; not listed; listed but medium risk and not in the session
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/LOW_PROXY_ONLY"})) == (
            "reveal_not_allowed"
        )
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/DB_PASSWORD"})) == (
            "reveal_not_allowed"
        )
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/OPENAI_API_KEY"})) == (
            "permission_denied"
        )
        # the risk is checked at the moment of reading, not when the server started
        w.services.secrets.update_metadata(w.owner, sc, "WEATHER_KEY", risk="medium")
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/WEATHER_KEY"})) == (
            "reveal_not_allowed"
        )
        w.services.secrets.update_metadata(w.owner, sc, "WEATHER_KEY", risk="low")
        ok(c.call("revoke_access", {"session_id": sid}))
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/WEATHER_KEY"})) == (
            "session_ended"
        )
    reads = [e for e in w.vault.audit.iter_entries(action="secret.reveal.mcp")]
    assert len(reads) == 1  # refused secrets were never decrypted


def test_reveal_setting_takes_exact_refs_only() -> None:
    with pytest.raises(InvalidInput):
        load_mcp_settings(reveal="default/dev/*")
    with pytest.raises(InvalidInput):
        load_mcp_settings(reveal="not a ref")
    assert load_mcp_settings(reveal="default/dev/A, default/dev/B").reveal == (
        "default/dev/A",
        "default/dev/B",
    )


def test_reveal_needs_an_unsealed_vault(sqlite_world: World, portal: Any) -> None:
    w = sqlite_world
    s = McpSettings(reveal=("default/dev/WEATHER_KEY",))
    with portal.wrap_async_context_manager(_session(w, s)) as session:
        c = Client(portal, session)
        sid = ok(
            c.call(
                "request_access",
                {"secrets": ["default/dev/WEATHER_KEY"], "justification": "j", "duration_s": 60},
            )
        )["session_id"]
        w.vault.seal(w.owner)
        assert err(c.call("reveal_secret", {"session_id": sid, "secret": "default/dev/WEATHER_KEY"})) == (
            "vault_sealed"
        )
        # everything else works on a sealed vault: nothing else decrypts
        assert ok(c.call("get_proxy_credentials", {"session_id": sid, "secret": "default/dev/WEATHER_KEY"}))


# ---------------------------------------------------------------------------- credentials
def test_credentials_file_forms(sqlite_world: World, tmp_path: Path) -> None:
    w = sqlite_world
    f = w.write_credentials(tmp_path / "c.json")
    assert AgentLogin(w.services, credentials_from_file(f)).principal().kind == "agent"
    # an Ed25519 key: the agent logs in by signed challenge
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    w.services.identities.set_public_key(w.owner, w.agent, pub.decode(), org="default")
    pem = tmp_path / "agent.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pem.chmod(0o600)
    f.write_text(json.dumps({"client_id": w.client_id, "private_key_file": "agent.pem"}))
    p = AgentLogin(w.services, credentials_from_file(f)).principal()
    assert p.id == f"default/{w.agent}"
    # a token
    tok = w.services.identities.login_client_secret(w.client_id, w.client_secret).token.reveal()
    f.write_text(json.dumps({"token": tok}))
    creds = credentials_from_file(f)
    assert repr(tok) not in repr(creds) and tok not in repr(creds)
    assert AgentLogin(w.services, creds).principal().kind == "agent"
    assert load_credentials(McpSettings(agent_token=SecretStr(tok))).token is not None
    for bad, why in (
        ("[]", "JSON object"),
        ("{", "not JSON"),
        (json.dumps({"client_id": "kbc_x"}), "client_secret"),
        (json.dumps({"client_id": 3, "client_secret": "x"}), "must be a string"),
        (json.dumps({"password": "x"}), "unknown field"),
    ):
        f.write_text(bad)
        with pytest.raises(InvalidInput, match=why):
            credentials_from_file(f)
    with pytest.raises(InvalidInput, match="KEYBROKER_AGENT_CREDENTIALS"):
        load_credentials(McpSettings())


def test_login_renews_before_the_token_runs_out_and_people_are_refused(sqlite_world: World) -> None:
    w = sqlite_world
    login = AgentLogin(w.services, w.credentials())
    first = login.principal()
    token1 = login._token
    login._expires = w.services.clock.now()  # as if it were about to expire
    second = login.principal()
    assert login._token != token1 and first.id == second.id
    # a revoked token with a login credential: logs in again
    w.services.tokens.revoke(second)
    assert login.principal().id == first.id
    # a plain token that stops working: the error says so
    only_token = AgentLogin(w.services, AgentCredentials("t", token=SecretValue(login._token or "")))
    w.services.tokens.revoke(only_token.principal())
    with pytest.raises(Exception, match="revoked"):
        only_token.principal()
    # people are not served
    w.services.identities.create(w.owner, "svc", "service", org="default")
    c = w.services.identities.new_client_secret(w.owner, "svc", org="default")
    with pytest.raises(PermissionDenied):
        AgentLogin(
            w.services, AgentCredentials("t", client_id=c.client_id, client_secret=c.client_secret)
        ).principal()


# ---------------------------------------------------------------------------- protocol eras, unquoting
def test_a_2026_era_client_works_too(sqlite_world: World) -> None:
    mcp = sqlite_world.mcp()

    async def main() -> None:
        async with McpClient(
            mcp.server, mode="2026-07-28", client_info=types.Implementation(name="modern", version="3")
        ) as client:
            tools = await client.list_tools()
            assert "request_access" in [t.name for t in tools.tools]
            r = await client.call_tool("list_secrets", {})
            assert not r.is_error and r.structured_content and r.structured_content["secrets"]
            r = await client.call_tool("request_access", PENDING)
            assert r.structured_content and r.structured_content["user_confirmation"] == "not_supported"

    anyio.run(main)
    calls = [e for e in sqlite_world.vault.audit.iter_entries(action="mcp.call")]
    assert calls[-1].client.startswith("mcp:stdio:modern/3")


def test_unquote_never_hands_back_what_was_sent() -> None:
    secret = "sk-live-0123456789abcdef"
    grams = input_ngrams({"secrets": [f"default/dev/{secret}"], "nested": {"k": [secret]}})
    msg = f"no secret {secret!r} in default/dev; invalid name '{secret[:10]}...'"
    out = unquote(msg, grams)
    assert secret not in out and secret[:8] not in out and "[…]" in out
    assert unquote("nothing shared here", grams) == "nothing shared here"
