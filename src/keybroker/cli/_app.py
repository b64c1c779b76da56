"""The ``keybroker`` command tree and its one error boundary.

Every :class:`~keybroker.errors.KeybrokerError` leaves as one line on stderr,
``error: <message>`` (a JSON object with the code under ``--output json``) and exit code 1;
Typer's usage errors exit 2. Anything unexpected is one line too, naming only the exception
type (its text could hold anything), with a hint to re-run with ``KEYBROKER_DEBUG=1``.
"""

import json
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from keybroker import __version__
from keybroker.backends import _cli as _backends_cli
from keybroker.cli import _cmd_data, _cmd_misc, _cmd_secret, _cmd_vault
from keybroker.cli._io import OutputFormat
from keybroker.cli._opts import EnvOpt, OutputOpt, ProjectOpt
from keybroker.cli._state import State, new_request_principal, output_of
from keybroker.config import load_settings
from keybroker.errors import KeybrokerError
from keybroker.gateway import _cli as _gateway_cli
from keybroker.mcp import _cli as _mcp_cli
from keybroker.server import _cli as _server_cli

__all__ = ["app", "main"]


_ARGS_KEY = "keybroker.args"


def _one_line(message: str) -> str:
    return " ".join(message.split())


def report_error(ctx: Any, message: str, code: str) -> None:
    msg = _one_line(message)
    if output_of(ctx) is OutputFormat.json:
        sys.stderr.write(json.dumps({"error": msg, "code": code}) + "\n")
    else:
        sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def _debug() -> bool:
    return os.environ.get("KEYBROKER_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


class KeybrokerGroup(TyperGroup):
    """The root group: turns errors from any command below it into one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        # what follows the global options (click clears it before the root callback runs)
        ctx.meta[_ARGS_KEY] = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except (TyperException, Exit, Abort):
            raise
        except KeybrokerError as exc:
            report_error(ctx, exc.message, exc.code)
            raise Exit(1) from None
        except BrokenPipeError:
            raise Exit(1) from None
        except Exception as exc:
            if _debug():
                raise
            what = type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                what += f" ({exc.strerror})"
            report_error(
                ctx,
                f"unexpected {what}; re-run with KEYBROKER_DEBUG=1 to see the traceback",
                "internal_error",
            )
            raise Exit(1) from None


app = typer.Typer(
    name="keybroker",
    cls=KeybrokerGroup,
    help="Secrets and API keys for AI agents and the people who run them: encrypted, versioned, audited.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"keybroker {__version__}\n")
        raise Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    project: ProjectOpt = None,
    env: EnvOpt = None,
    org: Annotated[
        str | None, typer.Option("--org", help="Organization (default: KEYBROKER_ORG or 'default').")
    ] = None,
    output: OutputOpt = None,
    addr: Annotated[
        str | None,
        typer.Option(
            "--addr",
            help="Work against this keybroker server (default: KEYBROKER_ADDR) instead of the local "
            "vault; the token comes from KEYBROKER_TOKEN or KEYBROKER_TOKEN_FILE.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """keybroker: a secret and API-key manager for AI agents."""
    if output is not None:
        ctx.meta["keybroker.output"] = output
    settings = load_settings(addr=addr) if addr is not None else load_settings()
    state = State(
        settings,
        output=output or OutputFormat.text,
        project=project,
        env=env,
        org=org,
        principal=new_request_principal(),
    )
    ctx.obj = state
    ctx.call_on_close(state.close)
    sub = ctx.invoked_subcommand
    asks_help = any(a in ("--help", "-h") for a in ctx.meta.get(_ARGS_KEY, ()))
    if sub in LOCAL_ONLY and state.remote and not asks_help:
        state.require_local(sub)


#: Commands that work on the local vault file only (with a server address set they refuse, in
#: one line, rather than silently act on a local vault the user did not mean).
LOCAL_ONLY = frozenset({"init", "unseal", "seal", "rekey", "keypair", "project", "env", "audit"})


app.command("init")(_cmd_vault.init)
app.command("unseal")(_cmd_vault.unseal)
app.command("seal")(_cmd_vault.seal)
app.command("status")(_cmd_vault.status)
app.add_typer(_cmd_secret.app, name="secret")
app.add_typer(_cmd_misc.project_app, name="project")
app.add_typer(_cmd_misc.env_app, name="env")
app.command("import")(_cmd_data.import_)
app.command("export")(_cmd_data.export)
app.command(
    "run",
    context_settings={"allow_interspersed_args": False},
)(_cmd_data.run)
app.add_typer(_cmd_misc.keypair_app, name="keypair")
app.add_typer(_cmd_misc.audit_app, name="audit")
app.command("rekey")(_cmd_vault.rekey)

# Front ends that live in their own packages add their commands here (each imports its heavy
# dependencies lazily, inside the command).
_server_cli.register(app)
_backends_cli.register(app)
_mcp_cli.register(app)
_gateway_cli.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="keybroker")
