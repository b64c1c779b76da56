"""The key-injecting gateway: agents call providers with proxy tokens; the real key is added here.

Mount :class:`Gateway` under ``/gw`` in ``keybroker serve`` or run it alone (``keybroker gateway``).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keybroker.gateway._app import Gateway, GatewayConfig
    from keybroker.gateway._errors import error_body, error_response, sse_error_event
    from keybroker.gateway._masking import MASK, LineMasker
    from keybroker.gateway._usage import UsageScanner, UseRecorder, usage_from_json

__all__ = [
    "MASK",
    "Gateway",
    "GatewayConfig",
    "LineMasker",
    "UsageScanner",
    "UseRecorder",
    "error_body",
    "error_response",
    "sse_error_event",
    "usage_from_json",
]


_LAZY = {
    "Gateway": "keybroker.gateway._app",
    "GatewayConfig": "keybroker.gateway._app",
    "error_body": "keybroker.gateway._errors",
    "error_response": "keybroker.gateway._errors",
    "sse_error_event": "keybroker.gateway._errors",
    "MASK": "keybroker.gateway._masking",
    "LineMasker": "keybroker.gateway._masking",
    "UsageScanner": "keybroker.gateway._usage",
    "UseRecorder": "keybroker.gateway._usage",
    "usage_from_json": "keybroker.gateway._usage",
}


def __getattr__(name: str) -> Any:
    # lazy, so the CLI does not import Starlette and httpx's async stack at start-up
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keybroker.gateway' has no attribute {name!r}")
