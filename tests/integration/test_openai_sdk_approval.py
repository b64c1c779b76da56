"""The approval flow end to end, on SQLite and PostgreSQL: an agent asks for a high-risk key, the
request waits, two people approve it (a signed webhook tells them), the agent gets a session and a
proxy token, the official OpenAI SDK works through the gateway, a person revokes the session, and
the very next request fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from keybroker.core import Principal, Scope, Vault
from keybroker.core._access_errors import AgentCannotApprove, SelfApproval
from keybroker.core._access_requests import AccessRequestService, WebhookNotifier, verify_webhook
from keybroker.gateway import Gateway, GatewayConfig
from keybroker.gateway._testing import AccessStack, FakeUpstream, ServerThread

REAL = "sk-proj-HIGHRISK-key-0123456789abcdefghij"
ALICE = Principal(id="alice", kind="user", client="test", local=True)
BOB = Principal(id="bob", kind="user", client="test", local=True)
WEBHOOK_SECRET = b"whsec-test-0123456789abcdef"


class Receiver:
    """A local webhook receiver that keeps what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.event = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        with self.event:
            self.got.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
            self.event.notify_all()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with ServerThread(r, lifespan="off") as srv:
        yield r, srv.url


def test_request_pending_two_approvers_session_token_revoke(
    vault: Vault, receiver: tuple[Receiver, str]
) -> None:
    rec, hook_url = receiver
    stack = AccessStack.build(vault)
    notifier = WebhookNotifier(hook_url + "/hooks/keybroker", WEBHOOK_SECRET)
    stack.requests = AccessRequestService(stack.tools, notifier=notifier)
    up = FakeUpstream(keys={REAL})
    with ServerThread(up) as up_srv:
        gateway = Gateway(stack.tokens, config=GatewayConfig(audit_flush_interval=0.01))
        with ServerThread(gateway, lifespan="on") as gw_srv:
            stack.put_key(ALICE, "OPENAI_API_KEY", REAL, provider="openai", base_url=up_srv.url, risk="high")
            agent = stack.agent(ALICE, "billing-agent")
            stack.tools.register(
                ALICE,
                "billing-agent",
                "invoicer",
                allowed_secrets=["default/OPENAI_API_KEY"],
                environments=["dev"],
                max_risk="high",
                max_session_s=600,
            )
            # 1. the agent asks, with a reason and context: high risk, so it waits for two people
            req = stack.requests.request(
                agent,
                "invoicer",
                ["default/dev/OPENAI_API_KEY"],
                justification="Summarise invoice disputes for order 7781",
                duration_s=900,
                context={"order_id": "7781"},
            )
            assert req.status == "pending" and req.required_approvals == 2 and req.session_id is None
            # 2. approvers hear of it through the signed webhook
            assert notifier.flush(5)
            headers, body = rec.got[0]
            expected = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
            assert headers["x-keybroker-signature"] == expected
            assert verify_webhook(WEBHOOK_SECRET, body, headers["x-keybroker-signature"])
            assert not verify_webhook(b"wrong-secret-0123456789", body, headers["x-keybroker-signature"])
            payload = json.loads(body)
            assert (
                payload["event"] == "access_request.pending"
                and headers["x-keybroker-event"] == payload["event"]
            )
            assert payload["request"]["justification"] == "Summarise invoice disputes for order 7781"
            assert payload["request"]["context"] == {"order_id": "7781"}
            assert REAL not in body.decode()
            # 3. the agent cannot approve; nobody approves their own request
            with pytest.raises(AgentCannotApprove):
                stack.requests.approve(agent, req.id)
            self_approver = Principal(
                id="x", kind="user", local=True, attrs={"identity_id": agent.attrs["identity_id"]}
            )
            with pytest.raises(SelfApproval):
                stack.requests.approve(self_approver, req.id)
            # 4. first person approves (shortening it); still pending; second person approves
            assert stack.requests.approve(ALICE, req.id, duration_s=600).status == "pending"
            done = stack.requests.approve(BOB, req.id)
            assert done.status == "approved" and done.session_id and done.granted_duration_s == 600
            # 5. session -> proxy token -> the SDK works through the gateway with the real key upstream
            issued = stack.tokens.issue(agent, done.session_id, Scope(), "OPENAI_API_KEY")
            client = openai.OpenAI(
                api_key=issued.token.reveal(), base_url=issued.base_url(gw_srv.url), max_retries=2
            )
            try:
                r = client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                )
                assert r.choices[0].message.content == "hello from upstream" and up.seen[-1].key == REAL
                # 6. revoke; the very next request fails (and the SDK does not retry it)
                stack.sessions.revoke(ALICE, done.session_id, "dispute run finished")
                with pytest.raises(openai.AuthenticationError) as ei:
                    client.chat.completions.create(
                        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                    )
                assert ei.value.code == "proxy_token_revoked"
                assert len(up.seen) == 1
            finally:
                client.close()
            assert notifier.flush(5)
            events = [json.loads(b)["event"] for _, b in rec.got]
            assert events == ["access_request.pending", "access_request.approval", "access_request.approved"]
            notifier.close()
    actions = [e.action for e in vault.audit.iter_entries()]
    for a in (
        "access.request",
        "access.approve",
        "session.open",
        "proxy_token.issue",
        "gateway.fetch",
        "session.end",
    ):
        assert a in actions, a
    assert vault.audit.verify().ok
