"""The official ``openai`` SDK, unmodified, through the gateway with proxy tokens, against a local
upstream that checks it received the real key (and never a proxy token)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from keybroker.core import ManualClock, Principal, Scope, Vault
from keybroker.gateway import Gateway, GatewayConfig
from keybroker.gateway._testing import AccessStack, FakeUpstream, ServerThread

ADMIN = Principal(id="admin", kind="user", client="test", local=True)
REAL = "sk-proj-REAL-openai-key-0123456789abcdefXYZ"
LIMITED = "sk-proj-LIMITED-key-0123456789abcdef"
SECOND = "sk-proj-SECOND-key-0123456789abcdefgh"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def store_url(tmp_path: Path) -> str:  # SQLite here; the approval flow runs on PostgreSQL too
    return f"sqlite:///{tmp_path / 'vault.db'}"


@pytest.fixture
def stack(vault: Vault) -> AccessStack:
    return AccessStack.build(vault)


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    up = FakeUpstream(keys={REAL, LIMITED, SECOND}, limited={LIMITED}, delay=3.0)
    with ServerThread(up) as srv:
        yield up, srv.url


@pytest.fixture
def gw(stack: AccessStack) -> Iterator[tuple[Gateway, str]]:
    gateway = Gateway(
        stack.tokens,
        config=GatewayConfig(
            read_timeout=1.0, connect_timeout=1.0, keepalive_interval=0.3, audit_flush_interval=0.01
        ),
    )
    with ServerThread(gateway, lifespan="on") as srv:
        yield gateway, srv.url


def settle(gateway: Gateway, uses: int, timeout: float = 5.0) -> None:
    """Wait until ``uses`` proxied requests are recorded durably (the gateway records a request
    just after its last byte went out, so a client can be a moment ahead of the audit trail)."""
    deadline = time.monotonic() + timeout
    while gateway.recorder.written < uses and time.monotonic() < deadline:
        gateway.recorder.flush(0.05)
        time.sleep(0.01)
    assert gateway.recorder.flush() and gateway.recorder.written >= uses


_open: list[openai.OpenAI] = []
_n = itertools.count()


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def _client(token: str, gw_url: str, route: str = "openai/v1", max_retries: int = 0) -> openai.OpenAI:
    c = openai.OpenAI(api_key=token, base_url=f"{gw_url}/{route}", max_retries=max_retries)
    _open.append(c)
    return c


def _token(
    stack: AccessStack, up_url: str, *, value: str = REAL, budget: dict[str, int] | None = None, **md: str
) -> str:
    stack.put_key(ADMIN, "OPENAI_API_KEY", value, provider="openai", base_url=up_url, **md)
    agent = stack.agent(ADMIN, f"bot{next(_n)}")
    sid = stack.grant(ADMIN, agent, ["OPENAI_API_KEY"], budget=budget)
    return stack.tokens.issue(agent, sid, Scope(), "OPENAI_API_KEY").token.reveal()


def test_plain_and_streaming(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    gateway, gw_url = gw
    token = _token(stack, up_url)
    c = _client(token, gw_url)
    r = c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "hello from upstream"
    assert up.seen[-1].key == REAL and up.seen[-1].path == "/v1/chat/completions"
    words = []
    usage = None
    stream = c.chat.completions.create(
        model="gpt-test",
        messages=MSG,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices:
            words.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(w or "" for w in words) == "tok0 tok1 tok2 tok3 tok4 "
    assert usage is not None and usage.total_tokens == 12
    assert [m.id for m in c.models.list()] == ["gpt-test"]
    assert up.seen[-1].key == REAL and not up.proxy_token_seen
    settle(gateway, 3)
    rows = stack.tokens.list_tokens(ADMIN, stack.sessions.list_sessions(ADMIN)[0].id)
    assert rows[0]["used_requests"] == 3 and rows[0]["used_tokens"] == 8 + 12
    uses = [e for e in stack.vault.audit.iter_entries(action="gateway.use")]
    assert len(uses) == 3 and all(e.result == "ok" for e in uses)
    assert (
        len(list(stack.vault.audit.iter_entries(action="gateway.fetch"))) == 1
    )  # key read once, then reused


def test_streams_token_by_token(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    up.chunk_delay = 0.25
    token = _token(stack, up_url)
    c = _client(token, gw[1])
    t0 = time.monotonic()
    arrivals = []
    for chunk in c.chat.completions.create(model="gpt-test", messages=MSG, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 5
    # each token arrives as the upstream sends it, not all at the end
    assert arrivals[0] < 0.6 and arrivals[-1] - arrivals[0] > 0.8


def test_upstream_error_passes_through(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    token = _token(stack, upstream[1])
    with pytest.raises(openai.InternalServerError) as ei:
        _client(token, gw[1]).chat.completions.create(model="error-500", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.status_code == 500 and "upstream exploded" in str(ei.value)


def test_upstream_down_is_502(stack: AccessStack, gw: tuple[Gateway, str]) -> None:
    with ServerThread(FakeUpstream(keys={REAL})) as srv:
        dead = srv.url  # stopped at the end of this block: nothing listens there any more
    token = _token(stack, dead)
    with pytest.raises(openai.APIStatusError) as ei:
        _client(token, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.status_code == 502 and ei.value.code == "upstream_unavailable"
    assert ei.value.response.headers["x-keybroker-error"] == "upstream_unavailable"


def test_upstream_slow_is_504_and_nothing_hangs(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    token = _token(stack, upstream[1])
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as ei:
        _client(token, gw[1]).chat.completions.create(model="slow", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.status_code == 504 and ei.value.code == "upstream_timeout"
    assert time.monotonic() - t0 < 2.5


def test_slow_first_token_keeps_the_stream_alive(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    up.delay = 0.8  # longer than keepalive_interval (0.3), shorter than read_timeout (1.0)
    token = _token(stack, up_url)
    c = _client(token, gw[1])
    for model in ("slow-first-token", "slow"):  # silent after headers / silent before headers
        with c.chat.completions.with_streaming_response.create(
            model=model,
            messages=MSG,
            stream=True,  # type: ignore[arg-type]
        ) as raw:
            body = b"".join(raw.iter_bytes())
        assert raw.status_code == 200 and b": keep-alive" in body and b"[DONE]" in body
        text = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(model=model, messages=MSG, stream=True)  # type: ignore[arg-type]
            if ch.choices
        )
        assert text == "tok0 tok1 tok2 tok3 tok4 "


def test_upstream_breaks_mid_stream(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    token = _token(stack, upstream[1])
    got = []
    with pytest.raises(openai.APIError) as ei:
        for ch in _client(token, gw[1]).chat.completions.create(
            model="broken-stream",
            messages=MSG,
            stream=True,  # type: ignore[arg-type]
        ):
            got.append(ch)
    assert len(got) == 2 and "broke off" in str(ei.value)


def test_client_disconnect_closes_the_upstream(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    up.chunk_delay = 0.5
    up.chunks = 20
    token = _token(stack, up_url)
    stream = _client(token, gw[1]).chat.completions.create(model="gpt-test", messages=MSG, stream=True)  # type: ignore[arg-type]
    next(iter(stream))
    stream.close()
    assert up.stream_abandoned.wait(3.0), "the gateway kept the upstream stream open"
    settle(gw[0], 1)
    results = [e.result for e in stack.vault.audit.iter_entries(action="gateway.use")]
    assert results == ["client_disconnected"]


def test_expired_and_revoked_tokens(
    stack: AccessStack, clock: ManualClock, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    stack.put_key(ADMIN, "OPENAI_API_KEY", REAL, provider="openai", base_url=up_url)
    agent = stack.agent(ADMIN)
    sid = stack.grant(ADMIN, agent, ["OPENAI_API_KEY"])
    short = stack.tokens.issue(agent, sid, Scope(), "OPENAI_API_KEY", ttl_s=60).token.reveal()
    other = stack.tokens.issue(agent, sid, Scope(), "OPENAI_API_KEY").token.reveal()
    _client(short, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    clock.advance(61)
    with pytest.raises(openai.AuthenticationError) as ei:
        _client(short, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.code == "proxy_token_expired"
    _client(other, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    stack.sessions.revoke(ADMIN, sid)
    with pytest.raises(openai.AuthenticationError) as ei:  # the very next request
        _client(other, gw[1], max_retries=2).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.code == "proxy_token_revoked"
    for bad in ("kbp_notatoken", "sk-some-openai-key", REAL):
        with pytest.raises(openai.AuthenticationError) as ei:
            _client(bad, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
        assert ei.value.code == "proxy_token_invalid"
    assert len(up.seen) == 2


def test_wrong_host_is_refused(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    token = _token(stack, up_url)
    for route in ("anthropic/v1", "gemini/v1", "stripe/v1"):
        with pytest.raises(openai.PermissionDeniedError) as ei:
            _client(token, gw[1], route=route).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
        # the error body has the shape of the route's provider; the header is the same everywhere
        assert ei.value.response.headers["x-keybroker-error"] == "wrong_upstream"
    with pytest.raises(openai.NotFoundError):
        _client(token, gw[1], route="evil.example.com/v1").chat.completions.create(
            model="gpt-test", messages=MSG
        )  # type: ignore[arg-type]
    # the secret's upstream changed after issue: the token does not follow it
    stack.secrets.update_metadata(
        ADMIN, Scope(), "OPENAI_API_KEY", custom_metadata={"gateway.base_url": "https://api.openai.com"}
    )
    with pytest.raises(openai.PermissionDeniedError):
        _client(token, gw[1]).chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert up.seen == []


def test_budgets(
    stack: AccessStack, clock: ManualClock, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    token = _token(stack, up_url, budget={"max_requests": 2})
    c = _client(token, gw[1], max_retries=3)
    for _ in range(2):
        c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.code == "budget_exhausted" and ei.value.response.headers["x-should-retry"] == "false"
    assert len(up.seen) == 2  # the SDK did not retry what cannot succeed

    stack.secrets.purge(ADMIN, Scope(), "OPENAI_API_KEY")
    rpm = _token(stack, up_url, budget={"max_rpm": 2})
    c = _client(rpm, gw[1])
    c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.response.headers["retry-after"] == "60"
    clock.advance(61)
    c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]

    stack.secrets.purge(ADMIN, Scope(), "OPENAI_API_KEY")
    spend = _token(stack, up_url, budget={"max_tokens": 10})
    c = _client(spend, gw[1])
    c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]  (8 tokens)
    c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]  (16: over)
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="gpt-test", messages=MSG)  # type: ignore[arg-type]
    assert "model tokens" in str(ei.value)


def test_key_pool_fails_over(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    up, up_url = upstream
    token = _token(
        stack, up_url, value=f"{LIMITED}\nsk-proj-REVOKED-000000000000\n{SECOND}\n", gateway_pool="lines"
    )
    c = _client(token, gw[1])
    for _ in range(4):
        assert c.chat.completions.create(model="gpt-test", messages=MSG).choices  # type: ignore[arg-type]
    keys = [s.key for s in up.seen]
    # the rate-limited (429) and refused (401) keys were tried once each, then left to rest
    assert keys.count(LIMITED) == 1 and keys.count("sk-proj-REVOKED-000000000000") == 1
    assert keys.count(SECOND) == 4
    settle(gw[0], 4)
    details = [e.detail for e in stack.vault.audit.iter_entries(action="gateway.use")]
    assert any('"failovers":' in d for d in details)


def test_query_and_header_auth_templates(
    stack: AccessStack, upstream: tuple[FakeUpstream, str], gw: tuple[Gateway, str]
) -> None:
    """Generic templates: the key as a query parameter (never in a log) or a custom header."""
    up, up_url = upstream
    for auth in ("query:key", "header:x-goog-api-key", "basic"):
        stack.put_key(ADMIN, "GENERIC_KEY", REAL, provider="generic", base_url=up_url, gateway_auth=auth)
        agent = stack.agent(ADMIN, f"bot-{auth.split(':')[0]}")
        sid = stack.grant(ADMIN, agent, ["GENERIC_KEY"], tool=f"t-{auth.split(':')[0]}")
        token = stack.tokens.issue(agent, sid, Scope(), "GENERIC_KEY").token.reveal()
        r = httpx.post(
            f"{gw[1]}/generic/v1/chat/completions?x=1",
            json={"model": "gpt-test"},
            headers={"x-api-key": token},
        )
        assert r.status_code == 200, r.text
        assert up.seen[-1].key == REAL
        if auth == "query:key":
            assert up.seen[-1].query == f"x=1&key={REAL}"
        stack.secrets.purge(ADMIN, Scope(), "GENERIC_KEY")
    assert not up.proxy_token_seen
