"""Where a secret may be sent: the provider catalog and per-secret upstream configuration.

A proxy token is bound at issue time to the host(s) its secret belongs to, and the gateway puts
the real key only where that upstream expects it. Both read the same answer from here, so a key
for one provider is never sent to another.

Built-in providers (``SecretMeta.provider``)::

    openai     https://api.openai.com                      Authorization: Bearer <key>
    anthropic  https://api.anthropic.com                   x-api-key: <key>
    gemini     https://generativelanguage.googleapis.com   x-goog-api-key: <key>
    stripe     https://api.stripe.com                      Authorization: Bearer <key>
    generic    (needs gateway.base_url)                    Authorization: Bearer <key>

Per-secret configuration lives in the secret's custom metadata:

``gateway.base_url``
    overrides the provider's base URL (an origin plus an optional path prefix). ``http://`` is
    accepted only for loopback hosts unless ``gateway.allow_http`` is ``true``.
``gateway.auth``
    an auth template: ``bearer``; ``header:<Name>`` or ``header:<Name>:<value with {key}>``;
    ``query:<param>``; ``basic`` (key as user name, empty password, as Stripe does) or
    ``basic:<user>`` (key as password).
``gateway.pool``
    ``lines``: the value holds several keys, one per line; the gateway spreads load across them
    and fails over when one is rate-limited or refused.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from keybroker.core._models import SecretMeta
from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput

__all__ = [
    "PROVIDERS",
    "AuthTemplate",
    "Provider",
    "Upstream",
    "netloc_of",
    "upstream_for",
]

_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class AuthTemplate:
    """Where the real key goes on the upstream request."""

    kind: str  # bearer | header | query | basic
    name: str = ""  # header or query parameter name; basic: the user name ("" = key is the user)
    template: str = "{key}"  # header value

    @classmethod
    def parse(cls, text: str) -> AuthTemplate:
        """Raises InvalidInput for an unknown or malformed template."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.lower()
        if kind == "bearer" and not rest:
            return cls("header", "Authorization", "Bearer {key}")
        if kind == "header":
            name, _, tmpl = rest.partition(":")
            tmpl = tmpl.strip() or "{key}"
            if not _HEADER_NAME.fullmatch(name) or tmpl.count("{key}") != 1:
                raise InvalidInput(
                    "gateway.auth header template: header:<Name> or header:<Name>:<value with {key} once>"
                )
            return cls("header", name, tmpl)
        if kind == "query":
            if not _PARAM_NAME.fullmatch(rest):
                raise InvalidInput("gateway.auth query template: query:<parameter name>")
            return cls("query", rest)
        if kind == "basic":
            if ":" in rest:
                raise InvalidInput("gateway.auth basic template: basic or basic:<user name>")
            return cls("basic", rest)
        raise InvalidInput(
            "gateway.auth must be bearer, header:<Name>[:<template>], query:<param> or basic[:<user>]"
        )

    def header(self, key: str) -> tuple[str, str] | None:
        """The header to add for ``key`` (None for query-parameter auth)."""
        if self.kind == "header":
            return self.name, self.template.replace("{key}", key)
        if self.kind == "basic":
            pair = f"{key}:" if not self.name else f"{self.name}:{key}"
            return "Authorization", "Basic " + base64.b64encode(pair.encode()).decode()
        return None

    def wire_forms(self, key: str) -> list[bytes]:
        """Every form the key takes on the wire, so an upstream echo of any of them is redacted."""
        forms = [key.encode()]
        h = self.header(key)
        if h is not None and h[1] != key:
            forms.append(h[1].encode())
            if self.kind == "basic":
                forms.append(h[1].split(" ", 1)[1].encode())
        return forms

    def describe(self) -> str:
        if self.kind == "header":
            return f"header {self.name}"
        if self.kind == "query":
            return f"query parameter {self.name}"
        return "basic auth"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str
    auth: AuthTemplate
    error_style: str  # openai | anthropic | google
    usage: str  # how the response reports usage: openai | anthropic | google | none
    env_base_url: str | None = None  # the SDK's environment variable for its base URL
    sdk_suffix: str = ""  # appended to the gateway route for the SDK's base URL ("/v1" for OpenAI)


_BEARER = AuthTemplate("header", "Authorization", "Bearer {key}")

PROVIDERS: dict[str, Provider] = {
    "openai": Provider(
        "openai", "https://api.openai.com", _BEARER, "openai", "openai", "OPENAI_BASE_URL", "/v1"
    ),
    "anthropic": Provider(
        "anthropic",
        "https://api.anthropic.com",
        AuthTemplate("header", "x-api-key"),
        "anthropic",
        "anthropic",
        "ANTHROPIC_BASE_URL",
    ),
    "gemini": Provider(
        "gemini",
        "https://generativelanguage.googleapis.com",
        AuthTemplate("header", "x-goog-api-key"),
        "google",
        "google",
    ),
    "stripe": Provider("stripe", "https://api.stripe.com", _BEARER, "openai", "none"),
    "generic": Provider("generic", "", _BEARER, "openai", "openai"),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def netloc_of(scheme: str, host: str, port: int | None) -> str:
    """``host`` or ``host:port`` (default ports left out), lower case; IPv6 in brackets."""
    host = host.lower()
    shown = f"[{host}]" if ":" in host else host
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return shown
    return f"{shown}:{port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Everything the gateway needs to call a secret's upstream (no key in here)."""

    provider: Provider
    scheme: str
    host: str
    port: int | None
    path_prefix: str
    auth: AuthTemplate
    pool: bool

    @property
    def netloc(self) -> str:
        return netloc_of(self.scheme, self.host, self.port)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.netloc,)

    @property
    def route(self) -> str:
        return self.provider.name

    def keys(self, value: SecretValue) -> list[str]:
        """The provider key(s) in a secret's value: one, or one per line for a pool."""
        text = value.reveal()
        if not self.pool:
            return [text.strip()]
        keys = [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise InvalidInput("the key pool is empty")
        return keys


def upstream_for(meta: SecretMeta) -> Upstream:
    """The upstream a secret belongs to. Raises InvalidInput when it has none or it is malformed."""
    cm = meta.custom_metadata or {}
    provider = PROVIDERS.get(meta.provider) or PROVIDERS["generic"]
    base = cm.get("gateway.base_url") or provider.base_url
    if not base:
        raise InvalidInput(
            f"secret {meta.name!r} has no upstream: give it a known provider "
            f"({', '.join(p for p in PROVIDERS if p != 'generic')}) or custom metadata gateway.base_url"
        )
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidInput("gateway.base_url must be an http(s) URL without query or fragment")
    if parts.username or parts.password:
        raise InvalidInput("gateway.base_url must not hold credentials")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("gateway.base_url has a bad port") from exc
    host = parts.hostname.lower()
    if (
        parts.scheme == "http"
        and not _is_loopback(host)
        and cm.get("gateway.allow_http", "").lower() != "true"
    ):
        raise InvalidInput(
            "gateway.base_url uses plain http toward a non-loopback host; use https "
            "(or set gateway.allow_http=true if you really mean it)"
        )
    auth = AuthTemplate.parse(cm["gateway.auth"]) if cm.get("gateway.auth") else provider.auth
    pool_mode = cm.get("gateway.pool", "").lower()
    if pool_mode not in ("", "lines", "false", "none"):
        raise InvalidInput("gateway.pool must be 'lines' (one key per line) or absent")
    return Upstream(
        provider=provider,
        scheme=parts.scheme,
        host=host,
        port=port,
        path_prefix=parts.path.rstrip("/"),
        auth=auth,
        pool=pool_mode == "lines",
    )
