"""The official ``anthropic`` SDK, unmodified, through the gateway with proxy tokens. The upstream
expects the key in ``x-api-key`` (the SDK itself sends the proxy token as a bearer token)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from keybroker.core import ManualClock, Principal, Scope, Vault
from keybroker.gateway import Gateway, GatewayConfig
from keybroker.gateway._testing import AccessStack, FakeUpstream, ServerThread

ADMIN = Principal(id="admin", kind="user", client="test", local=True)
REAL = "sk-ant-api03-REAL-key-0123456789abcdefghij"
LIMITED = "sk-ant-api03-LIMITED-0123456789abcdef"
MSG = [{"role": "user", "content": "hi"}]
_open: list[anthropic.Anthropic] = []
_n = itertools.count()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vault.db'}"


@pytest.fixture
def stack(vault: Vault) -> AccessStack:
    return AccessStack.build(vault)


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    up = FakeUpstream(keys={REAL, LIMITED}, limited={LIMITED}, delay=3.0)
    with ServerThread(up) as srv:
        yield up, srv.url


@pytest.fixture
def gw(stack: AccessStack) -> Iterator[tuple[Gateway, str]]:
    gateway = Gateway(
        stack.tokens,
        config=GatewayConfig(read_timeout=1.0, keepalive_interval=0.3, audit_flush_interval=0.01),
    )
    with ServerThread(gateway, lifespan="on") as srv:
        yield gateway, srv.url


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def _client(token: str, gw_url: str, route: str = "anthropic", max_retries: int = 0) -> anthropic.Anthropic:
    c = anthropic.Anthropic(api_key=token, base_url=f"{gw_url}/{route}", max_retries=max_retries)
    _open.append(c)
    return c


def _token(
    stack: AccessStack, up_url: str, *, value: str = REAL, budget: dict[str, int] | None = None, **md: str
) -> str:
    stack.put_key(ADMIN, "ANTHROPIC_API_KEY", value, provider="anthropic", base_url=up_url, **md)
    agent = stack.agent(ADMIN, f"claude{next(_n)}")
    sid = stack.grant(ADMIN, agent, ["ANTHROPIC_API_KEY"], budget=budget)
    return stack.tokens.issue(agent, sid, Scope(), "ANTHROPIC_API_KEY").token.reveal()


def test_plain_and_streaming(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    c = _client(_token(stack, up_url), gw[1])
    m = c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert m.content[0].text == "hello from upstream"  # type: ignore[union-attr]
    seen = up.seen[-1]
    assert seen.key == REAL and seen.headers["x-api-key"] == REAL and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"]  # the SDK's own headers pass through
    with c.messages.stream(model="claude-test", max_tokens=16, messages=MSG) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 " and final.usage.output_tokens == 5
    assert not up.proxy_token_seen
    deadline = time.monotonic() + 5
    while gw[0].recorder.written < 2 and time.monotonic() < deadline:
        gw[0].recorder.flush(0.05)
    rows = stack.tokens.list_tokens(ADMIN, stack.sessions.list_sessions(ADMIN)[0].id)
    assert rows[0]["used_requests"] == 2 and rows[0]["used_tokens"] == (6 + 4) + (11 + 5)


def test_errors_in_anthropic_shape(
    stack: AccessStack, clock: ManualClock, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    _, up_url = upstream
    token = _token(stack, up_url, budget={"max_requests": 3})
    c = _client(token, gw[1])
    with pytest.raises(anthropic.InternalServerError) as e500:
        c.messages.create(model="error-500", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert "upstream exploded" in str(e500.value)
    with pytest.raises(anthropic.APIStatusError) as e504:
        c.messages.create(model="slow", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert e504.value.status_code == 504
    body = e504.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["code"] == "upstream_timeout"
    c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as e429:
        c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert isinstance(e429.value.body, dict) and e429.value.body["error"]["type"] == "rate_limit_error"
    clock.advance(3600)
    with pytest.raises(anthropic.AuthenticationError) as e401:
        c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert isinstance(e401.value.body, dict) and e401.value.body["error"]["type"] == "authentication_error"
    assert e401.value.body["error"]["code"] == "proxy_token_expired"


def test_stream_errors_and_wrong_host(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    token = _token(stack, up_url)
    c = _client(token, gw[1])
    with pytest.raises(anthropic.APIStatusError):
        with c.messages.stream(model="broken-stream", max_tokens=16, messages=MSG) as stream:  # type: ignore[arg-type]
            for _ in stream.text_stream:
                pass
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        _client(token, gw[1], route="openai").messages.create(
            model="claude-test", max_tokens=16, messages=MSG
        )  # type: ignore[arg-type]
    assert ei.value.response.headers["x-keybroker-error"] == "wrong_upstream"
    assert len(up.seen) == 1


def test_revoked_and_failover(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    token = _token(stack, up_url, value=f"{LIMITED}\n{REAL}", gateway_pool="lines")
    c = _client(token, gw[1])
    c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert [s.key for s in up.seen] == [LIMITED, REAL, REAL]
    stack.tools.revoke_agent(ADMIN, stack.sessions.list_sessions(ADMIN)[0].agent_id or "")
    with pytest.raises(anthropic.AuthenticationError) as ei:
        c.messages.create(model="claude-test", max_tokens=16, messages=MSG)  # type: ignore[arg-type]
    assert isinstance(ei.value.body, dict) and ei.value.body["error"]["code"] == "proxy_token_revoked"
