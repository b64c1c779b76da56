"""Gateway pieces: redaction of a streamed body, usage scanning, error shapes, the provider
catalog, token extraction, hop-by-hop headers, body limits and audit fail-closed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from gwkit import ALICE, REAL_KEY, Access, put_key
from hypothesis import given
from hypothesis import strategies as st

from keybroker.core import Scope
from keybroker.core._models import SecretMeta
from keybroker.core._providers import AuthTemplate, upstream_for
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput, StoreError
from keybroker.gateway import MASK, Gateway, GatewayConfig, LineMasker, UsageScanner, error_body
from keybroker.gateway._app import _find_token
from keybroker.gateway._testing import FakeUpstream, ServerThread


# ---------------------------------------------------------------------------- masking
@given(
    st.lists(st.binary(max_size=40), max_size=12), st.sampled_from([b"sk-abc123", b"SECRETKEY-0123456789"])
)
def test_line_masker_equals_masking_the_whole_stream(chunks: list[bytes], key: bytes) -> None:
    stream = [c[: len(c) // 2] + key + c[len(c) // 2 :] if i % 3 == 0 else c for i, c in enumerate(chunks)]
    m = LineMasker([key])
    out = b"".join(m.feed(c) for c in stream) + m.flush()
    assert out == b"".join(stream).replace(key, MASK)
    assert key not in out


def test_line_masker_holds_nothing_back_at_a_newline() -> None:
    m = LineMasker([b"sk-0123456789"])
    assert m.feed(b'data: {"x": "hello"}\n\n') == b'data: {"x": "hello"}\n\n'
    first = m.feed(b"data: sk-01234")  # an unterminated tail that could hold a key waits...
    assert len(first) < len(b"data: ")
    assert first + m.feed(b"56789 done\n\n") == b"data: " + MASK + b" done\n\n"  # ...until its line ends


# ---------------------------------------------------------------------------- usage
def test_usage_scanner_reads_openai_anthropic_and_gemini() -> None:
    s = UsageScanner()
    s.whole(json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode())
    assert s.tokens == 8
    s = UsageScanner()
    events = [
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":11,"output_tokens":1}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usa',
        b'ge":{"output_tokens":5}}\n\n',
    ]
    for e in events:
        s.feed(e)
    s.finish()
    assert s.tokens == 16
    s = UsageScanner()
    s.feed(b'data: {"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, ')
    s.feed(b'"totalTokenCount": 5}}\n\n')
    assert s.tokens == 5
    s = UsageScanner()
    s.whole(b"not json")
    s.feed(b'data: {"usage": "weird"}\n\n')
    assert s.tokens == 0


# ---------------------------------------------------------------------------- errors, catalog
def test_error_shapes() -> None:
    assert error_body("openai", 401, "proxy_token_invalid", "m")["error"]["code"] == "proxy_token_invalid"
    a = error_body("anthropic", 429, "budget_exhausted", "m")
    assert a["type"] == "error" and a["error"]["type"] == "rate_limit_error"
    g = error_body("google", 403, "wrong_upstream", "m")
    assert (
        g["error"]["status"] == "PERMISSION_DENIED" and g["error"]["details"][0]["reason"] == "wrong_upstream"
    )


def _meta(provider: str, **cm: str) -> SecretMeta:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return SecretMeta(
        Scope(),
        "K",
        "generic",
        "",
        [],
        dict(cm),
        "",
        "low",
        provider,
        None,
        None,
        False,
        0,
        False,
        1,
        1,
        None,
        None,
        None,
        now,
        now,
    )


def test_catalog_and_templates() -> None:
    assert upstream_for(_meta("openai")).netloc == "api.openai.com"
    a = upstream_for(_meta("anthropic"))
    assert a.netloc == "api.anthropic.com" and a.auth.header("k") == ("x-api-key", "k")
    assert upstream_for(_meta("gemini")).auth.header("k") == ("x-goog-api-key", "k")
    assert upstream_for(_meta("stripe")).auth.header("k") == ("Authorization", "Bearer k")
    local = upstream_for(_meta("openai", **{"gateway.base_url": "http://127.0.0.1:9/prefix/"}))
    assert local.netloc == "127.0.0.1:9" and local.path_prefix == "/prefix"
    basic = AuthTemplate.parse("basic")
    assert basic.header("sk_test") == ("Authorization", "Basic " + base64.b64encode(b"sk_test:").decode())
    assert AuthTemplate.parse("basic:api").header("k") == (
        "Authorization",
        "Basic " + base64.b64encode(b"api:k").decode(),
    )
    assert AuthTemplate.parse("header:Authorization:Token {key}").header("k") == ("Authorization", "Token k")
    assert AuthTemplate.parse("query:key").header("k") is None
    pool = upstream_for(_meta("openai", **{"gateway.pool": "lines"}))
    assert pool.keys(SecretValue("a\n\n b \n")) == ["a", "b"]
    for bad in (
        {},  # generic with no base URL
        {"gateway.base_url": "http://api.example.com"},  # clear text to a non-loopback host
        {"gateway.base_url": "ftp://x"},
        {"gateway.base_url": "https://user:pw@x.example"},
        {"gateway.base_url": "https://x.example", "gateway.auth": "header:Bad Header"},
        {"gateway.base_url": "https://x.example", "gateway.auth": "cookie:x"},
        {"gateway.base_url": "https://x.example", "gateway.pool": "json"},
    ):
        with pytest.raises(InvalidInput):
            upstream_for(_meta("generic", **bad))


def test_token_extraction() -> None:
    tok = "kbp_" + "A" * 49
    assert _find_token([(b"authorization", f"Bearer {tok}".encode())], b"") == (tok, False)
    assert _find_token([(b"x-api-key", tok.encode())], b"") == (tok, False)
    assert _find_token([(b"x-goog-api-key", tok.encode())], b"") == (tok, False)
    basic = base64.b64encode(f"{tok}:".encode())
    assert _find_token([(b"authorization", b"Basic " + basic)], b"") == (tok, False)
    assert _find_token([], f"alt=sse&key={tok}".encode()) == (tok, True)
    assert _find_token([(b"authorization", b"Bearer sk-real")], b"") == ("", False)
    assert _find_token([], b"") == (None, False)


# ---------------------------------------------------------------------------- over HTTP
@pytest.fixture
def served(access: Access) -> Iterator[tuple[Gateway, str, str, FakeUpstream]]:
    up = FakeUpstream(keys={REAL_KEY})
    with ServerThread(up) as up_srv:
        put_key(access, **{"gateway.base_url": up_srv.url})
        session = access.sessions.open_use_session(ALICE, Scope(), ["OPENAI_API_KEY"])
        token = access.tokens.issue(ALICE, session.id, Scope(), "OPENAI_API_KEY").token.reveal()
        gw = Gateway(access.tokens, config=GatewayConfig(max_request_body=1000, audit_flush_interval=0.01))
        with ServerThread(gw, lifespan="on") as srv:
            yield gw, srv.url, token, up


def test_headers_are_cleaned_both_ways(served: tuple[Gateway, str, str, FakeUpstream]) -> None:
    _, url, token, up = served
    r = httpx.post(
        f"{url}/openai/v1/chat/completions",
        json={"model": "echo-key"},
        headers={
            "authorization": f"Bearer {token}",
            "x-api-key": "sk-agent-supplied",
            "proxy-authorization": "Basic eDp5",
            "connection": "keep-alive, x-hop",
            "x-keybroker-anything": "1",
            "x-custom": "kept",
        },
    )
    assert r.status_code == 200
    h = up.seen[-1].headers
    assert (
        h["authorization"] == f"Bearer {REAL_KEY}" and "x-api-key" not in h and "proxy-authorization" not in h
    )
    assert "x-keybroker-anything" not in h and h["x-custom"] == "kept" and h["accept-encoding"] == "identity"
    assert r.headers["x-echo"] == MASK.decode() and REAL_KEY not in r.text


def test_limits_routes_and_health(served: tuple[Gateway, str, str, FakeUpstream]) -> None:
    _, url, token, up = served
    r = httpx.post(f"{url}/openai/v1/chat/completions", content=b"x" * 2000, headers={"x-api-key": token})
    assert r.status_code == 413 and r.headers["x-keybroker-error"] == "request_too_large"
    r = httpx.get(f"{url}/nowhere/v1/models", headers={"x-api-key": token})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"
    r = httpx.get(f"{url}/openai/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "proxy_token_invalid"
    assert httpx.get(f"{url}/_health").json() == {"status": "ok"}
    assert up.seen == []


def test_audit_fails_closed(
    served: tuple[Gateway, str, str, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, url, token, up = served

    def broken(*_a: object, **_k: object) -> None:
        raise StoreError("disk gone")

    monkeypatch.setattr(gw.recorder, "_write", broken)
    r = httpx.post(f"{url}/openai/v1/chat/completions", json={"model": "x"}, headers={"x-api-key": token})
    assert r.status_code == 200  # served; its record is now waiting on a failing store
    gw.recorder.flush(0.5)
    r = httpx.post(f"{url}/openai/v1/chat/completions", json={"model": "x"}, headers={"x-api-key": token})
    assert r.status_code == 503 and r.headers["x-keybroker-error"] == "audit_unavailable"
    assert httpx.get(f"{url}/_health").status_code == 503
    monkeypatch.undo()
    assert gw.recorder.flush(5)
    r = httpx.post(f"{url}/openai/v1/chat/completions", json={"model": "x"}, headers={"x-api-key": token})
    assert r.status_code == 200 and len(up.seen) == 2


@pytest.mark.parametrize("lean", [True, False], ids=["lean-pool", "httpx-client"])
def test_both_upstream_clients(access: Access, lean: bool) -> None:
    """The lean pool (default) and the stock httpx client behave the same."""
    up = FakeUpstream(keys={REAL_KEY})
    with ServerThread(up) as up_srv:
        put_key(access, **{"gateway.base_url": up_srv.url})
        session = access.sessions.open_use_session(ALICE, Scope(), ["OPENAI_API_KEY"])
        token = access.tokens.issue(ALICE, session.id, Scope(), "OPENAI_API_KEY").token.reveal()
        gw = Gateway(access.tokens, config=GatewayConfig(lean_transport=lean, audit_flush_interval=0.01))
        with ServerThread(gw, lifespan="on") as srv, httpx.Client(base_url=srv.url) as c:
            h = {"authorization": f"Bearer {token}"}
            for _ in range(3):  # kept-alive connections are reused
                r = c.post("/openai/v1/chat/completions", json={"model": "echo-key"}, headers=h)
                assert r.status_code == 200 and MASK.decode() in r.text and REAL_KEY not in r.text
            assert c.head("/openai/v1/models", headers=h).status_code == 404  # a HEAD has no body
            with c.stream(
                "POST", "/openai/v1/chat/completions", json={"model": "echo-key", "stream": True}, headers=h
            ) as s:
                body = b"".join(s.iter_raw())
            assert body.count(b"data: ") == 7 and REAL_KEY.encode() not in body and MASK in body
            assert c.get("/openai/v1/models", headers=h).json()["data"][0]["id"] == "gpt-test"
        assert {s.key for s in up.seen} == {REAL_KEY}
