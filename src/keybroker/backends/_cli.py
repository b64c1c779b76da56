"""``keybroker migrate --from URL --to URL``: the CLI face of :func:`keybroker.backends.migrate`.

:func:`register` adds the command to a Typer app. ``keybroker://`` URLs reach the local vault
through the CLI's own state when the app's root context carries one (an object with
``unsealed_service()`` and ``principal``), else through ``native_opener``, else through the
environment (see :mod:`keybroker.backends._url`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from keybroker.backends._base import KeyStore
from keybroker.backends._migrate import MigrationReport, migrate
from keybroker.backends._url import NativeOpener, open_store
from keybroker.core import Principal, Scope, SecretService
from keybroker.errors import KeybrokerError

__all__ = ["register"]


def _state_opener(ctx: typer.Context) -> NativeOpener | None:
    state = ctx.find_root().obj
    unsealed = getattr(state, "unsealed_service", None)
    principal = getattr(state, "principal", None)
    if not callable(unsealed) or not isinstance(principal, Principal):
        return None

    def opener(scope: Scope) -> tuple[SecretService, Principal]:
        service = unsealed()
        assert isinstance(service, SecretService)
        return service, principal

    return opener


def _print_report(console: Console, report: MigrationReport) -> None:
    verb = "would copy" if report.dry_run else "copied"
    console.print(
        Text(
            f"{report.source} -> {report.target}: {len(report.copied)} {verb} "
            f"({report.versions_written} version(s)), {len(report.skipped)} skipped, "
            f"{len(report.failed)} failed, of {report.total}"
        )
    )
    rows = [i for i in report.items if i.status != "skipped" or i.reason]
    if rows:
        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("secret", "status", "versions", "reason"):
            table.add_column(col)
        for i in rows:
            table.add_row(Text(i.name), Text(i.status), Text(str(i.versions)), Text(i.reason))
        console.print(table)
    if report.interrupted:
        console.print(Text(f"interrupted: {report.interrupted}"))
        console.print(
            Text("run the same command again (same --state-file) to resume; nothing is copied twice")
        )


def register(app: typer.Typer, *, native_opener: NativeOpener | None = None) -> None:
    """Add ``migrate`` to ``app``."""

    @app.command("migrate")
    def migrate_cmd(
        ctx: typer.Context,
        source: Annotated[str, typer.Option("--from", help="Source store URL (nothing is deleted there).")],
        target: Annotated[str, typer.Option("--to", help="Target store URL.")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show what would be copied; write nothing.")
        ] = False,
        state_file: Annotated[
            Path | None,
            typer.Option("--state-file", help="Remember progress here so an interrupted run can resume."),
        ] = None,
        prefix: Annotated[
            str, typer.Option("--prefix", help="Only secrets whose names start with this.")
        ] = "",
        no_versions: Annotated[
            bool, typer.Option("--current-only", help="Copy current values only, not version history.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Copy every secret from one store to another: vault://, aws-sm://, file://, env://,
        keybroker://PROJECT/ENV. Credentials come from the environment, never the URL.
        Resumable with --state-file; exits 1 if anything failed."""
        err = Console(file=sys.stderr, highlight=False, width=None if sys.stderr.isatty() else 200)
        out = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 200)
        opener = _state_opener(ctx) or native_opener
        stores: list[KeyStore] = []
        try:
            src = open_store(source, native=opener)
            stores.append(src)
            dst = open_store(target, native=opener)
            stores.append(dst)
            show_bar = not as_json and err.is_terminal
            with Progress(
                TextColumn("[bold]migrate"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[name]}"),
                TimeElapsedColumn(),
                console=err,
                disable=not show_bar,
                transient=False,
            ) as bar:
                task = bar.add_task("migrate", total=None, name="")

                def progress(done: int, total: int, name: str) -> None:
                    bar.update(task, completed=done, total=total, name=name)

                report = migrate(
                    src,
                    dst,
                    dry_run=dry_run,
                    progress=progress,
                    state_file=state_file,
                    prefix=prefix,
                    with_versions=not no_versions,
                )
        except KeybrokerError as exc:
            if as_json:
                out.print_json(json.dumps({"error": exc.to_dict()}))
            else:
                err.print(Text(f"error: {exc.message}"))
            raise typer.Exit(1) from None
        finally:
            for s in stores:
                try:
                    s.close()
                except KeybrokerError:
                    pass
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
        else:
            _print_report(out, report)
        if not report.ok:
            raise typer.Exit(1)
