"""Leakage: after a full agent run (OpenAI and Anthropic SDKs; plain, streaming, errors, an
upstream that echoes the key in its body, headers and stream), the real keys appear nowhere in
what the agent received - bodies, headers, errors, SSE chunks - nor in any log record or audit
record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest

from keybroker.core import ManualClock, Principal, Scope, Vault
from keybroker.gateway import MASK, Gateway, GatewayConfig
from keybroker.gateway._testing import AccessStack, FakeUpstream, ServerThread

ADMIN = Principal(id="admin", kind="user", client="test", local=True)
OPENAI_KEY = "sk-proj-LEAKCHECK-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-LEAKCHECK-anthropic-0123456789"
QUERY_KEY = "AIzaLEAKCHECK-query-param-key-0123456789"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, QUERY_KEY)
MSG = [{"role": "user", "content": "hi"}]


class Tap(httpx2.BaseTransport):
    """Everything the agent's SDK receives: status lines, headers and every body byte."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.seen = bytearray()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        resp = self.inner.handle_request(request)
        self.seen += f"{resp.status_code} {resp.headers.raw!r}\n".encode()
        inner, tap = resp.stream, self

        class Stream(httpx2.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:  # type: ignore[union-attr]
                    tap.seen += chunk
                    yield chunk

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx2.Response(
            resp.status_code, headers=resp.headers, stream=Stream(), extensions=resp.extensions
        )

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vault.db'}"


def test_the_real_key_never_reaches_the_agent_logs_or_audit(
    vault: Vault, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: httpx, httpcore, uvicorn, keybroker
    stack = AccessStack.build(vault)
    up = FakeUpstream(keys=set(SECRETS), limited={"sk-proj-LEAKCHECK-limited-000000000000"})
    tap = Tap()
    agent_saw: list[str] = []
    with ServerThread(up) as up_srv:
        gateway = Gateway(stack.tokens, config=GatewayConfig(read_timeout=1.0, audit_flush_interval=0.01))
        with ServerThread(gateway, lifespan="on") as gw_srv:
            stack.put_key(
                ADMIN,
                "OPENAI_API_KEY",
                f"sk-proj-LEAKCHECK-limited-000000000000\n{OPENAI_KEY}",
                provider="openai",
                base_url=up_srv.url,
                gateway_pool="lines",
            )
            stack.put_key(
                ADMIN, "ANTHROPIC_API_KEY", ANTHROPIC_KEY, provider="anthropic", base_url=up_srv.url
            )
            stack.put_key(
                ADMIN,
                "GEMINI_KEY",
                QUERY_KEY,
                provider="generic",
                base_url=up_srv.url,
                gateway_auth="query:key",
            )
            agent = stack.agent(ADMIN, "leaky")
            sid = stack.grant(ADMIN, agent, ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_KEY"])
            tok = {
                n: stack.tokens.issue(agent, sid, Scope(), n)
                for n in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_KEY")
            }
            oai = openai.OpenAI(
                api_key=tok["OPENAI_API_KEY"].token.reveal(),
                base_url=tok["OPENAI_API_KEY"].base_url(gw_srv.url),
                max_retries=0,
                http_client=openai.DefaultHttpxClient(transport=tap),
            )
            ant = anthropic.Anthropic(
                api_key=tok["ANTHROPIC_API_KEY"].token.reveal(),
                base_url=tok["ANTHROPIC_API_KEY"].base_url(gw_srv.url),
                max_retries=0,
                http_client=anthropic.DefaultHttpxClient(transport=tap),
            )
            try:
                r = oai.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
                agent_saw.append(r.model_dump_json())
                r = oai.chat.completions.create(model="echo-key", messages=MSG)  # type: ignore[arg-type]
                agent_saw.append(r.model_dump_json())
                assert MASK.decode() in (r.choices[0].message.content or "")
                for ch in oai.chat.completions.create(model="echo-key", messages=MSG, stream=True):  # type: ignore[arg-type]
                    agent_saw.append(ch.model_dump_json())
                m = ant.messages.create(model="echo-key", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
                agent_saw.append(m.model_dump_json())
                with ant.messages.stream(model="echo-key", max_tokens=8, messages=MSG) as s:  # type: ignore[arg-type]
                    agent_saw.append("".join(s.text_stream))
                for model in ("error-500", "slow", "broken-stream"):
                    with pytest.raises(openai.APIError) as ei:
                        for ch in oai.chat.completions.create(
                            model=model, messages=MSG, stream=model == "broken-stream"
                        ):  # type: ignore[arg-type, call-overload]
                            agent_saw.append(str(ch))
                    agent_saw += [str(ei.value), repr(ei.value), json.dumps(getattr(ei.value, "body", None))]
                # the upstream refuses a key it does not know and quotes it: redacted too
                stack.put_key(
                    ADMIN,
                    "ANTHROPIC_API_KEY",
                    ANTHROPIC_KEY + "-rotated",
                    provider="anthropic",
                    base_url=up_srv.url,
                )
                # (the gateway hears of the new version and re-reads the key at once)
                with pytest.raises(anthropic.AuthenticationError) as ae:
                    ant.messages.create(model="claude-test", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
                agent_saw += [str(ae.value), json.dumps(ae.value.body)]
                assert MASK.decode() in str(ae.value)
                # raw HTTP, the query-parameter template and a wrong-host attempt
                with httpx.Client() as raw:
                    for resp in (
                        raw.post(
                            f"{gw_srv.url}/generic/v1/chat/completions",
                            json={"model": "echo-key"},
                            headers={"x-api-key": tok["GEMINI_KEY"].token.reveal()},
                        ),
                        raw.post(
                            f"{gw_srv.url}/anthropic/v1/messages",
                            json={"model": "echo-key"},
                            headers={"x-api-key": tok["OPENAI_API_KEY"].token.reveal()},
                        ),
                    ):
                        agent_saw.append(f"{resp.status_code} {resp.headers!r} {resp.text}")
                assert up.seen[-1].query == f"key={QUERY_KEY}"
                clock.advance(3600)
                with pytest.raises(openai.AuthenticationError) as ei2:
                    oai.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
                agent_saw.append(str(ei2.value))
            finally:
                oai.close()
                ant.close()
            assert gateway.recorder.flush()
    received = tap.seen.decode("utf-8", "replace") + "\n".join(agent_saw)
    assert MASK.decode() in received  # the echoes did come back, redacted
    logs = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    audit = "".join(stack.vault.audit.export("jsonl"))
    for key in SECRETS:
        assert key not in received, "a real key reached the agent"
        assert key not in logs, "a real key is in a log record"
        assert key not in audit, "a real key is in the audit trail"
        for part in (key[:20], key[-20:]):
            assert part not in received + logs + audit
    assert "kbp_" not in logs  # proxy tokens are credentials too
    assert not up.proxy_token_seen
