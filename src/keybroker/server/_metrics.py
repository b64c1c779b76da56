"""Prometheus metrics and the per-request context (request id, timing), as one pure ASGI
middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "RequestContextMiddleware"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "LIST", "OPTIONS"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Metrics:
    """One registry per app, so several apps (tests, replicas in one process) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "keybroker_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keybroker_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.sealed = Gauge("keybroker_sealed", "1 while the vault is sealed", registry=self.registry)
        self.in_flight = Gauge("keybroker_http_in_flight", "requests being served", registry=self.registry)


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-Id``, taken from the request if well-formed),
    returns it in the response, and counts and times the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                cand = v.decode("latin-1")
                rid = cand if _REQUEST_ID.fullmatch(cand) else ""
                break
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "OTHER"
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            m.requests.labels(method, route, str(status)).inc()
            m.latency.labels(method, route).observe(time.perf_counter() - start)
