"""Fixtures for the server tests (helpers in ``kb_live``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kb_live import Live, LiveServer, new_vault, server_settings

from keybroker.core import ManualClock
from keybroker.server import create_app


@pytest.fixture
def make_live(store_url: str) -> Iterator[Callable[..., Live]]:
    made: list[Live] = []

    def make(**settings: Any) -> Live:
        clock = ManualClock()
        vault, root = new_vault(store_url, clock)
        app = create_app(server_settings(**settings), vault=vault, clock=clock)
        live = Live("", root, clock, vault, LiveServer(app).start())
        live.url = live.server.url
        made.append(live)
        return live

    yield make
    for live in made:
        live.server.stop()
        live.vault.store.dispose()


@pytest.fixture
def live(make_live: Callable[..., Live]) -> Live:
    return make_live()


@pytest.fixture(autouse=True)
def _no_keybroker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("KEYBROKER_") or k in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
            monkeypatch.delenv(k)
