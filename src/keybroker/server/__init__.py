"""keybroker server: REST API v1, Vault-compatible KV v2, health, metrics.

How routers are mounted (for whoever adds one, e.g. ``/v1/events``):

* ``create_app(settings | vault=..., routers=[...], extensions=[...])`` builds the app. Routers in
  ``routers`` are included after the REST API and **before** the Vault KV catch-all
  (``/v1/{mount}/{path}``), which would otherwise swallow them. ``extensions`` are callables
  ``(app, services)`` run last.
* The change stream is picked up automatically from ``keybroker.server._events``: if that module
  defines ``install(app: FastAPI, services: Services) -> None`` it is called (at the router slot,
  before the catch-all, so ``app.include_router`` works there); otherwise its ``router`` (an
  ``APIRouter``) is included. Reserve the first path segment you use in
  ``keybroker.server._vaultkv.RESERVED_MOUNTS`` (``events`` already is).
* In a route, ``kb: Kb`` (``Annotated[Services, Depends(services)]``) gives the core services
  (``kb.secrets``, ``kb.tokens``, ``kb.authorizer``, ``kb.vault``, ``kb.extras`` for your own
  state) and ``p: Caller`` the authenticated principal (401/403/429/503 handled). Both are in
  ``keybroker.server._auth``. ``app.state.on_shutdown`` is a list of callables run at shutdown.
* Errors: raise ``keybroker.errors`` classes; they become ``{"error": {...}}`` with the class's
  status (routes named ``vault_*`` get Vault's ``{"errors": [...]}`` instead).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keybroker.server._app import create_app
    from keybroker.server._settings import ServerSettings
    from keybroker.server._state import Services

__all__ = ["ServerSettings", "Services", "create_app"]

_LAZY = {
    "create_app": "keybroker.server._app",
    "ServerSettings": "keybroker.server._settings",
    "Services": "keybroker.server._state",
}


def __getattr__(name: str) -> Any:
    # lazy, so `keybroker --help` and other CLI commands do not import FastAPI
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keybroker.server' has no attribute {name!r}")
