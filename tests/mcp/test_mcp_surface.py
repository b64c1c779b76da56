"""The public surface of keybroker.mcp is explicit, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import keybroker.mcp

EXPECTED = [
    "CLIENTS",
    "INSTRUCTIONS",
    "TOOLS",
    "AgentCredentials",
    "AgentLogin",
    "AgentServices",
    "KeybrokerMCP",
    "McpHttpApp",
    "McpSettings",
    "RevealNotAllowed",
    "TooManyPending",
    "UnknownTool",
    "client_config",
    "install",
    "load_credentials",
    "load_mcp_settings",
    "serve_stdio",
]


def test_public_surface_is_pinned() -> None:
    assert keybroker.mcp.__all__ == EXPECTED
    for name in EXPECTED:
        assert getattr(keybroker.mcp, name) is not None


def test_the_cli_hook_does_not_load_the_mcp_sdk() -> None:
    code = (
        "import sys, keybroker.mcp._cli\nprint(any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
