"""Helpers for the server tests: the real app on uvicorn (h11, as ``keybroker serve`` runs it)
on a free port in a thread, over a vault on SQLite or PostgreSQL (the ``store_url`` fixture),
with a ManualClock shared by the test and the server so TTLs and lockouts need no sleeping."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from keybroker.core import ManualClock, RawRoot, Vault, local_principal
from keybroker.core._identity import IdentityService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.server import ServerSettings
from keybroker.store import Store

ROOT_KEY = bytes(range(32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, lifespan on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@dataclass
class Live:
    url: str
    root: str
    clock: ManualClock
    vault: Vault
    server: LiveServer

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def root_client(self) -> httpx.Client:
        return self.client(self.root)


def new_vault(url: str, clock: ManualClock) -> tuple[Vault, str]:
    """An initialised, unsealed vault and a root token for it."""
    vault = Vault(Store(url), clock)
    me = local_principal("test")
    vault.initialize(RawRoot(ROOT_KEY), me)
    authz = RbacAuthorizer()
    root = IdentityService(vault, TokenService(vault, authz), authz).bootstrap_root(me)
    return vault, root.token.reveal()


def server_settings(**overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {"token_rate": 0, "address_rate": 0, "events_poll_s": 0}
    base.update(overrides)
    return ServerSettings(**base)
