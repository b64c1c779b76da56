"""Secret references (${NAME}, ${project.env.NAME}), resolved at read time, and export."""

from __future__ import annotations

import pytest

from keybroker.core import Principal, Scope, SecretService
from keybroker.errors import PermissionDenied, ReferenceCycle, ReferenceMissing

S = Scope()


def read(secrets: SecretService, me, name: str, scope: Scope = S, **kw) -> str:  # type: ignore[no-untyped-def]
    return secrets.get(me, scope, name, **kw).value.reveal()


def test_same_scope_reference(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "HOST", "db.internal")
    secrets.put(me, S, "PASSWORD", "pw-1")
    secrets.put(me, S, "DSN", "postgres://app:${PASSWORD}@${HOST}:5432/app")
    r = secrets.get(me, S, "DSN")
    assert r.value.reveal() == "postgres://app:pw-1@db.internal:5432/app"
    assert set(r.references) == {"default/default/dev/PASSWORD", "default/default/dev/HOST"}
    assert r.version == 1
    # resolved at read time: a new PASSWORD shows up without touching DSN
    secrets.put(me, S, "PASSWORD", "pw-2")
    assert read(secrets, me, "DSN") == "postgres://app:pw-2@db.internal:5432/app"
    assert read(secrets, me, "DSN", resolve=False) == "postgres://app:${PASSWORD}@${HOST}:5432/app"
    assert secrets.get(me, S, "DSN", resolve=False).references == ()


def test_cross_project_reference(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.create_project(me, "shared", environments=["prod"])
    secrets.put(me, Scope("shared", "prod"), "STRIPE_KEY", "sk_live_x")
    secrets.put(me, Scope("shared", "prod"), "path/style", "p")
    secrets.put(me, S, "CONFIG", "stripe=${shared.prod.STRIPE_KEY};p=${ shared.prod.path/style }")
    r = secrets.get(me, S, "CONFIG")
    assert r.value.reveal() == "stripe=sk_live_x;p=p"
    assert "default/shared/prod/STRIPE_KEY" in r.references


def test_nested_references(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.create_project(me, "infra", environments=["prod"])
    secrets.put(me, Scope("infra", "prod"), "DOMAIN", "example.com")
    secrets.put(me, Scope("infra", "prod"), "HOST", "api.${DOMAIN}")  # relative to infra/prod
    secrets.put(me, S, "PORT", "443")
    secrets.put(me, S, "URL", "https://${infra.prod.HOST}:${PORT}/v1")
    secrets.put(me, S, "CLIENT", "url=${URL} again=${URL}")  # a diamond is not a cycle
    assert read(secrets, me, "URL") == "https://api.example.com:443/v1"
    assert (
        read(secrets, me, "CLIENT")
        == "url=https://api.example.com:443/v1 again=https://api.example.com:443/v1"
    )


def test_escape(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "X", "x")
    secrets.put(me, S, "LITERAL", "a$${X}b ${X} $$ $ {X} $x")
    assert read(secrets, me, "LITERAL") == "a${X}b x $$ $ {X} $x"
    assert read(secrets, me, "LITERAL", resolve=False) == "a$${X}b ${X} $$ $ {X} $x"
    secrets.put(me, S, "ONLY_ESCAPE", "$${NOT_A_SECRET}")
    assert read(secrets, me, "ONLY_ESCAPE") == "${NOT_A_SECRET}"


def test_cycles(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "A", "x${A}")
    with pytest.raises(ReferenceCycle) as info:
        secrets.get(me, S, "A")
    assert info.value.code == "reference_cycle" and info.value.status == 400
    assert read(secrets, me, "A", resolve=False) == "x${A}"
    secrets.put(me, S, "A", "a${B}")
    secrets.put(me, S, "B", "b${A}")
    for name in ("A", "B"):
        with pytest.raises(ReferenceCycle):
            secrets.get(me, S, name)
    secrets.create_project(me, "p2", environments=["dev"])
    secrets.put(me, S, "A", "${p2.dev.B}")
    secrets.put(me, Scope("p2", "dev"), "B", "${C}")
    secrets.put(me, Scope("p2", "dev"), "C", "${default.dev.A}")
    with pytest.raises(ReferenceCycle):
        secrets.get(me, S, "A")


def test_same_name_in_other_scope_is_not_a_cycle(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.create_project(me, "base", environments=["dev"])
    secrets.put(me, Scope("base", "dev"), "TOKEN", "base-token")
    secrets.put(me, S, "TOKEN", "wrapped(${base.dev.TOKEN})")
    assert read(secrets, me, "TOKEN") == "wrapped(base-token)"


def test_deep_chain_is_refused(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i in range(15):
        secrets.put(me, S, f"L{i}", f"${{L{i + 1}}}")
    secrets.put(me, S, "L15", "bottom")
    with pytest.raises(ReferenceCycle):  # deeper than the limit: refused, not a stack overflow
        secrets.get(me, S, "L0")
    assert read(secrets, me, "L8") == "bottom"


MALFORMED = [
    "${MISSING}",
    "${nope.dev.X}",  # project does not exist
    "${default.nowhere.X}",  # environment does not exist
    "${a.b}",  # neither form
    "${a.b.c.d}",
    "${}",
    "${../x}",
    "${default.dev.bad name}",
    "${Bad.dev.X}",
]


def test_missing_or_malformed_reference(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    for i, template in enumerate(MALFORMED):
        secrets.put(me, S, f"T{i}", f"prefix {template} suffix")
        with pytest.raises(ReferenceMissing) as info:
            secrets.get(me, S, f"T{i}")
        assert info.value.code == "reference_missing", template
        assert read(secrets, me, f"T{i}", resolve=False) == f"prefix {template} suffix"


def test_reference_to_deleted_or_destroyed(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "GONE", "g")
    secrets.put(me, S, "DESTROYED", "d")
    secrets.put(me, S, "USES_GONE", "${GONE}")
    secrets.put(me, S, "USES_DESTROYED", "${DESTROYED}")
    secrets.delete(me, S, "GONE")
    secrets.destroy(me, S, "DESTROYED", [1])
    with pytest.raises(ReferenceMissing):
        secrets.get(me, S, "USES_GONE")
    with pytest.raises(ReferenceMissing):
        secrets.get(me, S, "USES_DESTROYED")


def test_reference_uses_the_readers_permissions(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    class OnlyDefaultDev:
        def authorize(self, principal, action, scope, name):  # type: ignore[no-untyped-def]
            if principal.local or (scope is not None and scope.project == "default" and action == "read"):
                return
            raise PermissionDenied("no")

    secrets.create_project(me, "vault2", environments=["prod"])
    secrets.put(me, Scope("vault2", "prod"), "ROOT_TOKEN", "root")
    secrets.put(me, S, "SNEAKY", "${vault2.prod.ROOT_TOKEN}")
    secrets.put(me, S, "PLAIN", "plain")
    agent = Principal(id="bot", kind="agent")
    limited = SecretService(secrets.vault, authorizer=OnlyDefaultDev())
    assert limited.get(agent, S, "PLAIN").value.reveal() == "plain"
    with pytest.raises(PermissionDenied):
        limited.get(agent, S, "SNEAKY")
    assert read(secrets, me, "SNEAKY") == "root"


# ---------------------------------------------------------------- export
def test_export(secrets: SecretService, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, S, "A", "a")
    secrets.put(me, S, "B", "b-${A}")
    secrets.put(me, S, "DELETED", "d")
    secrets.delete(me, S, "DELETED")
    secrets.put(me, S, "ROTATING", "old")
    secrets.rotate(me, S, "ROTATING", "new")
    secrets.put(me, S, "DESTROYED", "x")
    secrets.destroy(me, S, "DESTROYED", [1])
    secrets.keypair_generate(me, S, "agent/identity")
    secrets.put(me, Scope("default", "prod"), "PROD_ONLY", "p")
    out = secrets.export(me, S)
    assert {k: v.reveal() for k, v in out.items()} == {"A": "a", "B": "b-a", "ROTATING": "old"}
    assert "b-a" not in repr(out)
    exports = [e for e in secrets.audit.iter_entries() if e.action == "secret.export" and e.result == "ok"]
    assert sorted(e.target for e in exports) == [f"default/default/dev/{n}" for n in ("A", "B", "ROTATING")]
    assert secrets.export(me, Scope("default", "staging")) == {}
