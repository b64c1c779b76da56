"""``GET /v1/events``: the live change stream as Server-Sent Events.

Each event is ``id: <event id>``, ``event: <kind>``, ``data: <JSON>`` with the fields of
docs/http-api.md (never a value). Comments (``: keep-alive``) keep idle connections open
through proxies. ``Last-Event-ID`` (header, or ``?last_event_id=`` for clients that cannot set
headers) replays what was missed from ``kb_events``. ``?project=&environment=&name=`` filter;
``name`` may be a glob.

Access: the token must be allowed to ``list`` in the requested scope (asked of the server's
authorizer, the one place rules live; a missing project/environment asks for all of them, which
only a token scoped to all of them has), and each event is also checked against the authorizer
before it is sent, so a token limited to some names or environments sees only those. Events of
another organization are never sent: the filter is pinned to the principal's organization.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from keybroker.core._events import Event, EventBus, EventFilter, Subscription, SubscriptionLagged
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.errors import InvalidInput, KeybrokerError

__all__ = ["events_router", "install", "principal_org"]

_MAX_AUTH_CACHE = 4096


def principal_org(principal: Principal) -> str:
    """The organization a principal acts in (its token's); the local owner's is ``default``."""
    grant = getattr(principal, "grant", None)
    org = getattr(grant, "org", None) or principal.attrs.get("org")
    return str(org or "default")


def _last_event_id(header: str | None, query: str | None) -> int | None:
    raw = header if header not in (None, "") else query
    if raw in (None, ""):
        return None
    assert raw is not None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidInput("Last-Event-ID must be the numeric id of an event")
    return int(raw)


@functools.lru_cache(maxsize=1024)
def _frame(ev: Event) -> bytes:
    """One event's SSE frame, encoded once however many subscribers it goes to."""
    data = json.dumps(ev.to_dict(), separators=(",", ":"))
    return f"id: {ev.id}\nevent: {ev.kind}\ndata: {data}\n\n".encode()


def events_router(
    *,
    principal: Callable[..., Any],
    bus: Callable[[Request], EventBus],
    authorizer: Callable[[Request], Any],
    keepalive: float = 15.0,
    retry_ms: int = 1000,
    on_subscribe: Callable[[Principal, EventFilter], None] | None = None,
) -> APIRouter:
    """The ``/v1/events`` router.

    ``principal``: the server's FastAPI dependency giving the authenticated
    :class:`~keybroker.core.Principal` (it raises for a missing/bad token). ``bus``/``authorizer``:
    how to find the app's :class:`EventBus` and :class:`~keybroker.core.Authorizer` from a
    request. ``keepalive``: seconds between keep-alive comments. ``on_subscribe``: called (in a
    worker thread) once a subscription is allowed, e.g. to audit it.
    """
    router = APIRouter()

    @router.get(
        "/v1/events",
        summary="Live change stream (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "an event stream"}},
    )
    async def events(
        request: Request,
        who: Principal = Depends(principal),
        project: str | None = Query(None, max_length=64),
        environment: str | None = Query(None, max_length=64),
        name: str | None = Query(None, max_length=256),
        last_event_id: str | None = Query(None, max_length=32),
    ) -> StreamingResponse:
        after = _last_event_id(request.headers.get("last-event-id"), last_event_id)
        org = principal_org(who)
        flt = EventFilter(org, project or None, environment or None, name or None)
        authz = authorizer(request)
        glob = flt.name is not None and any(c in flt.name for c in "*?[")
        authz.authorize(
            who,
            "list",
            Scope(flt.project or "*", flt.environment or "*", org),
            None if glob else flt.name,
        )
        if on_subscribe is not None:
            await run_in_threadpool(on_subscribe, who, flt)
        # registered before the response starts, so nothing committed from here on is missed
        sub = bus(request).subscribe(flt, last_event_id=after)
        return StreamingResponse(
            _stream(sub, who, authz, keepalive, retry_ms),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


def install(app: FastAPI, kb: Any) -> None:
    """Called by :func:`keybroker.server.create_app` with its :class:`~keybroker.server.Services`:
    an :class:`EventBus` listening to ``kb.secrets`` (started and closed with the app; kept in
    ``kb.extras["events_bus"]``), and the router. On SQLite the bus polls ``kb_events`` every
    ``events_poll_s`` seconds for writes by other processes (the CLI on the same file); on
    PostgreSQL replicas hear each other by LISTEN/NOTIFY and need no polling. Each subscription
    is audited (``events.subscribe``)."""
    from keybroker.server._auth import principal

    store = kb.vault.store
    poll = float(getattr(kb.settings, "events_poll_s", 0) or 0)
    bus = EventBus(store, poll_interval=poll if poll > 0 and store.dialect != "postgresql" else None)
    bus.attach(kb.secrets)
    kb.extras["events_bus"] = bus
    app.state.on_startup.append(bus.start)
    app.state.on_shutdown.append(bus.close)
    keepalive = float(getattr(kb.settings, "events_keepalive_s", 15.0))

    def audit(who: Principal, flt: EventFilter) -> None:
        target = f"{flt.org}/{flt.project or '*'}/{flt.environment or '*'}" + (
            f"/{flt.name}" if flt.name else ""
        )
        kb.vault.audit.record(who, "events.subscribe", target)

    app.include_router(
        events_router(
            principal=principal,
            bus=lambda _r: bus,
            authorizer=lambda _r: kb.authorizer,
            keepalive=keepalive,
            on_subscribe=audit,
        )
    )


async def _stream(
    sub: Subscription, who: Principal, authz: Any, keepalive: float, retry_ms: int
) -> AsyncIterator[bytes]:
    allowed: dict[tuple[str, str, str], bool] = {}
    allows = getattr(authz, "allows", None)

    def may_see(ev: Event) -> bool:
        key = (ev.project, ev.environment, ev.name)
        ok = allowed.get(key)
        if ok is None:
            scope = Scope(ev.project, ev.environment, ev.org)
            if allows is not None:
                ok = bool(allows(who, "list", scope, ev.name))
            else:
                try:
                    authz.authorize(who, "list", scope, ev.name)
                    ok = True
                except KeybrokerError:  # any refusal means no
                    ok = False
            if len(allowed) >= _MAX_AUTH_CACHE:
                allowed.clear()
            allowed[key] = ok
        return ok

    try:
        yield f"retry: {int(retry_ms)}\n: connected\n\n".encode()
        while True:
            try:
                ev = await sub.next_event(keepalive)
            except StopAsyncIteration:
                return
            except SubscriptionLagged:
                yield b'event: error\ndata: {"code":"subscription_lagged"}\n\n'
                return
            if ev is None:
                yield b": keep-alive\n\n"
            elif ev.org == sub.filter.org and may_see(ev):
                yield _frame(ev)
    finally:
        sub.close()
