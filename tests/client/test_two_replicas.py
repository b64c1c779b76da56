"""Two keybroker replicas on one PostgreSQL database (same schema): a write through replica A
reaches an SSE subscriber of replica B (LISTEN/NOTIFY), and an SDK client connected to B serves
the new value at once, although its cache TTL is 300 s and its clock never moves."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from keybroker import Client
from keybroker.core import ManualClock

VALUE = "sk-replica-test-value-0123456789"
pytestmark = pytest.mark.postgres


def test_write_on_a_reaches_subscribers_and_sdk_of_b(
    replica: Any, pg_url: str, tokens: dict[str, str]
) -> None:
    a = replica(pg_url)
    b = replica(pg_url)
    assert a.url != b.url and a.bus.channel == b.bus.channel
    token = tokens["all"]
    writer = Client(a.url, token, project="app", environment="dev")
    writer.set("OPENAI_API_KEY", VALUE + "-v1")
    clock = ManualClock()
    reader = Client(
        b.url, token, project="app", environment="dev", clock=clock, cache_ttl=300, cache_invalidation=True
    )
    try:
        assert reader.wait_watching(5)
        assert reader.get("OPENAI_API_KEY").reveal() == VALUE + "-v1"

        async def sse_on_b() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
                headers = {"Authorization": f"Bearer {token}"}
                params = {"project": "app", "environment": "dev", "name": "OPENAI_API_KEY"}
                async with http.stream("GET", "/v1/events", params=params, headers=headers) as r:
                    assert r.status_code == 200
                    # the subscription is live once the headers are in: now write through A
                    await asyncio.to_thread(writer.rotate, "OPENAI_API_KEY", VALUE + "-v2")
                    await asyncio.to_thread(writer.promote, "OPENAI_API_KEY")

                    async def read() -> None:
                        async for line in r.aiter_lines():
                            assert VALUE not in line
                            if line.startswith("data: "):
                                got.append(json.loads(line[6:]))
                                if len(got) == 2:
                                    return

                    await asyncio.wait_for(read(), 10)
            return got

        got = asyncio.run(sse_on_b())
        assert [(e["kind"], e["version"]) for e in got] == [("rotated", 2), ("promoted", 2)]
        assert b.bus.stats["remote"] >= 2 and a.bus.stats["remote"] == 0

        # the SDK client on B already serves v2: no TTL wait (the clock never moved)
        deadline = time.monotonic() + 5
        while reader.get("OPENAI_API_KEY").reveal() != VALUE + "-v2":
            assert time.monotonic() < deadline, "B's client never saw the rotation"
            time.sleep(0.005)
        # and a plain write through A, timed: the change is served by B's client quickly
        t0 = time.monotonic()
        writer.set("OPENAI_API_KEY", VALUE + "-v3")
        while reader.get("OPENAI_API_KEY").reveal() != VALUE + "-v3":
            assert time.monotonic() - t0 < 5
            time.sleep(0.001)
        assert time.monotonic() - t0 < 1.0
    finally:
        writer.close()
        reader.close()
