"""The SDK's history/describe/read/rollback/undelete/destroy/export (what the CLI's client mode
uses), sync and async, against the real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keybroker import AsyncClient, Client
from keybroker.errors import SecretDeleted, SecretNotFound


def test_sync_admin_methods(replica: Any, store_url: str) -> None:
    r = replica(store_url)
    with Client(r.url, r.tokens["all"], project="app", environment="dev", cache_ttl=0) as kb:
        kb.set("A", "one", description="first")
        kb.set("A", "two")
        body = kb.read("A", version=1)
        assert body["value"].reveal() == "one" and body["version"] == 1
        assert body["metadata"]["description"] == "first"
        assert kb.describe("A")["current_version"] == 2
        assert [v["version"] for v in kb.history("A")] == [1, 2]
        assert kb.rollback("A", 1)["current_version"] == 3
        assert kb.read("A")["value"].reveal() == "one"
        assert {k: v.reveal() for k, v in kb.export().items()} == {"A": "one"}
        kb.delete("A")
        with pytest.raises((SecretDeleted, SecretNotFound)):
            kb.read("A")
        assert [m["name"] for m in kb.list_secrets(deleted=True)] == ["A"]
        assert kb.list_secrets() == []
        kb.undelete("A")
        kb.destroy("A", [2])
        states = {v["version"]: v["state"] for v in kb.history("A")}
        assert states[2] == "destroyed" and states[3] == "active"


def test_async_admin_methods(replica: Any, store_url: str) -> None:
    r = replica(store_url)

    async def main() -> None:
        async with AsyncClient(r.url, r.tokens["all"], project="app", environment="dev", cache_ttl=0) as kb:
            await kb.set("B", "x")
            await kb.set("B", "y")
            assert (await kb.read("B", label="previous"))["value"].reveal() == "x"
            assert (await kb.describe("B"))["latest_version"] == 2
            assert len(await kb.history("B")) == 2
            await kb.rollback("B", 1)
            assert {k: v.reveal() for k, v in (await kb.export()).items()} == {"B": "x"}
            await kb.delete("B", versions=[1])
            await kb.undelete("B", versions=[1])
            await kb.destroy("B", [1])
            assert (await kb.history("B"))[0]["state"] == "destroyed"
            assert [m["name"] for m in await kb.list_secrets(deleted=True)] == ["B"]

    asyncio.run(main())
