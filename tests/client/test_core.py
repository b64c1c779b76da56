"""The SDK's I/O-free core: flows driven by hand, cache TTL on a manual clock, invalidation,
the resolution chain (env -> cache -> server -> last known), SSE parsing, error rebuilding."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import keybroker
import keybroker.client
from keybroker.client import ServerUnavailable, StaleValueWarning
from keybroker.client._base import ClientCore, Event, Flow, Request, Response, SSEDecoder, env_var_name
from keybroker.core import ManualClock
from keybroker.errors import (
    AuthenticationError,
    CasMismatch,
    KeybrokerError,
    PermissionDenied,
    SecretNotFound,
    VersionNotFound,
)

VALUE = "sk-live-0123456789abcdef"
TOKEN = "kbt_exampletokenvalue_0000"


def test_public_surface_is_pinned() -> None:
    assert keybroker.__all__ == ["AsyncClient", "Client", "KeybrokerError", "__version__"]
    assert keybroker.client.__all__ == [
        "DEFAULT_ADDR",
        "DEFAULT_MAX_STALE",
        "DEFAULT_TTL",
        "AsyncClient",
        "Client",
        "Event",
        "KeybrokerSettingsSource",
        "SecretCache",
        "ServerUnavailable",
        "StaleValueWarning",
        "env_var_name",
    ]
    assert keybroker.Client is keybroker.client.Client
    assert keybroker.AsyncClient is keybroker.client.AsyncClient
    with pytest.raises(AttributeError):
        _ = keybroker.NoSuchThing  # type: ignore[attr-defined]


def ok(body: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(body).encode())


def err(code: str, status: int, **details: Any) -> Response:
    return ok({"error": {"code": code, "message": f"{code} happened", "details": details}}, status)


Handler = Callable[[Request], "Response | KeybrokerError"]


def drive(flow: Flow[Any], handler: Handler, sent: list[Request] | None = None) -> Any:
    try:
        req = next(flow)
        while True:
            if sent is not None:
                sent.append(req)
            r = handler(req)
            req = flow.throw(r) if isinstance(r, KeybrokerError) else flow.send(r)
    except StopIteration as stop:
        return stop.value


def secret(value: str = VALUE, version: int = 1) -> Callable[[Request], Response]:
    return lambda req: ok({"name": "K", "version": version, "value": value, "metadata": {}})


def core(**kw: Any) -> tuple[ClientCore, ManualClock]:
    clock = ManualClock()
    kw.setdefault("environ", {})
    return ClientCore("http://kb.test", TOKEN, clock=clock, **kw), clock


def test_get_request_shape_and_cache_ttl() -> None:
    c, clock = core(project="app", environment="prod")
    sent: list[Request] = []
    assert drive(c.get_flow("db/main"), secret(), sent).reveal() == VALUE
    req = sent[0]
    assert (req.method, req.path) == ("GET", "/v1/secrets/app/prod/db/main")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(req) and TOKEN not in repr(c)
    # fresh for the TTL (300 s by default): no request at all
    clock.advance(299)
    assert (
        drive(c.get_flow("db/main"), lambda r: pytest.fail("no request while fresh"), sent).reveal() == VALUE
    )
    clock.advance(2)
    drive(c.get_flow("db/main"), secret("v2", 2), sent)
    assert len(sent) == 2 and c.cache.hits == 1
    # version / label are separate cache entries and go into the query, never the value
    drive(c.get_flow("db/main", version=1), secret(), sent)
    drive(c.get_flow("db/main", label="previous"), secret(), sent)
    assert sent[2].params == {"version": "1"} and sent[3].params == {"label": "previous"}


def test_ttl_zero_disables_cache() -> None:
    c, _ = core(cache_ttl=0)
    sent: list[Request] = []
    drive(c.get_flow("K"), secret(), sent)
    drive(c.get_flow("K"), secret(), sent)
    assert len(sent) == 2


def test_event_invalidates_and_race_does_not_store_fresh() -> None:
    c, _ = core()
    sent: list[Request] = []
    drive(c.get_flow("K"), secret(), sent)
    # another scope's event leaves it alone
    c.apply_event(Event(1, "updated", "default", "default", "prod", "K", 2, ""))
    drive(c.get_flow("K"), secret(), sent)
    assert len(sent) == 1
    c.apply_event(Event(2, "updated", "default", "default", "dev", "K", 2, ""))
    assert drive(c.get_flow("K"), secret("v2", 2), sent).reveal() == "v2"
    assert len(sent) == 2

    # an event that lands while a read is in flight: the (possibly old) answer is not fresh
    def racing(req: Request) -> Response:
        c.apply_event(Event(3, "updated", "default", "default", "dev", "K", 3, ""))
        return ok({"name": "K", "version": 2, "value": "v2", "metadata": {}})

    c.cache.invalidate("default", "dev", "K")
    drive(c.get_flow("K"), racing, sent)
    assert drive(c.get_flow("K"), secret("v3", 3), sent).reveal() == "v3"
    assert len(sent) == 4
    assert c.last_event_id == "3"


def test_listeners_run_after_invalidation_and_a_broken_one_is_contained() -> None:
    c, _ = core()
    seen: list[int] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("boom")

    c.listeners += [broken, lambda ev: seen.append(ev.id)]
    c.apply_event(Event(7, "rotated", "default", "default", "dev", "K", 2, ""))
    assert seen == [7]


def test_stale_fallback_with_warning_and_max_age() -> None:
    c, clock = core(max_stale=600)
    drive(c.get_flow("K"), secret())
    clock.advance(400)  # past the TTL, within max_stale
    down = ServerUnavailable("could not reach the keybroker server")
    with pytest.warns(StaleValueWarning) as rec:
        assert drive(c.get_flow("K"), lambda r: down).reveal() == VALUE
    msg = str(rec[0].message)
    assert "'K'" in msg and "400s old" in msg and VALUE not in msg
    # a 503 from the server (sealed, store down) falls back too
    with pytest.warns(StaleValueWarning):
        drive(c.get_flow("K"), lambda r: err("vault_sealed", 503))
    clock.advance(201)  # 601 s old: refused
    with pytest.raises(ServerUnavailable) as ei:
        drive(c.get_flow("K"), lambda r: down)
    assert ei.value.code == "server_unavailable" and ei.value.details["max_stale_s"] == 600
    assert VALUE not in str(ei.value)
    # never fetched: nothing to fall back on
    with pytest.raises(ServerUnavailable):
        drive(c.get_flow("OTHER"), lambda r: down)


def test_stale_fallback_can_be_turned_off() -> None:
    c, clock = core(max_stale=None)
    drive(c.get_flow("K"), secret())
    clock.advance(301)
    with pytest.raises(ServerUnavailable):
        drive(c.get_flow("K"), lambda r: ServerUnavailable("down"))


def test_definite_refusals_are_raised_and_forget_the_value() -> None:
    c, clock = core()
    drive(c.get_flow("K"), secret())
    clock.advance(301)
    with pytest.raises(PermissionDenied):
        drive(c.get_flow("K"), lambda r: err("permission_denied", 403))
    # the last known value is gone: an outage now cannot resurrect a revoked read
    with pytest.raises(ServerUnavailable):
        drive(c.get_flow("K"), lambda r: ServerUnavailable("down"))
    # a deleted secret's event drops it too
    drive(c.get_flow("K"), secret())
    c.apply_event(Event(9, "deleted", "default", "default", "dev", "K", None, ""))
    with pytest.raises(ServerUnavailable):
        drive(c.get_flow("K"), lambda r: ServerUnavailable("down"))


@pytest.mark.parametrize(
    ("resp", "cls"),
    [
        (err("secret_not_found", 404), SecretNotFound),
        (err("version_not_found", 404, version=3), VersionNotFound),
        (err("cas_mismatch", 409, expected=1, actual=2), CasMismatch),
        (err("unauthenticated", 401), AuthenticationError),
        (Response(403, b"<html>forbidden</html>"), PermissionDenied),
        (Response(502, b"bad gateway"), ServerUnavailable),
        (err("some_future_code", 418, message="x"), KeybrokerError),
    ],
)
def test_errors_are_rebuilt_from_codes(resp: Response, cls: type[KeybrokerError]) -> None:
    c, _ = core(max_stale=None)
    with pytest.raises(cls) as ei:
        drive(c.get_flow("K"), lambda r: resp)
    assert type(ei.value) is cls
    if cls is CasMismatch:
        assert ei.value.details == {"expected": 1, "actual": 2}


def test_env_override_is_opt_in_and_dev_only() -> None:
    env = {"DB_MAIN": "from-env", "K": "k-env"}
    c, _ = core(environ=env)
    assert drive(c.get_flow("db/main"), secret()).reveal() == VALUE  # off by default
    c, _ = core(environ=env, env_override=True)
    assert drive(c.get_flow("db/main"), lambda r: pytest.fail("env first")).reveal() == "from-env"
    assert drive(c.get_flow("db/main", environment="prod"), secret()).reveal() == VALUE
    assert drive(c.get_flow("db/main", version=1), secret()).reveal() == VALUE
    c, _ = core(environ={"APP_DB_MAIN": "p"}, env_override=True, env_prefix="APP_")
    assert drive(c.get_flow("db/main"), lambda r: pytest.fail("env")).reveal() == "p"
    assert env_var_name("", "db/main-x.y") == "DB_MAIN_X_Y"


def test_addr_and_token_from_environment() -> None:
    c = ClientCore(environ={"KEYBROKER_ADDR": "https://kb.example:8270/", "KEYBROKER_TOKEN": TOKEN})
    assert c.addr == "https://kb.example:8270"
    assert c.headers()["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in ClientCore(environ={}).headers()


def test_get_many_uses_cache_then_one_batch() -> None:
    c, _ = core()
    drive(c.get_flow("A"), secret("a"))
    sent: list[Request] = []

    def batch(req: Request) -> Response:
        return ok(
            {
                "secrets": {"B": {"version": 1, "value": "b"}, "C": {"version": 4, "value": "c"}},
                "errors": {"D": {"code": "secret_not_found", "message": "no"}},
            }
        )

    with pytest.raises(SecretNotFound):
        drive(c.get_many_flow(["A", "B", "C", "D"]), batch, sent)
    assert sent[0].path == "/v1/batch/read"
    assert sent[0].json == {"project": "default", "environment": "dev", "names": ["B", "C", "D"]}
    got = drive(c.get_many_flow(["A", "B", "C", "D"], ignore_missing=True), batch, sent)
    assert {k: v.reveal() for k, v in got.items()} == {"A": "a", "B": "b", "C": "c"}
    # the batch filled the cache for later single reads
    assert drive(c.get_flow("C"), lambda r: pytest.fail("cached")).reveal() == "c"
    assert drive(c.get_many_flow(["A", "B"]), lambda r: pytest.fail("cached"))["B"].reveal() == "b"


def test_get_many_falls_back_per_name() -> None:
    c, clock = core()
    drive(c.get_flow("A"), secret("a"))
    clock.advance(301)
    with pytest.warns(StaleValueWarning):
        got = drive(c.get_many_flow(["A"]), lambda r: ServerUnavailable("down"))
    assert got["A"].reveal() == "a"
    with pytest.raises(ServerUnavailable), warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleValueWarning)
        drive(c.get_many_flow(["A", "B"]), lambda r: ServerUnavailable("down"))


def test_writes_put_values_in_bodies_only_and_invalidate() -> None:
    c, _ = core(project="app", environment="dev")
    drive(c.get_flow("K"), secret())
    sent: list[Request] = []
    md = {"metadata": {"name": "K", "latest_version": 2}}
    assert (
        drive(c.set_flow("K", VALUE, cas=1, metadata={"tags": ["x"]}), lambda r: ok(md), sent)[
            "latest_version"
        ]
        == 2
    )
    drive(c.rotate_flow("K", VALUE + "2"), lambda r: ok(md), sent)
    drive(c.promote_flow("K"), lambda r: ok(md), sent)
    drive(c.delete_flow("K", versions=[1, 2]), lambda r: Response(204), sent)
    assert [(r.method, r.path) for r in sent] == [
        ("PUT", "/v1/secrets/app/dev/K"),
        ("POST", "/v1/rotate/app/dev/K"),
        ("POST", "/v1/promote/app/dev/K"),
        ("DELETE", "/v1/secrets/app/dev/K"),
    ]
    assert sent[0].json == {"value": VALUE, "tags": ["x"], "cas": 1}
    assert sent[3].params == {"versions": "1,2"}
    for r in sent:
        assert VALUE not in r.path and VALUE not in json.dumps(dict(r.params)) and VALUE not in repr(r)
    assert c.cache.fresh(("app", "dev", "K", None, None)) is None


def test_inject_flow_lists_then_batches() -> None:
    c, _ = core()

    def handler(req: Request) -> Response:
        if req.method == "GET":
            return ok(
                {
                    "secrets": [
                        {"name": "db/main", "current_version": 1, "kind": "generic"},
                        {"name": "sig", "current_version": 1, "kind": "keypair"},
                        {"name": "pending-only", "current_version": None, "kind": "generic"},
                    ]
                }
            )
        assert req.json["names"] == ["db/main"]
        return ok({"secrets": {"db/main": {"version": 1, "value": "pw"}}, "errors": {}})

    environ: dict[str, str] = {}
    assert drive(c.inject_flow(None, None, None, environ, True, "APP_"), handler) == ["APP_DB_MAIN"]
    assert environ == {"APP_DB_MAIN": "pw"}
    environ["X"] = "keep"
    drive(
        c.inject_flow(["X"], None, None, environ, False, ""),
        lambda r: ok({"secrets": {"X": {"value": "new"}}}),
    )
    assert environ["X"] == "keep"


def test_sse_decoder() -> None:
    d = SSEDecoder()
    lines = [
        ": keep-alive",
        "retry: 250",
        "id: 7",
        "event: updated",
        'data: {"a":',
        "data: 1}",
        "",
        "",
        "data:x",
        "",
    ]
    msgs = [m for m in (d.feed(line) for line in lines) if m is not None]
    assert msgs[0].event == "updated" and msgs[0].data == '{"a":\n1}' and msgs[0].id == "7"
    assert msgs[0].retry == 250
    assert msgs[1].event == "message" and msgs[1].data == "x" and msgs[1].id is None
    assert d.last_id == "7"


def test_watch_state_resumes_with_last_event_id() -> None:
    c, _ = core(project="app")
    st = c.watch_state("app", "dev", "K")
    r = st.request()
    assert r.path == "/v1/events" and r.params == {"project": "app", "environment": "dev", "name": "K"}
    assert "Last-Event-ID" not in r.headers and r.headers["Accept"] == "text/event-stream"
    drive(c.get_flow("K", project="app"), secret())
    st.connected()  # first connection without an id: nothing cached is trusted any more
    assert c.cache.fresh(("app", "dev", "K", None, None)) is None
    ev = None
    for line in [
        "id: 41",
        "event: rotated",
        'data: {"id":41,"kind":"rotated","org":"o","project":"app",'
        '"environment":"dev","name":"K","version":2,"ts":"t"}',
        "",
    ]:
        ev = st.feed(line) or ev
    assert ev is not None and ev.kind == "rotated" and ev.version == 2
    assert st.request().headers["Last-Event-ID"] == "41"
    assert st.feed("data: not json") is None and st.feed("") is None
    delays = [st.next_delay() for _ in range(10)]
    assert max(delays) <= 5.0 and delays[0] <= 0.1
    st.connected()
    assert st.attempt == 0
    assert st.retryable(ServerUnavailable()) and not st.retryable(PermissionDenied())


def test_unreachable_message_hides_credentials_in_the_address() -> None:
    from keybroker.client._async import unreachable

    err = unreachable("https://user:pa55@kb.example:8270", OSError("refused"))
    assert "pa55" not in str(err) and "user" not in str(err) and "kb.example:8270" in str(err)
    assert err.code == "server_unavailable" and err.status == 503
