"""``project``, ``env``, ``keypair`` and ``audit`` command groups."""

import collections
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keybroker.cli._cmd_secret import check_name
from keybroker.cli._io import out_console, parse_since, print_json, read_value, text, write_stdout
from keybroker.cli._opts import EnvOpt, OutputOpt, PassphraseFileOpt, ProjectOpt, StdinOpt
from keybroker.cli._session import write_private
from keybroker.cli._state import get_state
from keybroker.core import DEFAULT_ENVIRONMENTS, AuditEntry
from keybroker.crypto import KEYPAIR_ALGORITHMS
from keybroker.errors import InvalidInput

__all__ = ["audit_app", "env_app", "keypair_app", "project_app"]

project_app = typer.Typer(
    help="Projects (each has environments such as dev, staging, prod).", no_args_is_help=True
)
env_app = typer.Typer(help="Environments of a project.", no_args_is_help=True)
keypair_app = typer.Typer(
    help="Key pairs for agent identities (the private key is a secret).", no_args_is_help=True
)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


# -- projects and environments ---------------------------------------------------------------------
@project_app.command("create")
def project_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Project name: lowercase letters, digits, '-' and '_'.")],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="An environment (repeatable; default dev, staging, prod)."),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="What the project is.")] = "",
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Create a project with its environments."""
    state = get_state(ctx, output)
    envs = list(env) if env else list(DEFAULT_ENVIRONMENTS)
    state.unsealed(passphrase_file)
    org = state.org or state.settings.default_org()
    state.service().create_project(state.principal, name, org=org, environments=envs, description=description)
    if state.json:
        print_json({"project": name, "org": org, "environments": envs})
    else:
        sys.stdout.write(f"created project {name} with environments {', '.join(envs)}\n")


@project_app.command("list")
def project_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List the projects and their environments."""
    state = get_state(ctx, output)
    org = state.org or state.settings.default_org()
    projects = state.service().list_projects(state.principal, org=org)
    if state.json:
        print_json(projects)
        return
    table = Table(title=f"projects in {org}", title_justify="left")
    for col in ("PROJECT", "ENVIRONMENTS", "DESCRIPTION"):
        table.add_column(col, overflow="fold")
    for p in projects:
        table.add_row(text(p["name"]), text(", ".join(p["environments"])), text(p["description"]))
    out_console().print(table)


@env_app.command("create")
def env_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Environment name, such as qa or preview.")],
    project: ProjectOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Add an environment to a project."""
    state = get_state(ctx, output)
    scope = state.scope(project, None)
    state.unsealed(passphrase_file)
    state.service().create_environment(state.principal, scope.project, name, org=scope.org)
    if state.json:
        print_json({"project": scope.project, "environment": name})
    else:
        sys.stdout.write(f"created environment {name} in project {scope.project}\n")


@env_app.command("list")
def env_list(ctx: typer.Context, project: ProjectOpt = None, output: OutputOpt = None) -> None:
    """List the environments of a project."""
    state = get_state(ctx, output)
    scope = state.scope(project, None)
    projects = state.service().list_projects(state.principal, org=scope.org)
    found = next((p for p in projects if p["name"] == scope.project), None)
    if found is None:
        from keybroker.errors import ProjectNotFound

        raise ProjectNotFound(f"no project {scope.project!r} in organization {scope.org!r}")
    if state.json:
        print_json(found["environments"])
    else:
        sys.stdout.write("".join(f"{e}\n" for e in found["environments"]))


# -- key pairs -------------------------------------------------------------------------------------
class Algorithm(StrEnum):
    ed25519 = "ed25519"
    ecdsa_p256 = "ecdsa-p256"
    rsa_3072 = "rsa-3072"


assert {a.value for a in Algorithm} == set(KEYPAIR_ALGORITHMS)

KeyNameArg = Annotated[str, typer.Argument(help="Key pair name (a secret name).", show_default=False)]
AlgorithmOpt = Annotated[
    Algorithm | None, typer.Option("--algorithm", "-a", help="ed25519, ecdsa-p256 or rsa-3072.")
]


def _print_public(state_json: bool, name: str, version: int, algorithm: str, pem: str) -> None:
    if state_json:
        print_json({"name": name, "version": version, "algorithm": algorithm, "public_key": pem})
    else:
        sys.stdout.write(pem if pem.endswith("\n") else pem + "\n")


@keypair_app.command("generate")
def keypair_generate(
    ctx: typer.Context,
    name: KeyNameArg,
    algorithm: AlgorithmOpt = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Generate a key pair; prints the public key."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    alg = (algorithm or Algorithm.ed25519).value
    meta, pub = state.unsealed_service(passphrase_file).keypair_generate(state.principal, scope, name, alg)
    _print_public(state.json, name, meta.latest_version, alg, pub)


@keypair_app.command("rotate")
def keypair_rotate(
    ctx: typer.Context,
    name: KeyNameArg,
    algorithm: AlgorithmOpt = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Generate a new version of a key pair (same algorithm); prints the new public key."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    svc = state.unsealed_service(passphrase_file)
    current = svc.describe(state.principal, scope, name)
    if current.kind != "keypair":
        raise InvalidInput(f"secret {name!r} is not a key pair")
    alg = current.custom_metadata.get("algorithm", "ed25519")
    if algorithm is not None and algorithm.value != alg:
        raise InvalidInput(
            f"{name!r} is an {alg} key pair; to change the algorithm generate a key pair under a new name"
        )
    meta, pub = svc.keypair_generate(state.principal, scope, name, alg, rotate=True)
    _print_public(state.json, name, meta.latest_version, alg, pub)


@keypair_app.command("get")
def keypair_get(
    ctx: typer.Context,
    name: KeyNameArg,
    reveal: Annotated[bool, typer.Option("--reveal", help="Print the private key (PEM) instead.")] = False,
    version: Annotated[int | None, typer.Option("--version", "-v", help="This version.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Print a key pair's public key, or with --reveal its private key."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    if not reveal:
        v, alg, pem = state.service().keypair_public(state.principal, scope, name, version)
        _print_public(state.json, name, v, alg, pem)
        return
    svc = state.unsealed_service(passphrase_file)
    meta = svc.describe(state.principal, scope, name)
    if meta.kind != "keypair":
        raise InvalidInput(f"secret {name!r} is not a key pair")
    read = svc.get(state.principal, scope, name, version=version, resolve=False)
    private_pem = read.value.reveal_bytes()
    if state.json:
        print_json(
            {
                "name": name,
                "version": read.version,
                "algorithm": meta.custom_metadata.get("algorithm", "ed25519"),
                "private_key": private_pem.decode("utf-8"),
            }
        )
        return
    write_stdout(private_pem if private_pem.endswith(b"\n") else private_pem + b"\n")


@keypair_app.command("public")
def keypair_public(
    ctx: typer.Context,
    name: KeyNameArg,
    version: Annotated[int | None, typer.Option("--version", "-v", help="This version.")] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
) -> None:
    """Print a key pair's public key (works while sealed: nothing is decrypted)."""
    state = get_state(ctx, output)
    check_name(name)
    v, alg, pem = state.service().keypair_public(state.principal, state.scope(project, env), name, version)
    _print_public(state.json, name, v, alg, pem)


# -- audit -----------------------------------------------------------------------------------------
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Only records from then on: an ISO date/time, or a duration (24h, 7d)."),
]


def _entries_table(entries: list[AuditEntry]) -> Table:
    table = Table()
    for col in ("SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "VERSION", "RESULT", "CLIENT"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            text(e.seq),
            text(e.ts),
            text(e.actor),
            text(e.action),
            text(e.target),
            text(e.version if e.version is not None else ""),
            text(e.result),
            text(e.client),
        )
    return table


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    since: SinceOpt = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action (e.g. secret.read).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Show the last N matching records (0: all).")
    ] = 50,
    output: OutputOpt = None,
) -> None:
    """Show the latest audit records."""
    state = get_state(ctx, output)
    vault = state.initialized_vault()
    when = parse_since(since, state.clock.now()) if since else None
    it = vault.audit.iter_entries(since=when, action=action)
    entries = list(collections.deque(it, maxlen=limit) if limit > 0 else it)
    if state.json:
        print_json([e.to_dict() for e in entries])
        return
    if not entries:
        sys.stdout.write("no audit records match\n")
        return
    out_console().print(_entries_table(entries))


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Check the hash chain; exits 1 and names the first bad record if anything was changed."""
    state = get_state(ctx, output)
    result = state.initialized_vault().audit.verify()
    if state.json:
        print_json(
            {
                "ok": result.ok,
                "checked": result.checked,
                "first_bad_seq": result.first_bad_seq,
                "reason": result.reason,
                "head_seq": result.head_seq,
            }
        )
    elif result.ok:
        sys.stdout.write(f"audit log intact: {result.checked} records verified\n")
    if not result.ok:
        if not state.json:
            sys.stderr.write(f"error: audit log broken at record {result.first_bad_seq}: {result.reason}\n")
        raise typer.Exit(1)


class AuditFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    fmt: Annotated[AuditFormat, typer.Option("--format", help="jsonl or csv.")] = AuditFormat.jsonl,
    since: SinceOpt = None,
    output_file: Annotated[
        Path | None,
        typer.Option("--output-file", "-o", help="Write to this file instead of stdout.", dir_okay=False),
    ] = None,
) -> None:
    """Export the audit log as JSON lines or CSV."""
    state = get_state(ctx)
    vault = state.initialized_vault()
    when = parse_since(since, state.clock.now()) if since else None
    vault.audit.record(
        state.principal,
        "audit.export",
        "audit",
        detail={"format": fmt.value, "since": when.isoformat() if when else None},
    )
    chunks = vault.audit.export(fmt.value, since=when)
    if output_file is None:
        for chunk in chunks:
            write_stdout(chunk.encode("utf-8"))
        return
    try:
        write_private(output_file, "".join(chunks).encode("utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot write {output_file}: {exc.strerror or type(exc).__name__}") from None
    sys.stderr.write(f"audit log written to {output_file}\n")


@audit_app.command("hash")
def audit_hash(
    ctx: typer.Context,
    value: Annotated[
        str | None,
        typer.Argument(help="The value (lands in shell history: prefer --stdin).", show_default=False),
    ] = None,
    stdin: StdinOpt = False,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Show the audit HMAC of a value and every record that used it (e.g. a leaked key)."""
    state = get_state(ctx, output)
    secret = read_value(value, stdin, None)
    vault = state.unsealed(passphrase_file)
    digest = vault.keyring().audit_hmac(secret.reveal_bytes())
    vault.audit.record(state.principal, "audit.hash", "audit")
    entries = list(vault.audit.iter_entries(value_hmac=digest))
    if state.json:
        print_json({"value_hmac": digest, "records": [e.to_dict() for e in entries]})
        return
    sys.stdout.write(f"{digest}\n")
    if entries:
        out_console().print(_entries_table(entries))
    else:
        sys.stdout.write("no audit record holds this value\n")
