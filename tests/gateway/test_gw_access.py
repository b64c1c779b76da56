"""Tools, access requests, sessions and proxy tokens in core (no HTTP). SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from gwkit import ALICE, BOB, REAL_KEY, Access, put_key

from keybroker.core import Principal, Scope
from keybroker.core._access_errors import (
    AgentCannotApprove,
    NotAllowedForTool,
    ProxyOnly,
    ProxyTokenExpired,
    ProxyTokenInvalid,
    ProxyTokenRevoked,
    RequestNotPending,
    SelfApproval,
    SessionEnded,
    ToolNotFound,
)
from keybroker.core._proxy_tokens import is_proxy_token
from keybroker.core._sessions import SESSION_ATTR, Budget, SessionAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.errors import AlreadyExists, InvalidInput, PermissionDenied

S = Scope()


def _tool(access: Access, agent: Principal, **kw: object) -> None:
    args: dict[str, object] = {
        "allowed_secrets": ["default/OPENAI_*", "default/ANTHROPIC_*"],
        "environments": ["dev"],
        "max_risk": "medium",
        "max_session_s": 3600,
    }
    args.update(kw)
    access.tools.register(ALICE, agent.attrs["identity_id"], "summarizer", **args)  # type: ignore[arg-type]


def test_auto_approve_within_limits_opens_a_session_and_token(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    _tool(access, agent, budget={"max_requests": 5})
    req = access.requests.request(
        agent,
        "summarizer",
        ["default/dev/OPENAI_API_KEY"],
        justification="summarize order 42",
        duration_s=600,
        context={"order": "42"},
    )
    assert req.status == "approved" and req.session_id and req.policy.startswith("auto")
    assert access.notifier.events[-1][0] == "access_request.approved"
    issued = access.tokens.issue(agent, req.session_id, S, "OPENAI_API_KEY")
    assert is_proxy_token(issued.token.reveal()) and "[secret]" in repr(issued)
    assert issued.hosts == ("api.openai.com",) and issued.route == "openai"
    assert issued.budget.max_requests == 5
    grant = access.tokens.verify(issued.token.reveal())
    assert grant.session_id == req.session_id and grant.principal_id == agent.id
    # the token is stored hashed: its text is nowhere in the database or the audit trail
    dump = json.dumps([e.to_dict() for e in access.vault.audit.iter_entries()])
    assert issued.token.reveal() not in dump and REAL_KEY not in dump


def test_deny_by_default(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    with pytest.raises(ToolNotFound):
        access.requests.request(
            agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
        )
    _tool(access, agent, allowed_secrets=[], environments=["dev"])
    with pytest.raises(NotAllowedForTool) as ei:
        access.requests.request(
            agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
        )
    assert ei.value.code == "not_allowed_for_tool"
    _tool(access, agent, allowed_secrets=["default/*"], environments=[])
    with pytest.raises(NotAllowedForTool):
        access.requests.request(
            agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
        )
    _tool(access, agent, allowed_secrets=["default/OPENAI_*"], environments=["prod"])
    with pytest.raises(NotAllowedForTool):
        access.requests.request(
            agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
        )
    results = [e.result for e in access.vault.audit.iter_entries(action="access.request")]
    assert results.count("denied:not_allowed_for_tool") == 3 and "denied:tool_not_found" in results


def test_bad_requests(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    _tool(access, agent)
    for kw in (
        {"justification": "", "duration_s": 60},
        {"justification": "   ", "duration_s": 60},
        {"justification": "x", "duration_s": 0},
        {"justification": "x", "duration_s": 10**9},
        {"justification": "x" * 5000, "duration_s": 60},
    ):
        with pytest.raises(InvalidInput):
            access.requests.request(agent, "summarizer", ["default/dev/OPENAI_API_KEY"], **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        access.requests.request(agent, "summarizer", [], justification="x", duration_s=60)
    with pytest.raises(InvalidInput):
        access.requests.request(agent, "summarizer", ["OPENAI_API_KEY"], justification="x", duration_s=60)
    with pytest.raises(InvalidInput):
        access.tools.register(ALICE, agent.attrs["identity_id"], "Bad Tool!")
    with pytest.raises(InvalidInput):
        access.tools.register(ALICE, agent.attrs["identity_id"], "t", max_risk="extreme")
    with pytest.raises(InvalidInput):
        access.tools.register(ALICE, agent.attrs["identity_id"], "t", budget={"max_requests": 0})


def test_justification_is_stored_verbatim(access: Access) -> None:
    put_key(access, risk="high")
    agent = access.agent()
    _tool(access, agent, max_risk="high")
    text = "Need it for order #42 — «urgent»\n'; DROP TABLE kb_secrets; --\n\u202e"
    req = access.requests.request(
        agent,
        "summarizer",
        ["default/dev/OPENAI_API_KEY"],
        justification=text,
        duration_s=60,
        context={"a": [1]},
    )
    assert access.requests.get(ALICE, req.id).justification == text
    assert access.requests.get(agent, req.id).context == {"a": [1]}


def test_pending_then_two_distinct_approvers_for_high_risk(access: Access) -> None:
    put_key(access, risk="high")
    agent = access.agent()
    _tool(access, agent, max_risk="high")
    req = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="billing run", duration_s=1800
    )
    assert req.status == "pending" and req.required_approvals == 2 and "high-risk" in req.policy
    assert access.notifier.events[-1][0] == "access_request.pending"
    with pytest.raises(AgentCannotApprove):
        access.requests.approve(agent, req.id)
    with pytest.raises(AgentCannotApprove):
        access.requests.deny(agent, req.id, reason="no")
    one = access.requests.approve(ALICE, req.id, duration_s=900, comment="ok for 15 min")
    assert one.status == "pending" and len(one.approvals) == 1
    with pytest.raises(AlreadyExists):
        access.requests.approve(ALICE, req.id)
    with pytest.raises(InvalidInput):
        access.requests.approve(BOB, req.id, duration_s=7200)  # may shorten, never lengthen
    two = access.requests.approve(BOB, req.id)
    assert two.status == "approved" and two.granted_duration_s == 900 and two.session_id
    info = access.sessions.get(agent, two.session_id)
    assert (info.expires_at - access.clock.now()).total_seconds() == 900
    with pytest.raises(RequestNotPending):
        access.requests.deny(BOB, req.id, reason="too late")
    assert [e for e, _ in access.notifier.events][-1] == "access_request.approved"


def test_nobody_approves_their_own_request(access: Access) -> None:
    put_key(access, risk="medium")
    agent = access.agent()
    _tool(access, agent, max_risk="low")
    req = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
    )
    assert req.status == "pending" and req.required_approvals == 1
    # the same identity acting as a non-agent principal is still the requester
    same = Principal(id="someone", kind="user", local=True, attrs={"identity_id": agent.attrs["identity_id"]})
    with pytest.raises(SelfApproval):
        access.requests.approve(same, req.id)
    denied = access.requests.deny(ALICE, req.id, reason="not for this order")
    assert denied.status == "denied" and denied.reason == "not for this order"
    with pytest.raises(RequestNotPending):
        access.requests.approve(BOB, req.id)


def test_approver_needs_admin_on_the_secrets(access: Access) -> None:
    put_key(access, risk="medium")
    agent = access.agent()
    _tool(access, agent, max_risk="low")
    req = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
    )
    stranger = Principal(id="mallory", kind="user")  # not the vault owner: LocalOwnerAuthorizer says no
    with pytest.raises(PermissionDenied):
        access.requests.approve(stranger, req.id)
    with pytest.raises(Exception):
        access.requests.get(stranger, req.id)


def test_unanswered_requests_expire(access: Access) -> None:
    put_key(access, risk="medium")
    agent = access.agent()
    _tool(access, agent, max_risk="low")
    req = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
    )
    access.clock.advance(601)
    assert access.requests.get(ALICE, req.id).status == "expired"
    assert [r.id for r in access.requests.list_requests(ALICE, status="pending")] == []
    with pytest.raises(RequestNotPending):
        access.requests.approve(ALICE, req.id)
    assert access.requests.expire_pending() == 0  # already marked by the approve attempt
    assert access.notifier.events[-1][0] == "access_request.expired"


def test_duration_over_tool_max_goes_to_people(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    _tool(access, agent, max_session_s=300)
    req = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=900
    )
    assert req.status == "pending" and req.required_approvals == 1 and "900s" in req.policy
    assert access.requests.approve(ALICE, req.id).status == "approved"


def test_session_revocations(access: Access) -> None:
    put_key(access)
    put_key(access, "ANTHROPIC_API_KEY", "sk-ant-REAL-0123456789", provider="anthropic")
    agent = access.agent()
    _tool(access, agent)
    seen = []
    access.sessions.listeners.append(seen.append)

    def open_one() -> tuple[str, str]:
        r = access.requests.request(
            agent,
            "summarizer",
            ["default/dev/OPENAI_API_KEY", "default/dev/ANTHROPIC_API_KEY"],
            justification="x",
            duration_s=600,
        )
        assert r.session_id
        tok = access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY").token.reveal()
        access.tokens.verify(tok)
        return r.session_id, tok

    # by hand
    sid, tok = open_one()
    access.sessions.revoke(ALICE, sid)
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    with pytest.raises(SessionEnded):
        access.sessions.revoke(ALICE, sid)
    assert seen[-1].session_ids == (sid,)
    # the tool
    sid, tok = open_one()
    access.tools.revoke(ALICE, agent.attrs["identity_id"], "summarizer")
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    with pytest.raises(ToolNotFound):
        open_one()
    _tool(access, agent)  # re-registered
    # the agent
    sid, tok = open_one()
    access.tools.revoke_agent(ALICE, agent.attrs["identity_id"])
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    _tool(access, agent)
    # the secret (deleted)
    sid, tok = open_one()
    access.secrets.delete(ALICE, S, "ANTHROPIC_API_KEY")
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    access.secrets.undelete(ALICE, S, "ANTHROPIC_API_KEY")
    # rotation under an incident
    sid, tok = open_one()
    meta, rev = access.sessions.incident_rotate(ALICE, S, "OPENAI_API_KEY", "sk-live-NEW-0123456789")
    assert rev.session_ids == (sid,) and meta.current_version == 2
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    # the identity is disabled (by the identity service): its tokens die even before any hook runs
    sid, tok = open_one()
    access.identities.disable(ALICE, "bot")
    with pytest.raises(ProxyTokenRevoked):
        access.tokens.verify(tok)
    ends = [e.detail for e in access.vault.audit.iter_entries(action="session.end")]
    assert any("incident" in d for d in ends) and any("tool revoked" in d for d in ends)


def test_token_expiry_follows_the_session_and_cleanup(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    _tool(access, agent)
    r = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=120
    )
    assert r.session_id
    tok = access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY", ttl_s=3600)
    assert tok.expires_at == access.sessions.get(agent, r.session_id).expires_at  # never past its session
    short = access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY", ttl_s=30)
    access.clock.advance(31)
    with pytest.raises(ProxyTokenExpired):
        access.tokens.verify(short.token.reveal())
    access.tokens.verify(tok.token.reveal())
    access.clock.advance(100)
    with pytest.raises(ProxyTokenExpired):
        access.tokens.verify(tok.token.reveal())
    with pytest.raises(SessionEnded):
        access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY")
    assert access.sessions.cleanup() == {"sessions": 1, "proxy_tokens": 2}
    with pytest.raises(ProxyTokenInvalid):
        access.tokens.verify(tok.token.reveal())
    assert access.sessions.cleanup() == {"sessions": 0, "proxy_tokens": 0}


def test_proxy_token_format_and_lookup(access: Access) -> None:
    for bad in ("", "kbp_", "kbt_" + "A" * 49, "kbp_" + "A" * 49, "sk-" + "x" * 40):
        with pytest.raises(ProxyTokenInvalid):
            access.tokens.verify(bad)
    from keybroker.core._tokens import new_opaque

    with pytest.raises(ProxyTokenInvalid):  # well formed, unknown
        access.tokens.verify(new_opaque("kbp_"))


def test_tokens_only_for_the_sessions_own_principal_and_secrets(access: Access) -> None:
    put_key(access)
    put_key(access, "ANTHROPIC_API_KEY", "sk-ant-REAL-0123456789", provider="anthropic")
    agent = access.agent()
    other = access.agent("other-bot")
    _tool(access, agent)
    r = access.requests.request(
        agent, "summarizer", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60
    )
    assert r.session_id
    with pytest.raises(PermissionDenied):
        access.tokens.issue(agent, r.session_id, S, "ANTHROPIC_API_KEY")
    with pytest.raises(Exception):
        access.tokens.issue(other, r.session_id, S, "OPENAI_API_KEY")
    with pytest.raises(InvalidInput):
        access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY", ttl_s=0)


def test_session_authorizer_is_the_only_rule(access: Access) -> None:
    put_key(access)
    put_key(access, "OTHER", "sk-other-0123456789")
    session = access.sessions.open_use_session(ALICE, S, ["OPENAI_API_KEY"], ttl_s=60)
    base = access.secrets.authorizer
    auth = SessionAuthorizer(access.sessions, base)
    p = Principal(id=ALICE.id, kind=ALICE.kind, attrs={SESSION_ATTR: session.id, "org": "default"})
    auth.authorize(p, "use", S, "OPENAI_API_KEY")
    for action, name in (("read", "OPENAI_API_KEY"), ("use", "OTHER"), ("write", "OPENAI_API_KEY")):
        with pytest.raises(PermissionDenied):
            auth.authorize(p, action, S, name)
    forged = Principal(id="mallory", kind="user", attrs={SESSION_ATTR: session.id, "org": "default"})
    with pytest.raises(PermissionDenied):
        auth.authorize(forged, "use", S, "OPENAI_API_KEY")
    access.clock.advance(61)
    with pytest.raises(PermissionDenied):
        auth.authorize(p, "use", S, "OPENAI_API_KEY")
    auth.authorize(ALICE, "read", S, "OPENAI_API_KEY")  # everyone else: the base authorizer decides


def test_use_sessions_for_people_and_not_for_agents(access: Access) -> None:
    put_key(access)
    agent = access.agent()
    with pytest.raises(PermissionDenied):
        access.sessions.open_use_session(agent, S, ["OPENAI_API_KEY"])
    with pytest.raises(PermissionDenied):  # the base authorizer must allow "use"
        access.sessions.open_use_session(Principal(id="mallory"), S, ["OPENAI_API_KEY"])
    s = access.sessions.open_use_session(ALICE, S, ["OPENAI_API_KEY"], budget=Budget(max_rpm=10))
    tok = access.tokens.issue(ALICE, s.id, S, "OPENAI_API_KEY", budget=Budget(max_rpm=50, max_requests=3))
    assert tok.budget == Budget(max_requests=3, max_rpm=10)  # only ever narrower
    assert [i.id for i in access.sessions.list_sessions(ALICE)] == [s.id]


def test_proxy_only_is_never_read(access: Access) -> None:
    put_key(access)
    access.secrets.update_metadata(ALICE, S, "OPENAI_API_KEY", proxy_only=True)
    access.secrets.put(ALICE, S, "REFERS", "${OPENAI_API_KEY}")
    with pytest.raises(ProxyOnly) as ei:
        access.secrets.get(ALICE, S, "OPENAI_API_KEY")
    assert isinstance(ei.value, PermissionDenied) and REAL_KEY not in str(ei.value)
    with pytest.raises(ProxyOnly):
        access.secrets.get(ALICE, S, "REFERS")  # not through a reference either
    assert "OPENAI_API_KEY" not in access.secrets.export(ALICE, S)
    assert access.secrets.get(ALICE, S, "OPENAI_API_KEY", permission="use").value.reveal() == REAL_KEY
    entries = list(access.vault.audit.iter_entries(target_prefix="default/default/dev/OPENAI_API_KEY"))
    assert any(e.result == "error:proxy_only" for e in entries)


def test_tool_registration_needs_admin_and_an_agent(access: Access) -> None:
    agent = access.agent()
    with pytest.raises(PermissionDenied):
        access.tools.register(Principal(id="mallory"), agent.attrs["identity_id"], "t")
    access.identities.create(ALICE, "human", "user")
    with pytest.raises(Exception):
        access.tools.register(ALICE, "human", "t")
    t = access.tools.register(ALICE, "bot", "t", allowed_secrets=["*/X"], environments=["*"])
    assert t.allows("any", "prod", "X") and not t.allows("any", "prod", "Y")
    assert [x.tool_id for x in access.tools.list_tools(agent)] == ["t"]  # an agent sees its own
    assert access.tools.list_tools(ALICE, "bot")[0].to_dict()["allowed_secrets"] == ["*/X"]


def test_agent_login_principal_works_end_to_end(access: Access) -> None:
    """The principal a real agent login gives (client secret -> token -> authenticate)."""
    put_key(access)
    access.identities.create(ALICE, "loginbot", "agent")
    creds = access.identities.new_client_secret(ALICE, "loginbot")
    issued = access.identities.login_client_secret(creds.client_id, creds.client_secret.reveal())
    agent = TokenService(access.vault).authenticate(issued.token.reveal())
    access.tools.register(ALICE, "loginbot", "t", allowed_secrets=["default/*"], environments=["dev"])
    r = access.requests.request(agent, "t", ["default/dev/OPENAI_API_KEY"], justification="x", duration_s=60)
    assert r.status == "approved" and r.session_id
    access.tokens.issue(agent, r.session_id, S, "OPENAI_API_KEY")
