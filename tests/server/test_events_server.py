"""The change stream and the SDK against the real server (``create_app`` on uvicorn, real tokens
and RBAC), on SQLite and PostgreSQL; and two replicas on one PostgreSQL database.

Org ``acme`` (projects alpha: dev, prod; beta: dev) has an owner and child tokens limited to
environment dev and to names OPENAI_*; org ``other`` has its own owner (the outsider).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from kb_live import ROOT_KEY, Live, free_port, new_vault, server_settings

from keybroker import AsyncClient, Client
from keybroker.client import ServerUnavailable, StaleValueWarning
from keybroker.core import ManualClock, RawRoot, Vault, local_principal
from keybroker.errors import CasMismatch, PermissionDenied, SecretNotFound
from keybroker.server import create_app
from keybroker.store import Store

VALUE = "sk-acme-never-in-an-event-0123456789"
FIELDS = {"id", "kind", "org", "project", "environment", "name", "version", "ts"}


# ---------------------------------------------------------------- helpers
class Server:
    """uvicorn in a thread on a fixed port, so a test can stop it and start it again."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app, self.port = app, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._srv: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Server:
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._srv = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._srv.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._srv.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._srv is not None and self._thread is not None:
            self._srv.should_exit = True
            self._thread.join(15)
        self._srv = self._thread = None


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _login(root: httpx.Client, name: str, org: str, role: str) -> str:
    p = {"org": org}
    assert root.post("/v1/identities", params=p, json={"name": name, "kind": "agent"}).status_code == 201
    assert (
        root.put(f"/v1/identities/{name}/roles", params=p, json={"role": role, "project": "*"}).status_code
        == 200
    )
    cred = root.post(f"/v1/identities/{name}/client-secret", params=p).json()
    r = root.post("/v1/auth/login", json=cred)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def populate(url: str, root_token: str) -> dict[str, str]:
    """Orgs, projects and tokens; returns the tokens by role."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {root_token}"}, timeout=30) as root:
        for org in ("acme", "other"):
            assert root.post("/v1/orgs", json={"name": org}).status_code == 201
        tokens = {
            "owner": _login(root, "owner", "acme", "owner"),
            "outsider": _login(root, "outsider", "other", "owner"),
        }
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {tokens['owner']}"}, timeout=30
    ) as owner:
        assert (
            owner.post("/v1/projects", json={"name": "alpha", "environments": ["dev", "prod"]}).status_code
            == 201
        )
        assert owner.post("/v1/projects", json={"name": "beta", "environments": ["dev"]}).status_code == 201
        for who, scope in (("dev", {"environments": ["dev"]}), ("names", {"names": ["OPENAI_*"]})):
            r = owner.post("/v1/tokens", json={"scope": scope, "ttl_s": 3000})
            assert r.status_code == 201, r.text
            tokens[who] = r.json()["token"]
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {tokens['outsider']}"}, timeout=30
    ) as o:
        assert o.post("/v1/projects", json={"name": "alpha", "environments": ["dev"]}).status_code == 201
    return tokens


async def collect(
    url: str,
    token: str | None,
    params: dict[str, str] | None = None,
    *,
    n: int = 100,
    timeout: float = 1.0,
    headers: dict[str, str] | None = None,
    writes: Callable[[], Any] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """(status, events, raw text): the stream read until ``n`` events or ``timeout`` seconds."""
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    events: list[dict[str, Any]] = []
    raw: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream("GET", "/v1/events", params=params, headers=h) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, [], r.text
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


@pytest.fixture
def acme(live: Live) -> tuple[Live, dict[str, str]]:
    return live, populate(live.url, live.root)


def acme_writes(url: str, tokens: dict[str, str]) -> Callable[[], None]:
    def go() -> None:
        with Client(url, tokens["owner"], project="alpha", environment="dev") as kb:
            kb.set("OPENAI_KEY", VALUE)
            kb.set("OPENAI_KEY", VALUE, environment="prod")
            kb.set("DB_PASSWORD", VALUE)
            kb.set("OPENAI_KEY", VALUE, project="beta")
            kb.rotate("OPENAI_KEY", VALUE + "2")
            kb.promote("OPENAI_KEY")
            kb.delete("DB_PASSWORD")
        with Client(url, tokens["outsider"], project="alpha", environment="dev") as other:
            other.set("OPENAI_KEY", "other-org-value")

    return go


# ---------------------------------------------------------------- the stream
def test_stream_through_the_real_server(acme: tuple[Live, dict[str, str]]) -> None:
    live, tok = acme

    async def main() -> None:
        status, evs, raw = await collect(
            live.url, tok["owner"], n=7, timeout=10, writes=acme_writes(live.url, tok)
        )
        assert status == 200
        assert [
            (e["event"], e["data"]["project"], e["data"]["environment"], e["data"]["name"]) for e in evs
        ] == [
            ("created", "alpha", "dev", "OPENAI_KEY"),
            ("created", "alpha", "prod", "OPENAI_KEY"),
            ("created", "alpha", "dev", "DB_PASSWORD"),
            ("created", "beta", "dev", "OPENAI_KEY"),
            ("rotated", "alpha", "dev", "OPENAI_KEY"),
            ("promoted", "alpha", "dev", "OPENAI_KEY"),
            ("deleted", "alpha", "dev", "DB_PASSWORD"),
        ]
        for e in evs:
            assert set(e["data"]) == FIELDS and e["data"]["org"] == "acme"
        assert VALUE not in raw and "other-org-value" not in raw
        # filters and Last-Event-ID replay (header, or the query parameter)
        first = evs[0]["id"]
        _, dev, _ = await collect(
            live.url, tok["owner"], {"environment": "dev"}, headers={"Last-Event-ID": first}, n=5, timeout=5
        )
        assert [e["data"]["name"] for e in dev] == [
            "DB_PASSWORD",
            "OPENAI_KEY",
            "OPENAI_KEY",
            "OPENAI_KEY",
            "DB_PASSWORD",
        ]
        _, one, _ = await collect(
            live.url,
            tok["owner"],
            {"project": "alpha", "environment": "dev", "name": "OPENAI_*", "last_event_id": "0"},
            n=3,
            timeout=5,
        )
        assert [e["event"] for e in one] == ["created", "rotated", "promoted"]
        status, _, body = await collect(live.url, tok["owner"], headers={"Last-Event-ID": "x"})
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_input"

    asyncio.run(main())


def outsider_write(url: str, token: str) -> None:
    with Client(url, token, project="alpha") as kb:
        kb.set("LIVE", "x")


def test_stream_access_and_isolation(acme: tuple[Live, dict[str, str]]) -> None:
    live, tok = acme
    acme_writes(live.url, tok)()

    async def main() -> None:
        status, _, body = await collect(live.url, None)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthenticated"
        # the outsider sees only its own organization's event, whatever it asks for
        _, evs, raw = await collect(live.url, tok["outsider"], {"last_event_id": "0"}, n=1, timeout=5)
        assert [(e["data"]["org"], e["data"]["project"]) for e in evs] == [("other", "alpha")]
        assert "acme" not in raw
        _, evs, _ = await collect(live.url, tok["outsider"], {"project": "beta", "last_event_id": "0"})
        assert evs == []
        # a token limited to dev must say so; then it sees dev only
        status, _, body = await collect(live.url, tok["dev"], {"last_event_id": "0"})
        assert status == 403 and json.loads(body)["error"]["code"] == "permission_denied"
        _, evs, _ = await collect(
            live.url, tok["dev"], {"environment": "dev", "last_event_id": "0"}, n=6, timeout=5
        )
        assert {e["data"]["environment"] for e in evs} == {"dev"} and len(evs) == 6
        # a token limited to OPENAI_* names: every event it gets is about such a name
        _, evs, _ = await collect(
            live.url, tok["names"], {"project": "alpha", "last_event_id": "0"}, n=4, timeout=5
        )
        assert {e["data"]["name"] for e in evs} == {"OPENAI_KEY"} and len(evs) == 4
        # live, too: another org's write never reaches acme's owner
        _, evs, _ = await collect(
            live.url,
            tok["owner"],
            timeout=1.0,
            writes=lambda: outsider_write(live.url, tok["outsider"]),
        )
        assert evs == []

    asyncio.run(main())
    with live.client(tok["owner"]) as c:  # each subscription is audited, in its organization
        r = c.get("/v1/audit", params={"action": "events.subscribe"})
        assert r.status_code == 200
        targets = [e["target"] for e in r.json()["entries"]]
        assert "acme/*/*" in targets and "acme/alpha/*" in targets and "acme/*/dev" in targets


# ---------------------------------------------------------------- the SDK
def test_sdk_against_the_real_server(acme: tuple[Live, dict[str, str]]) -> None:
    live, tok = acme
    clock = ManualClock()
    with (
        Client(live.url, tok["owner"], project="alpha", environment="dev") as writer,
        Client(
            live.url, tok["owner"], project="alpha", environment="dev", clock=clock, cache_invalidation=True
        ) as kb,
    ):
        assert kb.wait_watching(5)
        writer.set("OPENAI_KEY", "v1")
        assert kb.get("OPENAI_KEY").reveal() == "v1"
        with pytest.raises(CasMismatch):
            writer.set("OPENAI_KEY", "x", cas=0)
        writer.rotate("OPENAI_KEY", "v2")
        assert kb.get("OPENAI_KEY").reveal() == "v1"  # pending is not current
        assert kb.get("OPENAI_KEY", label="pending").reveal() == "v2"
        writer.promote("OPENAI_KEY")
        wait_for(lambda: kb.get("OPENAI_KEY").reveal() == "v2")  # at once, the clock never moved
        assert kb.get_many(["OPENAI_KEY", "NOPE"], ignore_missing=True)["OPENAI_KEY"].reveal() == "v2"
        with pytest.raises(SecretNotFound):
            kb.get("NOPE")
    with (
        Client(live.url, tok["dev"], project="alpha", environment="prod") as kb,
        pytest.raises(PermissionDenied),
    ):
        kb.get("OPENAI_KEY")
    with (
        Client(live.url, tok["outsider"], project="alpha", environment="dev") as kb,
        pytest.raises(SecretNotFound),
    ):
        kb.get("OPENAI_KEY")  # its own org's alpha has no such secret: acme's stays invisible

    async def async_part() -> None:
        async with AsyncClient(live.url, tok["owner"], project="alpha", environment="dev") as akb:
            await akb.set("ASYNC_KEY", VALUE)
            assert (await akb.get("ASYNC_KEY")).reveal() == VALUE
            got = []
            async for ev in akb.watch(name="ASYNC_KEY", project="alpha", environment="dev", last_event_id=0):
                got.append(ev)
                break
            assert got[0].kind == "created" and got[0].org == "acme"

    asyncio.run(async_part())


def test_sdk_last_known_value_when_the_server_stops(store_url: str) -> None:
    clock = ManualClock()
    vault, root = new_vault(store_url, clock)
    srv = Server(create_app(server_settings(), vault=vault, clock=clock)).start()
    try:
        sdk_clock = ManualClock()
        with Client(
            srv.url, root, project="default", environment="dev", clock=sdk_clock, max_stale=600
        ) as kb:
            kb.set("K", VALUE)
            assert kb.get("K").reveal() == VALUE
            srv.stop()
            sdk_clock.advance(301)
            with pytest.warns(StaleValueWarning):
                assert kb.get("K").reveal() == VALUE
            sdk_clock.advance(300)
            with pytest.raises(ServerUnavailable):
                kb.get("K")
            srv.start()
            assert kb.get("K").reveal() == VALUE
    finally:
        srv.stop()
        vault.store.dispose()


# ---------------------------------------------------------------- two replicas
@pytest.fixture
def two_replicas(pg_url: str) -> Iterator[tuple[Server, Server, str]]:
    clock = ManualClock()
    vault_a, root = new_vault(pg_url, clock)
    vault_b = Vault(Store(pg_url), clock)
    vault_b.unseal(RawRoot(ROOT_KEY), local_principal("test"))
    a = Server(create_app(server_settings(), vault=vault_a, clock=clock)).start()
    b = Server(create_app(server_settings(), vault=vault_b, clock=clock)).start()
    try:
        yield a, b, root
    finally:
        a.stop()
        b.stop()
        vault_a.store.dispose()
        vault_b.store.dispose()


@pytest.mark.postgres
def test_two_replicas_on_postgresql(two_replicas: tuple[Server, Server, str]) -> None:
    """A write through replica A reaches an SSE subscriber of replica B, and an SDK client
    connected to B serves the new value at once (TTL 300 s, its clock never moves)."""
    a, b, root = two_replicas
    writer = Client(a.url, root, project="default", environment="dev")
    writer.set("OPENAI_API_KEY", VALUE + "-v1")
    reader = Client(
        b.url,
        root,
        project="default",
        environment="dev",
        clock=ManualClock(),
        cache_ttl=300,
        cache_invalidation=True,
    )
    try:
        assert reader.wait_watching(5)
        assert reader.get("OPENAI_API_KEY").reveal() == VALUE + "-v1"

        def write_on_a() -> None:
            writer.rotate("OPENAI_API_KEY", VALUE + "-v2")
            writer.promote("OPENAI_API_KEY")

        status, evs, raw = asyncio.run(
            collect(b.url, root, {"name": "OPENAI_API_KEY"}, n=2, timeout=10, writes=write_on_a)
        )
        assert status == 200 and VALUE not in raw
        assert [(e["event"], e["data"]["version"]) for e in evs] == [("rotated", 2), ("promoted", 2)]
        wait_for(lambda: reader.get("OPENAI_API_KEY").reveal() == VALUE + "-v2")
        t0 = time.monotonic()
        writer.set("OPENAI_API_KEY", VALUE + "-v3")
        wait_for(lambda: reader.get("OPENAI_API_KEY").reveal() == VALUE + "-v3")
        assert time.monotonic() - t0 < 1.0
    finally:
        writer.close()
        reader.close()


def test_sqlite_writes_by_another_process_reach_the_stream(
    make_live: Callable[..., Live], store_url: str
) -> None:
    """On SQLite the server polls kb_events (events_poll_s), so a write made beside it on the same
    file (the CLI, another process) reaches its subscribers."""
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL replicas use LISTEN/NOTIFY (tested above)")
    from keybroker.core import Scope, SecretService

    live = make_live(events_poll_s=0.05)
    other = Vault(Store(store_url))
    other.unseal(RawRoot(ROOT_KEY), local_principal("cli"))
    cli = SecretService(other)

    def write_beside() -> None:
        cli.put(local_principal("cli"), Scope("default", "dev"), "FROM_CLI", VALUE)

    try:
        status, evs, raw = asyncio.run(collect(live.url, live.root, n=1, timeout=5, writes=write_beside))
        assert status == 200 and VALUE not in raw
        assert [(e["event"], e["data"]["name"]) for e in evs] == [("created", "FROM_CLI")]
    finally:
        other.store.dispose()
