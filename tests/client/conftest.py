"""Real HTTP for the SDK and stream tests: uvicorn on a free port, over the core services.

``replica(store_url)`` starts one keybroker replica (its own Store, Vault, SecretService and
EventBus on a shared database) and returns it; several on one PostgreSQL database are
replicas of one deployment.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from stubserver import TOKENS, build_app

from keybroker.core import EventBus, PassphraseRoot, SecretService, Vault, local_principal
from keybroker.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; ``stop()`` / ``start()`` again on the same
    port (for outage tests)."""

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
            lifespan="off",
            timeout_graceful_shutdown=1,
            ws="none",
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None


@dataclass
class Replica:
    store: Store
    vault: Vault
    secrets: SecretService
    bus: EventBus
    server: LiveServer
    extra: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.stop()
        self.bus.close()
        self.store.dispose()


@pytest.fixture
def replica(fast_passphrase: PassphraseRoot) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(url: str, *, poll_interval: float | None = None, keepalive: float = 0.5) -> Replica:
        store = Store(url)
        vault = Vault(store)
        me = local_principal("test")
        if not vault.is_initialized():
            vault.initialize(fast_passphrase, me)
            svc = SecretService(vault)
            svc.create_project(me, "app")
            svc.create_project(me, "other")
            svc.create_project(me, "app", org="acme")
        else:
            vault.unseal(fast_passphrase, me)
        secrets = SecretService(vault)
        bus = EventBus(store, poll_interval=poll_interval)
        bus.attach(secrets)
        bus.start()
        if store.dialect == "postgresql":
            assert bus.listening.wait(5)
        server = LiveServer(build_app(secrets, bus, keepalive=keepalive)).start()
        r = Replica(store, vault, secrets, bus, server)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def tokens() -> dict[str, str]:
    return dict(TOKENS)


@pytest.fixture(autouse=True)
def _no_keybroker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_"):
            monkeypatch.delenv(k)
