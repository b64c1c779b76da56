"""The SDK against the real server: ``create_app`` on uvicorn (h11, lifespan on, as ``keybroker
serve`` runs it) on a free port in a thread, over a vault on SQLite or PostgreSQL.

``replica(store_url)`` starts a server (initialising the vault on first use, with projects
``app`` and ``other`` in org ``default``) and returns it; its ``server`` can be stopped and
started again on the same port (outage tests). ``tokens``: ``all`` (the root token), ``dev``
(a child token limited to app/dev).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from keybroker.core import RawRoot, SecretService, Vault, local_principal
from keybroker.core._identity import IdentityService
from keybroker.core._rbac import RbacAuthorizer
from keybroker.core._tokens import TokenService
from keybroker.server import ServerSettings, create_app
from keybroker.store import Store

ROOT_KEY = bytes(range(1, 33))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; ``stop()`` and ``start()`` again on the
    same port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveServer:
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
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        self._server = self._thread = None


@dataclass
class Replica:
    vault: Vault
    secrets: SecretService
    server: LiveServer
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.stop()
        self.vault.store.dispose()


_TOKENS: dict[str, dict[str, str]] = {}


@pytest.fixture
def replica() -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(url: str) -> Replica:
        store = Store(url)
        vault = Vault(store)
        me = local_principal("test")
        fresh = not vault.is_initialized()
        if fresh:
            vault.initialize(RawRoot(ROOT_KEY), me)
            authz = RbacAuthorizer()
            root = IdentityService(vault, TokenService(vault, authz), authz).bootstrap_root(me)
            svc = SecretService(vault)
            for p in ("app", "other"):
                svc.create_project(me, p)
        else:
            vault.unseal(RawRoot(ROOT_KEY), me)
        settings = ServerSettings(token_rate=0, address_rate=0, events_poll_s=0, access_log=False)
        app = create_app(settings, vault=vault)
        r = Replica(vault, app.state.kb.secrets, LiveServer(app).start())
        if fresh:
            r.tokens["all"] = root.token.reveal()
            with httpx.Client(base_url=r.url, headers={"Authorization": f"Bearer {r.tokens['all']}"}) as c:
                resp = c.post(
                    "/v1/tokens",
                    json={"scope": {"projects": ["app"], "environments": ["dev"]}, "ttl_s": 3600},
                )
                assert resp.status_code == 201, resp.text
                r.tokens["dev"] = resp.json()["token"]
            _TOKENS[url] = dict(r.tokens)
        else:
            r.tokens.update(_TOKENS[url])
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(autouse=True)
def _no_keybroker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_"):
            monkeypatch.delenv(k)
