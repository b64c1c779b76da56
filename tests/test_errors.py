"""The one error tree: stable, unique codes that the SDK can rebuild from the wire."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import keybroker
from keybroker import errors
from keybroker.errors import KeybrokerError, from_code

# Front-end-local errors that never cross the HTTP API (MCP tool errors only).
_LOCAL_OK = {"keybroker.mcp._tools", "keybroker.mcp._server"}


def _all_error_classes() -> list[type[KeybrokerError]]:
    for mod in pkgutil.walk_packages(keybroker.__path__, "keybroker."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
    seen: list[type[KeybrokerError]] = []
    stack: list[type[KeybrokerError]] = [KeybrokerError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


def test_every_code_is_unique_and_rebuilds_its_class() -> None:
    classes = _all_error_classes()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "two error classes share a code"
    for cls in classes:
        err = from_code(cls.code, "m", x=1)
        assert type(err) is cls
        assert err.to_dict() == {"code": cls.code, "message": "m", "details": {"x": 1}}
        assert 400 <= cls.status < 600 or cls is KeybrokerError


def test_wire_errors_live_in_keybroker_errors() -> None:
    for cls in _all_error_classes():
        if cls.__module__ in _LOCAL_OK:
            continue
        assert cls.__module__ == "keybroker.errors", f"{cls.__name__} belongs in keybroker/errors.py"
        assert cls.__name__ in errors.__all__


def test_from_code_needs_nothing_but_keybroker_errors() -> None:
    # the SDK rebuilds server errors without importing core, server or gateway modules
    code = (
        "import sys; from keybroker.errors import from_code;"
        "assert type(from_code('proxy_token_revoked')).__name__ == 'ProxyTokenRevoked';"
        "assert type(from_code('rate_limited')).__name__ == 'RateLimited';"
        "assert not any(m.startswith(('keybroker.core', 'keybroker.server')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
