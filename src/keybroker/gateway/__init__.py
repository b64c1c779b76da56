"""The key-injecting gateway: agents call providers with proxy tokens; the real key is added here.

Mount :class:`Gateway` under ``/gw`` in ``keybroker serve`` or run it alone (``keybroker gateway``).
"""

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
