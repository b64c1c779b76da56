"""Fixtures for agent access (tools, requests, sessions, proxy tokens) and the gateway."""

from __future__ import annotations

import pytest
from gwkit import Access, make_access

from keybroker.core import ManualClock, Vault


@pytest.fixture
def access(vault: Vault, clock: ManualClock) -> Access:
    return make_access(vault, clock)
