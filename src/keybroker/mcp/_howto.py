"""A short how-to per provider: how to point its official SDK at the gateway with a proxy token."""

from __future__ import annotations

from typing import Any

from keybroker.core._providers import PROVIDERS

__all__ = ["env_for", "how_to"]

_ENV_KEY = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "stripe": "STRIPE_API_KEY",
}


def env_for(route: str, base_url: str, token: str) -> dict[str, str]:
    """Environment variables the provider's SDK reads, where it has them."""
    out: dict[str, str] = {}
    p = PROVIDERS.get(route)
    if p is not None and p.env_base_url:
        out[p.env_base_url] = base_url
    if route in _ENV_KEY:
        out[_ENV_KEY[route]] = token
    return out


def how_to(route: str, base_url: str, token: str, hosts: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``{"sdk", "python", "notes"}`` for the route (the provider's name)."""
    notes = (
        f"Use the proxy token exactly where the real API key would go. It works only through this "
        f"gateway, only toward {', '.join(hosts) or 'the upstream of the secret'}, and only while the "
        "session lasts; when it expires, call get_proxy_credentials again."
    )
    if route == "openai":
        py = (
            "from openai import OpenAI\n"
            f'client = OpenAI(base_url="{base_url}", api_key="{token}")\n'
            'client.chat.completions.create(model="...", messages=[{"role": "user", "content": "hi"}])'
        )
        return {"sdk": "openai (official Python/JS SDK)", "python": py, "notes": notes}
    if route == "anthropic":
        py = (
            "from anthropic import Anthropic\n"
            f'client = Anthropic(base_url="{base_url}", api_key="{token}")\n'
            'client.messages.create(model="...", max_tokens=256,\n'
            '                       messages=[{"role": "user", "content": "hi"}])'
        )
        return {"sdk": "anthropic (official Python/JS SDK)", "python": py, "notes": notes}
    if route == "gemini":
        py = (
            "from google import genai\n"
            f'client = genai.Client(api_key="{token}", http_options={{"base_url": "{base_url}"}})\n'
            'client.models.generate_content(model="...", contents="hi")'
        )
        return {"sdk": "google-genai", "python": py, "notes": notes}
    if route == "stripe":
        py = (
            "import stripe\n"
            f'client = stripe.StripeClient("{token}", base_addresses={{"api": "{base_url}"}})\n'
            "client.customers.list()"
        )
        return {"sdk": "stripe", "python": py, "notes": notes}
    py = (
        "import httpx\n"
        f'r = httpx.get("{base_url}/<path on the upstream>", headers={{"Authorization": "Bearer {token}"}})'
    )
    return {
        "sdk": "any HTTP client",
        "python": py,
        "notes": notes
        + " Send the proxy token as a Bearer token (or in x-api-key); the gateway puts the real key "
        "where the upstream expects it.",
    }
