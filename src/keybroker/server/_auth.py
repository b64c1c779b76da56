"""Who is calling: the token from ``Authorization: Bearer`` or ``X-Vault-Token``, checked by the
core token service (format and checksum, hash lookup, expiry, revocation, uses, CIDRs, rate
limits). Routes take ``Principal = Depends(principal)``; nothing else reads credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from keybroker.core._rbac import AuthPrincipal
from keybroker.errors import AuthenticationError, VaultSealed
from keybroker.server._state import Services, services

__all__ = ["Caller", "Kb", "client_address", "principal", "request_id"]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def request_id(request: Request) -> str | None:
    rid = request.scope.get("state", {}).get("request_id")
    return str(rid) if rid else None


def presented_token(request: Request) -> str | None:
    tok = request.headers.get("x-vault-token")
    if tok:
        return tok.strip()
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def require_unsealed(kb: Services) -> None:
    if kb.vault.sealed:
        raise VaultSealed("the vault is sealed: unseal it with POST /v1/sys/unseal")


def principal(request: Request, kb: Annotated[Services, Depends(services)]) -> AuthPrincipal:
    require_unsealed(kb)
    token = presented_token(request)
    addr = client_address(request)
    if not token:
        kb.tokens.check_address(addr)
        raise AuthenticationError("no token: send Authorization: Bearer kbt_... (or X-Vault-Token: kbt_...)")
    return kb.tokens.authenticate(
        token, address=addr, client=f"http:{addr or '-'}", request_id=request_id(request)
    )


Kb = Annotated[Services, Depends(services)]
Caller = Annotated[AuthPrincipal, Depends(principal)]
