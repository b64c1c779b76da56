"""The SDK through real HTTP (uvicorn on a free port): sync and async clients, errors, cache,
invalidation by the change stream, fallback when the server stops, inject_env, settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from keybroker import AsyncClient, Client
from keybroker.client import Event, ServerUnavailable, StaleValueWarning
from keybroker.core import ManualClock
from keybroker.errors import CasMismatch, PermissionDenied, SecretNotFound, VersionNotFound

VALUE = "sk-test-value-0123456789abcdef"


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_sync_client_round_trip_and_errors(replica: Any, store_url: str) -> None:
    r = replica(store_url)
    with Client(r.url, r.tokens["all"], project="app", environment="dev") as kb:
        md = kb.set("OPENAI_API_KEY", VALUE, description="for tests", tags=["ci"])
        assert md["latest_version"] == 1 and md["tags"] == ["ci"]
        assert kb.get("OPENAI_API_KEY").reveal() == VALUE
        kb.set("OPENAI_API_KEY", VALUE + "2", cas=1)
        with pytest.raises(CasMismatch) as ei:
            kb.set("OPENAI_API_KEY", "x", cas=1)
        assert ei.value.details == {"expected": 1, "actual": 2}
        assert kb.get("OPENAI_API_KEY", version=1).reveal() == VALUE
        kb.rotate("OPENAI_API_KEY", VALUE + "3")
        assert kb.get("OPENAI_API_KEY", label="pending").reveal() == VALUE + "3"
        kb.promote("OPENAI_API_KEY")
        with pytest.raises(VersionNotFound):
            kb.promote("OPENAI_API_KEY")
        kb.set("db/main", "pw")
        names = [m["name"] for m in kb.list_secrets()]
        assert names == ["OPENAI_API_KEY", "db/main"]
        got = kb.get_many(["OPENAI_API_KEY", "db/main", "NOPE"], ignore_missing=True)
        assert {k: v.reveal() for k, v in got.items()} == {"OPENAI_API_KEY": VALUE + "3", "db/main": "pw"}
        with pytest.raises(SecretNotFound):
            kb.get("NOPE")
        kb.delete("db/main")
        from keybroker.errors import SecretDeleted

        with pytest.raises(SecretDeleted):
            kb.get("db/main")
    with Client(r.url, r.tokens["dev"], project="app", environment="prod") as kb:
        with pytest.raises(PermissionDenied):
            kb.get("OPENAI_API_KEY")
    with Client(r.url, "kbt_wrong", project="app") as kb:
        from keybroker.errors import AuthenticationError

        with pytest.raises(AuthenticationError):
            kb.get("OPENAI_API_KEY")


def test_cache_ttl_and_invalidation_by_the_stream(replica: Any, store_url: str) -> None:
    r = replica(store_url)
    clock = ManualClock()
    writer = Client(r.url, r.tokens["all"], project="app", environment="dev")
    writer.set("K", "v1")
    plain = Client(r.url, r.tokens["all"], project="app", environment="dev", clock=clock)
    live = Client(
        r.url, r.tokens["all"], project="app", environment="dev", clock=clock, cache_invalidation=True
    )
    try:
        assert live.wait_watching(5)
        assert plain.get("K").reveal() == "v1" and live.get("K").reveal() == "v1"
        changes: list[Event] = []
        live.on_change(changes.append)
        writer.set("K", "v2")
        # the watching client sees the new value at once; the clock has not moved
        wait_for(lambda: live.get("K").reveal() == "v2")
        assert changes[0].name == "K" and changes[0].kind == "updated" and changes[0].version == 2
        # the plain client serves its cached value until the TTL (300 s) runs out
        assert plain.get("K").reveal() == "v1"
        clock.advance(299)
        assert plain.get("K").reveal() == "v1"
        clock.advance(2)
        assert plain.get("K").reveal() == "v2"
        # a rotation (pending) and its promotion both invalidate
        writer.rotate("K", "v3")
        writer.promote("K")
        wait_for(lambda: live.get("K").reveal() == "v3")
        assert [e.kind for e in changes] == ["updated", "rotated", "promoted"]
    finally:
        for c in (writer, plain, live):
            c.close()
    assert not live.watching


def test_async_client_and_invalidation(replica: Any, store_url: str) -> None:
    r = replica(store_url)

    async def main() -> None:
        clock = ManualClock()
        async with (
            AsyncClient(r.url, r.tokens["all"], project="app", environment="dev") as writer,
            AsyncClient(
                r.url, r.tokens["all"], project="app", environment="dev", clock=clock, cache_invalidation=True
            ) as kb,
        ):
            assert await kb.wait_watching(5)
            await writer.set("K", VALUE)
            assert (await kb.get("K")).reveal() == VALUE
            assert (await kb.get_many(["K"]))["K"].reveal() == VALUE
            await writer.set("K", VALUE + "2")
            deadline = time.monotonic() + 5
            while (await kb.get("K")).reveal() != VALUE + "2":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            with pytest.raises(SecretNotFound):
                await kb.get("NOPE")
            assert (await kb.health())["initialized"] is True
            events = []
            async for ev in kb.watch(project="app", environment="dev", last_event_id=0):
                events.append(ev)
                if len(events) == 2:
                    break
            assert [(e.kind, e.version) for e in events] == [("created", 1), ("updated", 2)]
        assert not kb.watching

    asyncio.run(main())


def test_last_known_value_when_the_server_is_down(replica: Any, store_url: str) -> None:
    r = replica(store_url)
    clock = ManualClock()
    with Client(r.url, r.tokens["all"], project="app", environment="dev", clock=clock, max_stale=3600) as kb:
        kb.set("K", VALUE)
        assert kb.get("K").reveal() == VALUE
        r.server.stop()
        assert kb.get("K").reveal() == VALUE  # fresh: no warning, no request
        clock.advance(400)
        with pytest.warns(StaleValueWarning, match="last known value of 'K'") as rec:
            assert kb.get("K").reveal() == VALUE
        assert VALUE not in str(rec[0].message)
        with pytest.raises(ServerUnavailable):
            kb.get("NEVER_READ")
        with pytest.raises(ServerUnavailable):
            kb.set("K", "x")  # writes never pretend
        clock.advance(3600)
        with pytest.raises(ServerUnavailable) as ei:
            kb.get("K")
        assert ei.value.details["max_stale_s"] == 3600 and VALUE not in str(ei.value)
        r.server.start()
        assert kb.get("K").reveal() == VALUE


def test_watch_resumes_after_a_server_restart(replica: Any, store_url: str) -> None:
    """The sync watch() reconnects with Last-Event-ID and gets what was written while it was away."""
    from keybroker.core import Scope, local_principal

    r = replica(store_url)
    me = local_principal("test")
    got: list[Event] = []
    kb = Client(r.url, r.tokens["all"], project="app", environment="dev", watch_backoff_max=0.2)

    def run() -> None:
        for ev in kb.watch(project="app", environment="dev"):
            got.append(ev)
            if len(got) == 3:
                return

    import threading

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.3)
    r.secrets.put(me, Scope("app", "dev"), "K", "v1")
    wait_for(lambda: len(got) == 1)
    r.server.stop()
    r.secrets.put(me, Scope("app", "dev"), "K", "v2")  # written while the stream is down
    r.secrets.put(me, Scope("app", "prod"), "K", "v2")  # filtered out
    r.server.start()
    wait_for(lambda: len(got) == 2, 10)
    r.secrets.put(me, Scope("app", "dev"), "K", "v3")
    t.join(10)
    assert [(e.kind, e.version, e.environment) for e in got] == [
        ("created", 1, "dev"),
        ("updated", 2, "dev"),
        ("updated", 3, "dev"),
    ]
    kb.close()


def test_inject_env(replica: Any, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    r = replica(store_url)
    with Client(r.url, r.tokens["all"], project="app", environment="dev") as kb:
        kb.set("OPENAI_API_KEY", VALUE)
        kb.set("db/main", "pw")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("DB_MAIN", raising=False)
        monkeypatch.setenv("DB_MAIN", "keep")
        assert kb.inject_env(overwrite=False) == ["OPENAI_API_KEY"]
        assert os.environ["OPENAI_API_KEY"] == VALUE and os.environ["DB_MAIN"] == "keep"
        env: dict[str, str] = {}
        assert kb.inject_env(["db/main"], environ=env, prefix="APP_") == ["APP_DB_MAIN"]
        assert env == {"APP_DB_MAIN": "pw"}


def test_env_override_in_dev_only(replica: Any, store_url: str) -> None:
    r = replica(store_url)
    env = {"K": "from-env"}
    with Client(
        r.url, r.tokens["all"], project="app", environment="dev", env_override=True, environ=env
    ) as kb:
        kb.set("K", VALUE)
        kb.set("K", VALUE, environment="prod")
        assert kb.get("K").reveal() == "from-env"
        assert kb.get("K", environment="prod").reveal() == VALUE


def test_pydantic_settings_source(replica: Any, store_url: str) -> None:
    from pydantic import Field, SecretStr
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

    from keybroker.client import KeybrokerSettingsSource

    r = replica(store_url)
    kb = Client(r.url, r.tokens["all"], project="app", environment="dev")
    kb.set("OPENAI_API_KEY", VALUE)
    kb.set("db/main", "pw")
    kb.set("port", "8080")

    class Settings(BaseSettings):
        openai_api_key: SecretStr
        db_password: SecretStr = Field(json_schema_extra={"keybroker": "db/main"})
        port: int = 1
        missing: str = "default"

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, KeybrokerSettingsSource(settings_cls, kb))

    s = Settings()
    assert s.openai_api_key.get_secret_value() == VALUE
    assert s.db_password.get_secret_value() == "pw"
    assert s.port == 8080 and s.missing == "default"
    assert VALUE not in repr(s)
    assert Settings(port=9).port == 9  # init settings win
    kb.close()
