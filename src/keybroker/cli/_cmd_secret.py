"""``keybroker secret ...``: the secret lifecycle."""

import base64
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from keybroker.cli._io import (
    confirm,
    out_console,
    parse_duration,
    parse_expires,
    print_json,
    read_value,
    text,
    write_stdout,
)
from keybroker.cli._opts import (
    EnvOpt,
    FileOpt,
    OutputOpt,
    PassphraseFileOpt,
    ProjectOpt,
    StdinOpt,
    YesOpt,
)
from keybroker.cli._state import get_state
from keybroker.core import RISK_LEVELS, SecretMeta, SecretRead, check_secret_name
from keybroker.errors import InvalidInput, InvalidName

__all__ = ["app", "check_name", "meta_row_flags", "value_json"]

app = typer.Typer(help="Store, read, rotate and delete secrets.", no_args_is_help=True)

NameArg = Annotated[
    str, typer.Argument(help="Secret name: OPENAI_API_KEY or openai/api_key.", show_default=False)
]
ValueArg = Annotated[
    str | None,
    typer.Argument(
        help="The value (lands in shell history: prefer --stdin, --file or the prompt).", show_default=False
    ),
]
VersionsOpt = Annotated[list[int] | None, typer.Option("--version", "-v", help="A version (repeatable).")]


def check_name(name: str) -> str:
    """Check a secret name typed on the command line. The error does not repeat the name: a
    value typed where the name goes must not be echoed to the terminal or a log."""
    try:
        return check_secret_name(name)
    except InvalidName:
        raise InvalidName(
            "invalid secret name: use env-var style (OPENAI_API_KEY) or path style (openai/api_key): "
            "letters, digits, '_' and '-', segments separated by '/', at most 256 characters"
        ) from None


def value_json(read: SecretRead) -> dict[str, Any]:
    raw = read.value.reveal_bytes()
    out: dict[str, Any] = {"name": read.name, "version": read.version}
    try:
        out["value"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        out["value_base64"] = base64.b64encode(raw).decode()
    out["references"] = list(read.references)
    out["metadata"] = read.meta.to_dict()
    return out


def meta_row_flags(m: SecretMeta) -> str:
    flags = []
    if m.deleted_at:
        flags.append("deleted")
    if m.expired:
        flags.append("expired")
    if m.rotation_due:
        flags.append("rotation-due")
    if m.pending_version is not None:
        flags.append("pending")
    return ",".join(flags)


def _labels(m: SecretMeta) -> str:
    parts = [
        f"{lab}={v}"
        for lab, v in (
            ("current", m.current_version),
            ("previous", m.previous_version),
            ("pending", m.pending_version),
        )
        if v is not None
    ]
    return " ".join(parts)


def _short(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") if dt else ""


def _metadata(
    description: str | None,
    tags: list[str] | None,
    owner: str | None,
    expires: str | None,
    rotation_period: str | None,
    risk: str | None,
    provider: str | None,
    now: Any,
) -> dict[str, Any]:
    md: dict[str, Any] = {}
    if description is not None:
        md["description"] = description
    if tags:
        md["tags"] = list(tags)
    if owner is not None:
        md["owner"] = owner
    if expires is not None:
        md["expires_at"] = parse_expires(expires, now)
    if rotation_period is not None:
        md["rotation_period_s"] = int(parse_duration(rotation_period, "rotation period").total_seconds())
    if risk is not None:
        if risk not in RISK_LEVELS:
            raise InvalidInput(f"invalid risk level {risk!r}: choose low, medium or high")
        md["risk"] = risk
    if provider is not None:
        md["provider"] = provider
    return md


def _done(state: Any, message: str, payload: dict[str, Any]) -> None:
    if state.json:
        print_json(payload)
    else:
        sys.stdout.write(message + "\n")


# -- set / get -------------------------------------------------------------------------------------
@app.command("set")
def set_(
    ctx: typer.Context,
    name: NameArg,
    value: ValueArg = None,
    stdin: StdinOpt = False,
    file: FileOpt = None,
    cas: Annotated[
        int | None, typer.Option("--cas", help="Only write if the latest version is N (0: only if new).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="What the secret is for.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Who is responsible for it.")] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Expiry: an ISO date, or a duration such as 90d.")
    ] = None,
    rotation_period: Annotated[
        str | None, typer.Option("--rotation-period", help="Rotate every (e.g. 30d); flagged when due.")
    ] = None,
    risk: Annotated[str | None, typer.Option("--risk", help="Risk level: low, medium or high.")] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Provider hint: openai, anthropic, stripe, generic...")
    ] = None,
    proxy_only: Annotated[
        bool,
        typer.Option(
            "--proxy-only",
            help="Never reveal the value: `run` gives a proxy token for the gateway instead.",
        ),
    ] = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Store a new version of a secret."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    md = _metadata(description, tag, owner, expires, rotation_period, risk, provider, state.clock.now())
    if proxy_only:
        md["proxy_only"] = True
    secret = read_value(value, stdin, file)
    meta = state.backend(passphrase_file).put(scope, name, secret, cas=cas, **md)
    _done(
        state,
        f"stored {name} version {meta.latest_version} in {scope.path()}",
        {"name": name, "version": meta.latest_version, "scope": scope.path(), "metadata": meta.to_dict()},
    )


@app.command("get")
def get(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[int | None, typer.Option("--version", "-v", help="Read this version.")] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", "-l", help="Read the version with this label: current, previous, pending."),
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Print the value only, without a trailing newline.")
    ] = False,
    no_resolve: Annotated[
        bool, typer.Option("--no-resolve", help="Do not resolve ${NAME} references.")
    ] = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Print a secret's value (default: the current version)."""
    state = get_state(ctx, output)
    check_name(name)
    if version is not None and label is not None:
        raise InvalidInput("give --version or --label, not both")
    if plain and state.json:
        raise InvalidInput("give --plain or --output json, not both")
    scope = state.scope(project, env)
    read = state.backend(passphrase_file).get(
        scope, name, version=version, label=label, resolve=not no_resolve
    )
    if state.json:
        print_json(value_json(read))
        return
    raw = read.value.reveal_bytes()
    write_stdout(raw if plain else raw + b"\n")


# -- listing and metadata --------------------------------------------------------------------------
@app.command("list")
def list_(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Option("--prefix", help="Only names starting with this.")] = "",
    deleted: Annotated[bool, typer.Option("--deleted", help="Include soft-deleted secrets.")] = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
) -> None:
    """List the secrets of a project environment (names and metadata, never values)."""
    state = get_state(ctx, output)
    scope = state.scope(project, env)
    metas = state.backend(unseal=False).list_secrets(scope, prefix=prefix, include_deleted=deleted)
    if state.json:
        print_json([m.to_dict() for m in metas])
        return
    if not metas:
        sys.stdout.write(f"no secrets in {scope.path()}\n")
        return
    table = Table(title=scope.path(), title_justify="left")
    for col in ("NAME", "VERSION", "LABELS", "RISK", "PROVIDER", "UPDATED", "FLAGS"):
        table.add_column(col, overflow="fold")
    for m in metas:
        table.add_row(
            text(m.name),
            text(m.current_version if m.current_version is not None else "-"),
            text(_labels(m)),
            text(m.risk),
            text(m.provider),
            text(_short(m.updated_at)),
            text(meta_row_flags(m)),
        )
    out_console().print(table)


@app.command("history")
def history(
    ctx: typer.Context,
    name: NameArg,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
) -> None:
    """List a secret's versions with their labels and state."""
    state = get_state(ctx, output)
    check_name(name)
    versions = state.backend(unseal=False).history(state.scope(project, env), name)
    if state.json:
        print_json([v.to_dict() for v in versions])
        return
    table = Table(title=name, title_justify="left")
    for col in ("VERSION", "CREATED", "BY", "STATE", "LABELS"):
        table.add_column(col, overflow="fold")
    for v in versions:
        table.add_row(
            text(v.version),
            text(_short(v.created_at)),
            text(v.created_by),
            text(v.state),
            text(",".join(v.labels)),
        )
    out_console().print(table)


@app.command("describe")
def describe(
    ctx: typer.Context,
    name: NameArg,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
) -> None:
    """Show a secret's metadata."""
    state = get_state(ctx, output)
    check_name(name)
    meta = state.backend(unseal=False).describe(state.scope(project, env), name)
    if state.json:
        print_json(meta.to_dict())
        return
    d = meta.to_dict()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    d["scope"] = meta.scope.path()
    d["labels"] = _labels(meta)
    d["flags"] = meta_row_flags(meta)
    if meta.rotation_period_s:
        d["rotation_period"] = (
            f"{meta.rotation_period_s // 86400}d"
            if meta.rotation_period_s % 86400 == 0
            else (f"{meta.rotation_period_s}s")
        )
    for key in (
        "name",
        "scope",
        "kind",
        "description",
        "tags",
        "owner",
        "risk",
        "provider",
        "labels",
        "latest_version",
        "expires_at",
        "rotation_period",
        "flags",
        "created_at",
        "updated_at",
        "deleted_at",
        "custom_metadata",
    ):
        v = d.get(key)
        if v in (None, "", [], {}):
            continue
        table.add_row(key.replace("_", " "), text(", ".join(v) if isinstance(v, list) else v))
    out_console().print(table)


# -- rotation --------------------------------------------------------------------------------------
@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[int, typer.Argument(help="The version whose value becomes current again.")],
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Write an old version's value again as a new current version."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    meta = state.backend(passphrase_file).rollback(scope, name, version)
    _done(
        state,
        f"{name}: version {meta.latest_version} (a copy of version {version}) is current",
        {"name": name, "version": meta.latest_version, "from_version": version},
    )


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: NameArg,
    value: ValueArg = None,
    stdin: StdinOpt = False,
    file: FileOpt = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Write a new value as the pending version; the current one keeps working until promote."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    secret = read_value(value, stdin, file)
    meta = state.backend(passphrase_file).rotate(scope, name, secret)
    _done(
        state,
        f"{name}: version {meta.pending_version} is pending; "
        f"`keybroker secret promote {name}` makes it current",
        {"name": name, "pending_version": meta.pending_version, "current_version": meta.current_version},
    )


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: NameArg,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Make the pending version current; the old current stays readable as previous."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    meta = state.backend(passphrase_file).promote(scope, name)
    prev = f"; version {meta.previous_version} stays readable as previous" if meta.previous_version else ""
    _done(
        state,
        f"{name}: version {meta.current_version} is current{prev}",
        {"name": name, "current_version": meta.current_version, "previous_version": meta.previous_version},
    )


# -- deletion --------------------------------------------------------------------------------------
def _versions_text(versions: list[int] | None) -> str:
    return f"version(s) {', '.join(map(str, versions))} of " if versions else ""


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: NameArg,
    version: VersionsOpt = None,
    yes: YesOpt = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Soft-delete a secret, or some of its versions (undo with `secret undelete`)."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    backend = state.backend(passphrase_file)
    confirm(f"Delete {_versions_text(version)}{name} in {scope.path()}?", yes, refuse="delete")
    backend.delete(scope, name, list(version) if version else None)
    _done(
        state,
        f"deleted {_versions_text(version)}{name} (`keybroker secret undelete {name}` brings it back)",
        {"name": name, "deleted": True, "versions": version or "all"},
    )


@app.command("undelete")
def undelete(
    ctx: typer.Context,
    name: NameArg,
    version: VersionsOpt = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Bring back a soft-deleted secret or versions."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    state.backend(passphrase_file).undelete(scope, name, list(version) if version else None)
    _done(
        state,
        f"undeleted {_versions_text(version)}{name}",
        {"name": name, "deleted": False, "versions": version or "all"},
    )


@app.command("destroy")
def destroy(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[list[int], typer.Option("--version", "-v", help="A version to destroy (repeatable).")],
    yes: YesOpt = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Erase versions for good: their data keys are destroyed and the values cannot come back."""
    state = get_state(ctx, output)
    check_name(name)
    scope = state.scope(project, env)
    backend = state.backend(passphrase_file)
    confirm(
        f"Destroy {_versions_text(version)}{name} in {scope.path()}? This cannot be undone.",
        yes,
        refuse="destroy",
    )
    backend.destroy(scope, name, list(version))
    _done(
        state,
        f"destroyed {_versions_text(version)}{name}",
        {"name": name, "destroyed_versions": list(version)},
    )
