"""The ASGI app: ``create_app(settings)`` for ``keybroker serve``, ``create_app(vault=...)`` in
tests. Routers: REST v1 (:mod:`._rest`, :mod:`._admin`), Vault compatibility (:mod:`._vaultkv`,
mounted last because its ``/v1/{mount}/...`` route catches everything else), ``/metrics``,
``/openapi.json``, and any extra routers (see :mod:`keybroker.server`)."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import keybroker
from keybroker.core import Clock, Vault, local_principal
from keybroker.server import _admin, _rest, _vaultkv
from keybroker.server._errors import ERROR_RESPONSES, install_error_handlers
from keybroker.server._metrics import RequestContextMiddleware
from keybroker.server._settings import ServerSettings
from keybroker.server._state import Services
from keybroker.store import Store

__all__ = ["create_app"]

log = logging.getLogger("keybroker.server")


def _build_vault(settings: ServerSettings, clock: Clock | None) -> Vault:
    store = Store(settings.database_url())
    auto = settings.auto_seal_minutes * 60 if settings.auto_seal_minutes else None
    return Vault(store, clock, auto_seal_after=auto)


def create_app(
    settings: ServerSettings | None = None,
    *,
    vault: Vault | None = None,
    clock: Clock | None = None,
    routers: Iterable[APIRouter] = (),
    extensions: Iterable[Callable[[FastAPI, Services], None]] = (),
    owns_vault: bool | None = None,
) -> FastAPI:
    """Build the app over ``vault`` (or a vault on ``settings``' store). The app neither
    initialises nor unseals anything: ``keybroker serve`` does that before it starts, a test
    hands in a ready vault. ``routers`` are included before the Vault catch-all; each of
    ``extensions`` is called with ``(app, services)`` once everything is built. An app that
    owns its vault (default: when it built it) seals it and closes the store at shutdown."""
    settings = settings or ServerSettings()
    owns = vault is None if owns_vault is None else owns_vault
    if vault is None:
        vault = _build_vault(settings, clock)
    kb = Services.build(vault, settings, owns_store=owns)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = settings.worker_threads or 8
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        for fn in app.state.on_startup:
            fn()
        yield
        # graceful shutdown: uvicorn has drained the requests; wipe keys, close the pool
        for fn in app.state.on_shutdown:
            with contextlib.suppress(Exception):
                fn()
        if kb.owns_store:
            with contextlib.suppress(Exception):
                if not kb.vault.sealed:
                    kb.vault.seal(local_principal("serve"))
            kb.vault.store.dispose()

    app = FastAPI(
        title="keybroker",
        version=keybroker.__version__,
        description=(
            "Secret and API-key manager for AI agents. REST API v1 (docs/http-api.md) and a "
            "Vault-compatible KV v2 API (docs/kv-compat.md, not described here)."
        ),
        lifespan=lifespan,
        strict_content_type=False,
        redirect_slashes=False,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.kb = kb
    app.state.on_startup = []
    app.state.on_shutdown = []
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=kb.metrics)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        return Response(generate_latest(kb.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_admin.sys_router)
    app.include_router(_rest.router)
    app.include_router(_admin.router)
    for r in routers:
        app.include_router(r)
    _mount_events(app, kb)
    app.include_router(_vaultkv.router)
    for ext in extensions:
        ext(app, kb)
    _fix_openapi(app)
    return app


def _fix_openapi(app: FastAPI) -> None:
    """Validation errors are 400 with keybroker's error body here, not FastAPI's 422."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = original()
        for item in spec.get("paths", {}).values():
            for op in item.values():
                responses = op.get("responses") if isinstance(op, dict) else None
                if not responses or "422" not in responses:
                    continue
                del responses["422"]
                responses.setdefault("400", ERROR_RESPONSES[400])
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _mount_events(app: FastAPI, kb: Services) -> None:
    """The change stream lives in ``keybroker.server._events`` (owned by the SDK work). If that
    module defines ``install(app, services)`` it is called; else if it defines
    ``events_router(principal=, bus=, authorizer=)`` an EventBus is attached to the secret
    service (started and closed with the app) and the router included; else its ``router``."""
    try:
        mod: Any = importlib.import_module("keybroker.server._events")
    except ModuleNotFoundError as exc:
        if exc.name != "keybroker.server._events":
            raise
        return
    install = getattr(mod, "install", None)
    factory = getattr(mod, "events_router", None)
    if callable(install):
        install(app, kb)
    elif callable(factory):
        from keybroker.core import EventBus
        from keybroker.server._auth import principal

        bus = EventBus(kb.vault.store, poll_interval=kb.settings.events_poll_s or None)
        bus.attach(kb.secrets)
        kb.extras["events_bus"] = bus
        app.state.on_startup.append(bus.start)
        app.state.on_shutdown.append(bus.close)
        app.include_router(
            factory(principal=principal, bus=lambda _r: bus, authorizer=lambda _r: kb.authorizer)
        )
    elif getattr(mod, "router", None) is not None:
        app.include_router(mod.router)
