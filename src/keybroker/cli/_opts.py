"""Option types shared by many commands (Typer reads them from the annotations)."""

from pathlib import Path
from typing import Annotated

import typer

from keybroker.cli._io import OutputFormat

__all__ = [
    "EnvOpt",
    "FileOpt",
    "OutputOpt",
    "PassphraseFileOpt",
    "ProjectOpt",
    "StdinOpt",
    "YesOpt",
]

ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project (default: KEYBROKER_PROJECT, .keybroker.toml, 'default')."),
]
EnvOpt = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Environment (default: KEYBROKER_ENV, .keybroker.toml, 'dev')."),
]
OutputOpt = Annotated[
    OutputFormat | None, typer.Option("--output", help="Output format: text or json.", case_sensitive=False)
]
PassphraseFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="Unseal for this command only with the passphrase in this file (or KEYBROKER_PASSPHRASE_FILE).",
        dir_okay=False,
    ),
]
StdinOpt = Annotated[
    bool, typer.Option("--stdin", help="Read the value from stdin (one trailing newline dropped).")
]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Read the value from this file (bytes as they are).", dir_okay=False),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
