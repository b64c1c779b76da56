"""Vault lifecycle commands: init, unseal, seal, status, rekey."""

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keybroker.cli._io import (
    confirm,
    err_console,
    is_interactive,
    out_console,
    parse_duration,
    print_json,
    prompt_passphrase,
    read_passphrase_file,
    read_passphrase_stdin,
    text,
    warn,
)
from keybroker.cli._opts import OutputOpt, PassphraseFileOpt, YesOpt
from keybroker.cli._state import State, get_state
from keybroker.core import (
    DEFAULT_ENVIRONMENTS,
    KeychainRoot,
    KeyFileRoot,
    PassphraseRoot,
    RootKeySource,
    Vault,
)
from keybroker.crypto import Argon2Params
from keybroker.errors import InvalidInput, NotInitialized

__all__ = ["init", "rekey", "seal", "status", "unseal"]

DEFAULT_TTL = "12h"

PassphraseStdinOpt = Annotated[
    bool, typer.Option("--passphrase-stdin", help="Read the passphrase from the first line of stdin.")
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file", help="Root key file (base64 of 32 bytes; KEYBROKER_KEY_FILE).", dir_okay=False
    ),
]
TtlOpt = Annotated[
    str,
    typer.Option("--ttl", help="How long the unseal session lasts at most (e.g. 30m, 12h, 7d)."),
]


def _ttl_seconds(ttl: str) -> float | None:
    if ttl.strip().lower() in ("0", "none", "never"):
        return None
    return parse_duration(ttl, "--ttl").total_seconds()


def _start_session(state: State, vault: Vault, kind: str, ttl: str, *, key_in_env: bool = False) -> str:
    return state.sessions().create(
        vault.vault_id,
        vault.root_key(),
        kind,
        ttl_s=_ttl_seconds(ttl),
        idle_s=state.settings.auto_seal_seconds(),
        key_in_env=key_in_env,
    )


def _session_note(state: State, ttl: str) -> str:
    parts = []
    if _ttl_seconds(ttl):
        parts.append(f"for at most {ttl}")
    idle = state.settings.auto_seal_minutes
    if idle:
        parts.append(f"auto-sealing after {idle:g} minutes idle")
    return ("unsealed " + ", ".join(parts)) if parts else "unsealed until `keybroker seal`"


# -- init ------------------------------------------------------------------------------------------
def init(
    ctx: typer.Context,
    passphrase_file: Annotated[
        Path | None,
        typer.Option("--passphrase-file", help="Read the new passphrase from this file.", dir_okay=False),
    ] = None,
    passphrase_stdin: PassphraseStdinOpt = False,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Protect the vault with a key file, created at this path (mode 0600).",
            dir_okay=False,
        ),
    ] = None,
    keychain: Annotated[
        bool, typer.Option("--keychain", help="Keep the root key in the OS keychain.")
    ] = False,
    dev: Annotated[
        bool, typer.Option("--dev", help="Dev mode only: the root key is KEYBROKER_DEV_ROOT_KEY.")
    ] = False,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Name of the first project.")] = None,
    yes: YesOpt = False,
    ttl: TtlOpt = DEFAULT_TTL,
    kdf_memory_kib: Annotated[
        int | None, typer.Option("--kdf-memory-kib", hidden=True, help="Argon2id memory cost (KiB).")
    ] = None,
    kdf_time_cost: Annotated[
        int | None, typer.Option("--kdf-time-cost", hidden=True, help="Argon2id time cost.")
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Create a new vault (the store, its root key, a first project) and leave it unsealed."""
    state = get_state(ctx, output)
    chosen = [
        n
        for n, on in (
            ("--passphrase-file", passphrase_file is not None),
            ("--passphrase-stdin", passphrase_stdin),
            ("--key-file", key_file is not None),
            ("--keychain", keychain),
            ("--dev", dev),
        )
        if on
    ]
    if len(chosen) > 1:
        raise InvalidInput(f"choose one root key source, not {' and '.join(chosen)}")
    if (kdf_memory_kib or kdf_time_cost) and (key_file or keychain or dev):
        raise InvalidInput("--kdf-* options apply to a passphrase only")
    vault = state.vault()
    if vault.is_initialized():
        from keybroker.errors import AlreadyInitialized

        raise AlreadyInitialized(f"a vault already exists in {state.store_url()}; nothing was changed")
    confirm(f"Create a new vault in {state.store_url()}?", yes or not is_interactive(), refuse="init")

    source: RootKeySource
    if key_file is not None:
        source = KeyFileRoot(key_file.expanduser())
    elif keychain:
        source = KeychainRoot()
    elif dev:
        dev_source = state.dev_source()
        if dev_source is None:
            raise InvalidInput(
                "--dev needs KEYBROKER_DEV_MODE=1 and KEYBROKER_DEV_ROOT_KEY (base64 of 32 bytes)"
            )
        source = dev_source
    else:
        if passphrase_file is not None:
            passphrase = read_passphrase_file(passphrase_file)
        elif passphrase_stdin:
            passphrase = read_passphrase_stdin()
        else:
            passphrase = prompt_passphrase(twice=True)
        params = None
        if kdf_memory_kib or kdf_time_cost:
            params = Argon2Params(
                os.urandom(16),
                memory_kib=kdf_memory_kib or 65536,
                time_cost=kdf_time_cost or 3,
            )
            if params.memory_kib < Argon2Params.MIN_MEMORY_KIB or params.time_cost < Argon2Params.MIN_TIME:
                raise InvalidInput(
                    f"Argon2id costs below OWASP's minimum (m>={Argon2Params.MIN_MEMORY_KIB} KiB, "
                    f"t>={Argon2Params.MIN_TIME}) are refused"
                )
        source = PassphraseRoot(passphrase, params)

    first_project = project or state.project or state.settings.default_project()
    env = state.env or state.settings.default_environment()
    envs = tuple(DEFAULT_ENVIRONMENTS) + (() if env in DEFAULT_ENVIRONMENTS else (env,))
    vault_id = vault.initialize(
        source,
        state.principal,
        org=state.org or state.settings.default_org(),
        project=first_project,
        environments=envs,
    )
    _start_session(state, vault, source.kind, ttl)
    if state.json:
        print_json(
            {
                "vault_id": vault_id,
                "root_kind": source.kind,
                "store": state.store_url(),
                "project": first_project,
                "environments": list(envs),
                "key_file": str(key_file) if key_file else None,
                "sealed": False,
            }
        )
        return
    out = sys.stdout
    out.write(f"initialised vault {vault_id} in {state.store_url()}\n")
    out.write(f"root key: {source.kind}; project {first_project!r} with environments {', '.join(envs)}\n")
    if key_file is not None:
        out.write(f"the root key is in {key_file} (mode 0600): back it up; without it nothing can be read\n")
    out.write(_session_note(state, ttl) + "\n")


# -- unseal / seal ---------------------------------------------------------------------------------
def _interactive_source(
    state: State,
    vault: Vault,
    passphrase_file: Path | None,
    passphrase_stdin: bool,
    key_file: Path | None,
) -> RootKeySource:
    kind = state.root_kind(vault)
    if passphrase_stdin and kind != "passphrase":
        raise InvalidInput(f"this vault is unsealed with its {kind} root key, not a passphrase")
    if kind == "passphrase":
        if passphrase_stdin:
            return PassphraseRoot(read_passphrase_stdin())
        source = state.script_source(vault, passphrase_file, key_file)
        if source is not None:
            return source
        return PassphraseRoot(prompt_passphrase(twice=False))
    if kind == "keychain":
        if passphrase_file is not None or key_file is not None:
            raise InvalidInput("this vault's root key is kept in the OS keychain")
        return KeychainRoot()
    source = state.script_source(vault, passphrase_file, key_file)
    if source is not None:
        return source
    if kind == "keyfile":
        raise InvalidInput(
            "this vault is unsealed with a key file: pass --key-file F or set KEYBROKER_KEY_FILE"
        )
    if kind == "dev-env":
        raise InvalidInput(
            "this vault was created in dev mode: set KEYBROKER_DEV_MODE=1 and KEYBROKER_DEV_ROOT_KEY"
        )
    raise InvalidInput(f"this vault's root key kind {kind!r} is not known to this keybroker")


def unseal(
    ctx: typer.Context,
    passphrase_file: PassphraseFileOpt = None,
    passphrase_stdin: PassphraseStdinOpt = False,
    key_file: KeyFileOpt = None,
    print_session: Annotated[
        bool,
        typer.Option(
            "--print-session",
            help="Keep the session key out of files: print `export KEYBROKER_SESSION=...` to eval.",
        ),
    ] = False,
    ttl: TtlOpt = DEFAULT_TTL,
    output: OutputOpt = None,
) -> None:
    """Unseal the vault and start a session that later commands use."""
    state = get_state(ctx, output)
    vault = state.initialized_vault()
    source = _interactive_source(state, vault, passphrase_file, passphrase_stdin, key_file)
    vault.unseal(source, state.principal)
    token = _start_session(state, vault, source.kind, ttl, key_in_env=print_session)
    if print_session:
        sys.stdout.write(f"export KEYBROKER_SESSION={token}\n")
        sys.stderr.write("# " + _session_note(state, ttl) + "; eval this line in your shell\n")
        return
    if state.json:
        info, _ = state.sessions().peek(vault.vault_id)
        print_json({"sealed": False, "session": info.to_dict() if info else None})
        return
    sys.stdout.write(_session_note(state, ttl) + "\n")


def seal(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Seal the vault: end the unseal session (delete the session and its key)."""
    state = get_state(ctx, output)
    vault = state.vault()
    vault_id = vault.vault_id if vault.is_initialized() else None
    state.sessions().delete(vault_id)
    if vault_id is not None:
        vault.seal(state.principal)
    if state.json:
        print_json({"sealed": True})
    else:
        sys.stdout.write("sealed\n")
    if state.settings.session is not None:
        warn("KEYBROKER_SESSION is still set in your shell: `unset KEYBROKER_SESSION`")


# -- status ----------------------------------------------------------------------------------------
def _remote_status(state: State) -> None:
    """The server's health (``GET /v1/sys/health``; needs no token)."""
    from keybroker.client import Client

    with Client(state.addr, "", environ={}, max_stale=None) as client:
        health = client.health()
    info = {
        "addr": state.addr,
        "initialized": bool(health.get("initialized")),
        "sealed": bool(health.get("sealed")),
        "version": health.get("version"),
        "scope": state.scope().path(),
    }
    if state.json:
        print_json(info)
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("server", text(info["addr"]))
    table.add_row("initialized", text("yes" if info["initialized"] else "no"))
    table.add_row("sealed", text("yes" if info["sealed"] else "no"))
    table.add_row("server version", text(info["version"] or "?"))
    table.add_row("scope", text(info["scope"]))
    out_console().print(table)


def status(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show whether the vault exists and is sealed, where it is stored, and what it holds."""
    state = get_state(ctx, output)
    if state.remote:
        _remote_status(state)
        return
    vault = state.vault()
    info: dict[str, Any] = {"initialized": False, "sealed": True, "store": state.store_url()}
    try:
        raw = vault.status()
    except NotInitialized:
        raw = {"initialized": False}
    info["initialized"] = bool(raw.get("initialized"))
    if info["initialized"]:
        session, why = state.sessions().peek(str(raw["vault_id"]))
        info.update(
            {
                "sealed": session is None,
                "dialect": raw.get("store"),
                "vault_id": raw.get("vault_id"),
                "root_kind": raw.get("root_kind"),
                "secrets": raw.get("secrets"),
                "keks": raw.get("keks"),
                "audit_records": raw.get("audit_records"),
                "rekey_in_progress": raw.get("rekey_in_progress"),
                "session": session.to_dict() if session else None,
                "sealed_reason": why,
                "scope": state.scope().path(),
                "dev_mode": state.settings.dev_mode,
            }
        )
    if state.json:
        print_json(info)
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("initialized", text("yes" if info["initialized"] else "no (run `keybroker init`)"))
    table.add_row("store", text(info["store"]))
    if info["initialized"]:
        sealed = "yes" + (f" ({info['sealed_reason']})" if info.get("sealed_reason") else "")
        table.add_row("sealed", text(sealed if info["sealed"] else "no"))
        sess = info.get("session")
        if sess:
            table.add_row("session expires", text(sess["expires_at"] or "on `keybroker seal`"))
            if sess["idle_timeout_minutes"]:
                table.add_row("idle auto-seal", text(f"{sess['idle_timeout_minutes']:g} minutes"))
        table.add_row("vault id", text(info["vault_id"]))
        table.add_row("root key", text(info["root_kind"]))
        table.add_row("scope", text(info["scope"]))
        table.add_row("secrets", text(info["secrets"]))
        table.add_row("key-encryption keys", text(info["keks"]))
        table.add_row("audit records", text(info["audit_records"]))
        if info["rekey_in_progress"]:
            table.add_row("rekey", text("interrupted: run `keybroker rekey` to finish"))
    out_console().print(table)


# -- rekey -----------------------------------------------------------------------------------------
def rekey(
    ctx: typer.Context,
    yes: YesOpt = False,
    passphrase_file: PassphraseFileOpt = None,
    output: OutputOpt = None,
) -> None:
    """Make a new key-encryption key current and re-wrap every data key under it."""
    state = get_state(ctx, output)
    vault = state.unsealed(passphrase_file)
    confirm("Re-wrap every data key under a new key-encryption key?", yes, refuse="rekey")
    show = not state.json
    with Progress(
        TextColumn("re-wrapping data keys"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        disable=not show,
        transient=False,
    ) as progress:
        task = progress.add_task("rekey", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = vault.rekey(state.principal, progress=on_progress)
    if state.json:
        print_json({"kek_id": result.kek_id, "rewrapped": result.rewrapped, "resumed": result.resumed})
        return
    resumed = " (resumed an interrupted rekey)" if result.resumed else ""
    sys.stdout.write(
        f"key-encryption key {result.kek_id} is current; {result.rewrapped} data keys re-wrapped{resumed}\n"
    )
