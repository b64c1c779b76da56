"""MCP fixtures (helpers live in ``mcp_support``): a vault on ``store_url`` with an agent, its
tool and secrets of each risk (``world``), and a blocking handle on an in-process MCP session
(``client``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import pytest
from mcp_support import Client, World, connect, make_world


@pytest.fixture
def world(store_url: str) -> Iterator[World]:
    w = make_world(store_url)
    yield w
    w.services.close()
    w.vault.store.dispose()


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    w = make_world(f"sqlite:///{tmp_path / 'vault.db'}")
    yield w
    w.services.close()
    w.vault.store.dispose()


@pytest.fixture
def client(world: World) -> Iterator[Client]:
    """A blocking handle on one MCP session (the official ClientSession, run in a portal thread)."""
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(connect(world.mcp())) as session:
            yield Client(portal, session)
