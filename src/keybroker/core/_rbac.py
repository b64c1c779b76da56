"""Role-based access control for the server: the ONE place that decides who may do what.

A request's :class:`AuthPrincipal` carries a :class:`Grant`: the organization and identity the
token belongs to, the token's own :class:`TokenScope` (an upper bound the token holder chose when
minting it), the identity's roles (per organization ``"*"`` or per project), and whether it is
the system operator (``sys``, the bootstrap root). A decision is allowed only if **both** the
token scope and a role allow it (deny by default: an empty list in a scope means nothing).

Roles::

    owner   read use list write admin   (and may grant ``owner``)
    admin   read use list write admin
    member  read use list write
    viewer  read use list
    use          use list               (inject / proxy a secret, never read its value)

``read`` implies ``use`` (whoever may see a value may inject it), nothing else implies anything.
Organizations are walls: a principal of org A is denied everything in org B (only the ``sys``
operator crosses them, as Vault's root token does).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keybroker.core._access import ACTIONS
from keybroker.core._models import Scope
from keybroker.core._principal import Principal
from keybroker.errors import InvalidInput, PermissionDenied

__all__ = [
    "ROLES",
    "ROLE_ACTIONS",
    "AuthPrincipal",
    "Grant",
    "RbacAuthorizer",
    "TokenScope",
    "org_scope",
    "scope_widening",
]

ROLE_ACTIONS: Mapping[str, frozenset[str]] = {
    "owner": frozenset({"read", "use", "list", "write", "admin"}),
    "admin": frozenset({"read", "use", "list", "write", "admin"}),
    "member": frozenset({"read", "use", "list", "write"}),
    "viewer": frozenset({"read", "use", "list"}),
    "use": frozenset({"use", "list"}),
}
ROLES = tuple(ROLE_ACTIONS)

_SCOPE_PATTERN = re.compile(r"[a-z0-9_*?-]{1,64}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_/*?.-]{1,256}")
_GLOB_CHARS = ("*", "?")


def org_scope(org: str) -> Scope:
    """The scope of an organization-wide operation (identities, roles, audit, projects)."""
    return Scope("*", "*", org)


def _has_glob(p: str) -> bool:
    return any(c in p for c in _GLOB_CHARS)


def _match(value: str, patterns: Iterable[str]) -> bool:
    """``value`` ``"*"`` asks for *everything*, which only the pattern ``"*"`` grants."""
    if value == "*":
        return "*" in patterns
    return any(p == "*" or p == value or (_has_glob(p) and fnmatch.fnmatchcase(value, p)) for p in patterns)


def _pattern_within(child: str, parent: str) -> bool:
    """Whether every string ``child`` matches is matched by ``parent`` (conservative: may say
    no to a real subset, never yes to a wider one)."""
    if parent == "*" or child == parent:
        return True
    if not _has_glob(child):
        return _has_glob(parent) and fnmatch.fnmatchcase(child, parent)
    if parent.endswith("*") and not _has_glob(parent[:-1]):
        return child.startswith(parent[:-1])
    return False


def _action_ok(actions: Iterable[str], action: str) -> bool:
    acts = set(actions)
    return action in acts or (action == "use" and "read" in acts)


@dataclass(frozen=True, slots=True)
class TokenScope:
    """What a token may touch, within its organization. Lists hold glob patterns (``*``, ``?``);
    an empty list allows nothing."""

    projects: tuple[str, ...] = ("*",)
    environments: tuple[str, ...] = ("*",)
    names: tuple[str, ...] = ("*",)
    actions: tuple[str, ...] = ACTIONS
    sys: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, base: TokenScope | None = None) -> TokenScope:
        """Parse and validate; fields left out are taken from ``base`` (or the defaults).
        Raises InvalidInput naming the bad field."""
        b = base or cls()
        if d is None:
            return b
        if not isinstance(d, Mapping):
            raise InvalidInput("scope must be an object")
        unknown = set(d) - {"projects", "environments", "names", "actions", "sys", "org"}
        if unknown:
            raise InvalidInput(f"unknown scope field(s): {', '.join(sorted(unknown))}")

        def patterns(key: str, rx: re.Pattern[str], default: tuple[str, ...]) -> tuple[str, ...]:
            v = d.get(key)
            if v is None:
                return default
            if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                raise InvalidInput(f"scope.{key} must be a list of strings")
            for x in v:
                if not rx.fullmatch(x):
                    raise InvalidInput(f"scope.{key}: invalid pattern {x[:40]!r}")
            return tuple(dict.fromkeys(v))

        actions = patterns("actions", re.compile(r"[a-z]{1,16}"), b.actions)
        bad = [a for a in actions if a not in ACTIONS]
        if bad:
            raise InvalidInput(f"scope.actions: unknown action(s) {', '.join(bad)}; use {', '.join(ACTIONS)}")
        sys = d.get("sys", b.sys)
        if not isinstance(sys, bool):
            raise InvalidInput("scope.sys must be true or false")
        return cls(
            patterns("projects", _SCOPE_PATTERN, b.projects),
            patterns("environments", _SCOPE_PATTERN, b.environments),
            patterns("names", _NAME_PATTERN, b.names),
            actions,
            sys,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "projects": list(self.projects),
            "environments": list(self.environments),
            "names": list(self.names),
            "actions": list(self.actions),
            "sys": self.sys,
        }


def scope_widening(child: TokenScope, parent: TokenScope) -> str | None:
    """The first field in which ``child`` asks for more than ``parent`` has, or None."""
    for key in ("projects", "environments", "names"):
        c, p = getattr(child, key), getattr(parent, key)
        for pat in c:
            if not any(_pattern_within(pat, q) for q in p):
                return f"scope.{key} ({pat!r} is not within the parent token's scope)"
    for a in child.actions:
        if not _action_ok(parent.actions, a):
            return f"scope.actions ({a!r} is not granted to the parent token)"
    if child.sys and not parent.sys:
        return "scope.sys (the parent token is not a system token)"
    return None


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticated token carries into every decision."""

    org: str
    identity_id: str
    token_id: str
    scope: TokenScope
    roles: tuple[tuple[str, str], ...] = ()
    sys: bool = False

    def role_actions(self, project: str) -> frozenset[str]:
        out: set[str] = set()
        for proj, role in self.roles:
            if proj == "*" or (project != "*" and proj == project):
                out |= ROLE_ACTIONS.get(role, frozenset())
        return frozenset(out)

    def roles_dict(self) -> dict[str, str]:
        return dict(self.roles)


@dataclass(frozen=True, slots=True)
class AuthPrincipal(Principal):
    """A principal authenticated by a token. ``grant`` holds everything a decision needs."""

    grant: Grant | None = field(default=None)


def _grant(principal: Principal) -> Grant | None:
    return principal.grant if isinstance(principal, AuthPrincipal) else None


class RbacAuthorizer:
    """:class:`keybroker.core.Authorizer` for the server. Every rule is in :meth:`allows`;
    :meth:`authorize` only turns a no into :class:`PermissionDenied`."""

    def allows(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> bool:
        if principal.local:
            return True
        g = _grant(principal)
        if g is None or action not in ACTIONS:
            return False
        if not _action_ok(g.scope.actions, action):
            return False
        org = scope.org if scope is not None else g.org
        if org == "*":
            return g.sys and g.scope.sys
        if org != g.org and not (g.sys and g.scope.sys):
            return False
        project = scope.project if scope is not None else "*"
        env = scope.environment if scope is not None else "*"
        if not _match(project, g.scope.projects) or not _match(env, g.scope.environments):
            return False
        if name is None:
            # a scope-wide operation; a token limited to some names may only list there
            if "*" not in g.scope.names and action != "list":
                return False
        elif not _match(name, g.scope.names):
            return False
        if g.sys and g.scope.sys:
            return True
        return action in g.role_actions(project)

    def authorize(self, principal: Principal, action: str, scope: Scope | None, name: str | None) -> None:
        if not self.allows(principal, action, scope, name):
            where = scope.path(name) if scope is not None else "this organization"
            raise PermissionDenied(f"{principal.label} may not {action} {where}")

    def can_see_project(self, principal: Principal, org: str, project: str) -> bool:
        """Whether a project's name may be shown to the principal (any role on it)."""
        if principal.local:
            return True
        g = _grant(principal)
        if g is None:
            return False
        if g.sys and g.scope.sys:
            return True
        return org == g.org and _match(project, g.scope.projects) and bool(g.role_actions(project))

    def can_grant(self, principal: Principal, org: str, role: str, project: str) -> bool:
        """Granting needs ``admin`` where the role applies; granting ``owner`` needs ``owner``."""
        target = org_scope(org) if project == "*" else Scope(project, "*", org)
        if not self.allows(principal, "admin", target, None):
            return False
        if role != "owner" or principal.local:
            return True
        g = _grant(principal)
        if g is None:
            return False
        if g.sys and g.scope.sys:
            return True
        return any(r == "owner" and (p == "*" or p == project) for p, r in g.roles)

    def is_sys(self, principal: Principal) -> bool:
        g = _grant(principal)
        return principal.local or (g is not None and g.sys and g.scope.sys)
