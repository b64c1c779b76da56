"""Moving secrets in and out: ``import``, ``export`` and ``run``."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any

import typer

from keybroker.cli._backend import DEFAULT_GATEWAY_URL, ProxyEnvironment
from keybroker.cli._io import print_json, warn, write_stdout
from keybroker.cli._opts import EnvOpt, OutputOpt, PassphraseFileOpt, ProjectOpt
from keybroker.cli._session import write_private
from keybroker.cli._state import get_state
from keybroker.core import check_secret_name
from keybroker.core._dotenv import DotenvResult, parse_dotenv, parse_shell_exports
from keybroker.core._masking import StreamMasker
from keybroker.crypto import SecretValue
from keybroker.errors import CasMismatch, InvalidInput, InvalidName, SecretDeleted

__all__ = ["dotenv_quote", "env_var_name", "export", "import_", "run"]


# -- import ----------------------------------------------------------------------------------------
class ImportFormat(StrEnum):
    auto = "auto"
    dotenv = "dotenv"
    shell = "shell"


_SHELL_FILES = re.compile(
    r"^\.?(bashrc|bash_profile|bash_login|profile|zshrc|zshenv|zprofile|zlogin|kshrc|mkshrc)$|\.(sh|bash|zsh)$"
)
# Reasons that describe the file, not a fault in it: reported but not an error.
_BENIGN = ("not an export line", "needs shell evaluation", "exists (use --overwrite)")


def detect_format(path: Path) -> ImportFormat:
    return ImportFormat.shell if _SHELL_FILES.search(path.name) else ImportFormat.dotenv


def import_(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="A .env file, or a shell rc file (~/.zshrc) with export lines.")
    ],
    fmt: Annotated[
        ImportFormat,
        typer.Option("--format", help="auto: shell for .zshrc/.bashrc/.profile/*.sh, else dotenv."),
    ] = ImportFormat.auto,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; store nothing.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite/--skip-existing", help="Write a new version of secrets that exist, or skip them."
        ),
    ] = False,
    no_expand: Annotated[
        bool, typer.Option("--no-expand", help="Do not expand ${VAR} in .env values.")
    ] = False,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    output: OutputOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Import secrets from a .env file or the export lines of a shell rc file.

    Reports what was imported and which lines were skipped (line number and reason, never a
    value). Exits 1 if a line could not be read; the readable lines are still imported.
    """
    state = get_state(ctx, output)
    scope = state.scope(project, env)
    try:
        content = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{file} is not UTF-8 text") from None
    kind = detect_format(file) if fmt is ImportFormat.auto else fmt
    parsed: DotenvResult = (
        parse_shell_exports(content)
        if kind is ImportFormat.shell
        else parse_dotenv(
            content,
            expand=not no_expand,
            environ={k: v for k, v in os.environ.items() if k not in _WITHHELD},
        )
    )
    backend = state.backend(unseal=False)
    existing = {m.name: m for m in backend.list_secrets(scope, include_deleted=True)}
    skipped: list[dict[str, Any]] = [{"line": s.line, "reason": s.reason} for s in parsed.skipped]
    plan = []
    for entry in parsed.entries:
        try:
            check_secret_name(entry.key)
        except InvalidName:
            skipped.append({"line": entry.line, "reason": "invalid secret name"})
            continue
        have = existing.get(entry.key)
        if have is not None and have.deleted_at is not None:
            skipped.append(
                {"line": entry.line, "name": entry.key, "reason": "deleted secret (undelete it first)"}
            )
        elif have is not None and not overwrite:
            skipped.append({"line": entry.line, "name": entry.key, "reason": "exists (use --overwrite)"})
        else:
            plan.append(entry)
    imported: list[dict[str, Any]] = []
    if dry_run:
        imported = [{"name": e.key, "line": e.line, "version": None} for e in plan]
    elif plan:
        backend = state.backend(passphrase_file)
        for e in plan:
            try:
                meta = backend.put(
                    scope,
                    e.key,
                    SecretValue(e.value),
                    cas=None if e.key in existing else 0,
                    action="secret.import",
                )
            except (CasMismatch, SecretDeleted, InvalidInput) as exc:
                skipped.append({"line": e.line, "name": e.key, "reason": f"not stored: {exc.code}"})
                continue
            imported.append({"name": e.key, "line": e.line, "version": meta.latest_version})
    skipped.sort(key=lambda s: int(s["line"]))
    errors = [s for s in skipped if s["reason"] not in _BENIGN]
    backend.audit(
        scope,
        "import",
        result="dry-run" if dry_run else ("partial" if errors else "ok"),
        detail={
            "file": file.name,
            "format": kind.value,
            "imported": [i["name"] for i in imported],
            "skipped_lines": [s["line"] for s in skipped],
        },
    )
    if state.json:
        print_json(
            {
                "scope": scope.path(),
                "file": str(file),
                "format": kind.value,
                "dry_run": dry_run,
                "imported": imported,
                "skipped": skipped,
            }
        )
    else:
        out = sys.stdout
        verb = "would import" if dry_run else "imported"
        names = ", ".join(i["name"] for i in imported)
        out.write(f"{verb} {len(imported)} secret{'s' if len(imported) != 1 else ''} into {scope.path()}")
        out.write(f": {names}\n" if names else "\n")
        quiet = [s for s in skipped if s["reason"] == "not an export line"]
        for s in skipped:
            if s["reason"] == "not an export line":
                continue
            who = f" ({s['name']})" if s.get("name") else ""
            out.write(f"skipped line {s['line']}{who}: {s['reason']}\n")
        if quiet:
            out.write(f"skipped {len(quiet)} other line{'s' if len(quiet) != 1 else ''}: not export lines\n")
        out.flush()
    if errors:
        lines = ", ".join(str(s["line"]) for s in errors)
        raise InvalidInput(
            f"{len(errors)} line{'s' if len(errors) != 1 else ''} of {file.name} could not be imported "
            f"(line {lines}); the other lines were {'checked' if dry_run else 'imported'}"
        )


# -- export ----------------------------------------------------------------------------------------
class ExportFormat(StrEnum):
    dotenv = "dotenv"
    json = "json"
    yaml = "yaml"


def dotenv_quote(value: str) -> str:
    """Quote a value so python-dotenv (and keybroker's import) read back exactly ``value``.

    Double quotes with ``\\\\ \\" \\n \\r`` escapes; a value containing ``${`` is single-quoted
    instead, which keybroker's import never expands (python-dotenv expands ``${`` in any quoting,
    so such a value only round-trips with ``interpolate=False``)."""
    if "${" in value:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped + '"'


def render(values: dict[str, str], fmt: ExportFormat) -> str:
    if fmt is ExportFormat.dotenv:
        return "".join(f"{k}={dotenv_quote(v)}\n" for k, v in values.items())
    if fmt is ExportFormat.json:
        return json.dumps(values, indent=2, ensure_ascii=False) + "\n"
    import yaml

    return str(yaml.safe_dump(values, default_flow_style=False, allow_unicode=True, sort_keys=False))


def _text_values(values: dict[str, SecretValue], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in sorted(values):
        try:
            out[name] = values[name].reveal_bytes().decode("utf-8")
        except UnicodeDecodeError:
            warn(f"{name} is binary (not UTF-8) and cannot be {what}; left out")
    return out


def export(
    ctx: typer.Context,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="dotenv, json or yaml.")
    ] = ExportFormat.dotenv,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output-file", "-o", help="Write to this file (mode 0600) instead of stdout.", dir_okay=False
        ),
    ] = None,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Print every current secret of a project environment as dotenv, JSON or YAML."""
    state = get_state(ctx)
    scope = state.scope(project, env)
    backend = state.backend(passphrase_file)
    values = _text_values(backend.export(scope), "exported")
    # audited before anything leaves the process (fail closed; a server audits on its side)
    backend.audit(
        scope,
        "export",
        detail={"format": fmt.value, "names": list(values), "to": "file" if output_file else "stdout"},
    )
    data = render(values, fmt).encode("utf-8")
    if output_file is None:
        write_stdout(data)
        return
    try:
        write_private(output_file, data)
    except OSError as exc:
        raise InvalidInput(f"cannot write {output_file}: {exc.strerror or type(exc).__name__}") from None
    sys.stderr.write(f"exported {len(values)} secrets from {scope.path()} to {output_file}\n")


# -- run -------------------------------------------------------------------------------------------
# Never handed to the child: what would let it unseal the vault or act as the caller.
_WITHHELD = (
    "KEYBROKER_SESSION",
    "KEYBROKER_DEV_ROOT_KEY",
    "KEYBROKER_PASSPHRASE_FILE",
    "KEYBROKER_KEY_FILE",
    "KEYBROKER_TOKEN",
    "KEYBROKER_TOKEN_FILE",
)


def env_var_name(name: str) -> str:
    """``OPENAI_API_KEY`` stays; a path name ``openai/api-key`` becomes ``OPENAI_API_KEY``."""
    return name if "/" not in name and "-" not in name else re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


def _pump(src: IO[bytes], dst: IO[bytes], masker: StreamMasker | None) -> None:
    fd = src.fileno()
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out = masker.feed(chunk) if masker else chunk
            if out:
                dst.write(out)
                dst.flush()
        if masker:
            tail = masker.flush()
            if tail:
                dst.write(tail)
                dst.flush()
    except (BrokenPipeError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            src.close()


def _binary(stream: Any) -> IO[bytes]:
    buf = getattr(stream, "buffer", None)
    return buf if buf is not None else stream  # type: ignore[no-any-return]


def run(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after `--`.")],
    no_masking: Annotated[
        bool, typer.Option("--no-masking", help="Do not mask secret values in the command's output.")
    ] = False,
    proxy_ttl: Annotated[
        int,
        typer.Option("--proxy-ttl", min=1, help="Seconds the proxy tokens of proxy-only secrets stay valid."),
    ] = 3600,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    passphrase_file: PassphraseFileOpt = None,
) -> None:
    """Run a command with the environment's secrets as environment variables.

    Secret values the command prints to stdout/stderr are masked (as `op run` does); the exit
    code is passed through; SIGINT and SIGTERM are forwarded to the command. A proxy-only secret
    is never handed over: the command gets a proxy token (kbp_...) under its name instead, and
    the variables pointing the provider SDKs at the gateway (OPENAI_BASE_URL, ANTHROPIC_BASE_URL,
    KEYBROKER_GATEWAY_URL). The gateway is KEYBROKER_GATEWAY_URL, else the server's (with
    --addr), else http://127.0.0.1:8270/gw.
    """
    state = get_state(ctx)
    scope = state.scope(project, env)
    backend = state.backend(passphrase_file)
    proxied = sorted(
        m.name
        for m in backend.list_secrets(scope)
        if m.proxy_only and m.current_version is not None and m.kind != "keypair"
    )
    values = backend.export(scope, for_use=True)
    for name in proxied:
        values.pop(name, None)  # never the value of a proxy-only secret, whatever export says
    proxy = ProxyEnvironment({})
    if proxied:
        gateway = (state.settings.gateway_url or "").strip() or None
        if gateway is None and not backend.remote:
            gateway = DEFAULT_GATEWAY_URL
        proxy = backend.proxy_env(scope, proxied, ttl_s=proxy_ttl, gateway_url=gateway)
    given: dict[str, SecretValue] = {**values, **{n: t for n, t in proxy.tokens.items() if n in proxied}}
    child_env = {k: v for k, v in os.environ.items() if k not in _WITHHELD}
    injected: dict[str, str] = {}
    for name in sorted(given, key=lambda n: ("/" in n or "-" in n, n)):
        var = env_var_name(name)
        if var in injected:
            warn(f"{name} would be ${var}, which {injected[var]} already is; left out")
            continue
        try:
            child_env[var] = given[name].reveal_bytes().decode("utf-8")
        except UnicodeDecodeError:
            warn(f"{name} is binary (not UTF-8) and cannot be an environment variable; left out")
            continue
        injected[var] = name
    for var, text in proxy.extra.items():
        if var in injected:
            warn(f"${var} points the SDKs at the gateway; {injected[var]} left out")
            del injected[var]
        child_env[var] = text
    secret_bytes = [given[n].reveal_bytes() for n in injected.values()]
    # audited before the child starts (fail closed); core/the server audit the proxy tokens
    backend.audit(
        scope,
        "run",
        detail={
            "names": sorted(injected.values()),
            "proxied": sorted(n for n in injected.values() if n in proxy.tokens),
            "command": Path(command[0]).name,
            "masking": not no_masking,
        },
    )
    state.close()  # the child may run for long: do not hold database connections meanwhile
    pipe = None if no_masking else subprocess.PIPE
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        proc = subprocess.Popen(command, env=child_env, stdout=pipe, stderr=pipe)
    except FileNotFoundError:
        sys.stderr.write(f"error: command not found: {command[0]}\n")
        raise typer.Exit(127) from None
    except PermissionError:
        sys.stderr.write(f"error: permission denied: {command[0]}\n")
        raise typer.Exit(126) from None
    pumps: list[threading.Thread] = []
    if not no_masking:
        assert proc.stdout is not None and proc.stderr is not None
        for src, dst in ((proc.stdout, _binary(sys.stdout)), (proc.stderr, _binary(sys.stderr))):
            t = threading.Thread(target=_pump, args=(src, dst, StreamMasker(secret_bytes)), daemon=True)
            t.start()
            pumps.append(t)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
        for t in pumps:
            t.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise typer.Exit(128 - rc if rc < 0 else rc)
