"""GET /v1/events through real HTTP: SSE framing, filters, Last-Event-ID replay, keep-alives,
access checks, organization isolation, never a value."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from keybroker.core import Scope, local_principal

VALUE = "sk-must-never-appear-in-the-stream-42"
ME = local_principal("test")
FIELDS = {"id", "kind", "org", "project", "environment", "name", "version", "ts"}


async def collect(
    url: str,
    token: str | None,
    params: dict[str, str] | None = None,
    *,
    n: int = 100,
    timeout: float = 0.4,
    headers: dict[str, str] | None = None,
    writes: Any = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """(status, events as {id, event, data}, raw text) read until n events or ``timeout``."""
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    events: list[dict[str, Any]] = []
    raw: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream("GET", "/v1/events", params=params, headers=h) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, [], r.text
            assert r.headers["content-type"].startswith("text/event-stream")
            if writes is not None:
                await asyncio.to_thread(writes)
            cur: dict[str, Any] = {}

            async def read() -> None:
                async for line in r.aiter_lines():
                    raw.append(line)
                    if not line:
                        if "data" in cur:
                            events.append(dict(cur))
                            if len(events) >= n:
                                return
                        cur.clear()
                        continue
                    k, _, v = line.partition(": ")
                    if k in ("id", "event"):
                        cur[k] = v
                    elif k == "data":
                        cur["data"] = json.loads(v)

            try:
                await asyncio.wait_for(read(), timeout)
            except TimeoutError:
                pass
    return 200, events, "\n".join(raw)


def writes_for(r: Any) -> Any:
    def go() -> None:
        s = r.secrets
        s.put(ME, Scope("app", "dev"), "API_KEY", VALUE)
        s.put(ME, Scope("app", "prod"), "API_KEY", VALUE)
        s.put(ME, Scope("other", "dev"), "db/main", VALUE)
        s.put(ME, Scope("app", "dev", "acme"), "API_KEY", VALUE)
        s.rotate(ME, Scope("app", "dev"), "API_KEY", VALUE + "2")
        s.promote(ME, Scope("app", "dev"), "API_KEY")
        s.delete(ME, Scope("app", "dev"), "API_KEY")

    return go


def test_stream_framing_filters_and_no_values(replica: Any, store_url: str, tokens: dict[str, str]) -> None:
    r = replica(store_url, keepalive=0.2)

    async def main() -> None:
        status, evs, raw = await collect(r.url, tokens["all"], n=6, timeout=5, writes=writes_for(r))
        assert status == 200
        assert [(e["event"], e["data"]["project"], e["data"]["environment"]) for e in evs] == [
            ("created", "app", "dev"),
            ("created", "app", "prod"),
            ("created", "other", "dev"),
            ("rotated", "app", "dev"),
            ("promoted", "app", "dev"),
            ("deleted", "app", "dev"),
        ]
        assert raw.startswith("retry: 1000")
        for e in evs:
            assert set(e["data"]) == FIELDS and e["data"]["org"] == "default"
            assert e["id"] == str(e["data"]["id"]) and e["event"] == e["data"]["kind"]
        assert VALUE not in raw
        # keep-alive comments on an idle stream
        _, none, idle = await collect(r.url, tokens["all"], {"project": "nothing-here"}, timeout=0.7)
        assert none == [] and ": keep-alive" in idle

    asyncio.run(main())

    async def filtered() -> None:
        a = await collect(
            r.url, tokens["all"], {"project": "app", "environment": "dev"}, headers={"Last-Event-ID": "0"}
        )
        assert [e["event"] for e in a[1]] == ["created", "rotated", "promoted", "deleted"]
        b = await collect(r.url, tokens["all"], {"name": "db/*", "last_event_id": "0"})
        assert [e["data"]["name"] for e in b[1]] == ["db/main"]
        c = await collect(r.url, tokens["all"], {"environment": "prod", "last_event_id": "0"})
        assert [e["data"]["project"] for e in c[1]] == ["app"]

    asyncio.run(filtered())


def test_last_event_id_replay(replica: Any, store_url: str, tokens: dict[str, str]) -> None:
    r = replica(store_url)
    writes_for(r)()

    async def main() -> None:
        _, all_, _ = await collect(r.url, tokens["all"], {"last_event_id": "0"}, n=6)
        assert len(all_) == 6
        third = all_[2]["id"]
        _, rest, _ = await collect(r.url, tokens["all"], headers={"Last-Event-ID": third})
        assert [e["id"] for e in rest] == [e["id"] for e in all_[3:]]
        # the header wins over the query parameter
        _, rest2, _ = await collect(
            r.url, tokens["all"], {"last_event_id": "0"}, headers={"Last-Event-ID": third}
        )
        assert len(rest2) == 3
        _, none, _ = await collect(
            r.url, tokens["all"], headers={"Last-Event-ID": all_[-1]["id"]}, timeout=0.3
        )
        assert none == []
        status, _, body = await collect(r.url, tokens["all"], headers={"Last-Event-ID": "abc"})
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_input"

    asyncio.run(main())


def test_access_and_organization_isolation(replica: Any, store_url: str, tokens: dict[str, str]) -> None:
    r = replica(store_url)
    writes_for(r)()

    async def main() -> None:
        status, _, body = await collect(r.url, None)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthenticated"
        # a token limited to project app may not ask for every project, nor for another one
        for params in ({}, {"project": "other"}):
            status, _, body = await collect(r.url, tokens["app"], params)
            assert status == 403 and json.loads(body)["error"]["code"] == "permission_denied"
        status, evs, _ = await collect(r.url, tokens["app"], {"project": "app", "last_event_id": "0"})
        assert status == 200 and {e["data"]["project"] for e in evs} == {"app"} and len(evs) == 5
        # limited to app/dev: must say so
        assert (await collect(r.url, tokens["dev"], {"project": "app"}))[0] == 403
        _, evs, _ = await collect(
            r.url, tokens["dev"], {"project": "app", "environment": "dev", "last_event_id": "0"}
        )
        assert {e["data"]["environment"] for e in evs} == {"dev"} and len(evs) == 4
        # another organization: only its own event, replayed or live; never default's
        _, acme, _ = await collect(r.url, tokens["acme"], {"last_event_id": "0"})
        assert [(e["data"]["org"], e["data"]["name"]) for e in acme] == [("acme", "API_KEY")]
        _, default, _ = await collect(r.url, tokens["all"], {"last_event_id": "0"})
        assert {e["data"]["org"] for e in default} == {"default"}
        status, live, _ = await collect(
            r.url,
            tokens["acme"],
            timeout=2,
            writes=lambda: r.secrets.put(ME, Scope("app", "dev"), "LIVE", "x"),
        )
        assert status == 200 and live == []

    asyncio.run(main())


@pytest.mark.parametrize("bad", ["-1", "1e3", "9" * 30])
def test_bad_last_event_id(replica: Any, tmp_path: Any, tokens: dict[str, str], bad: str) -> None:
    r = replica(f"sqlite:///{tmp_path / 'v.db'}")
    status, _, _ = asyncio.run(collect(r.url, tokens["all"], {"last_event_id": bad}))
    assert status in (400, 422)
