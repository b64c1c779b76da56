"""The ``keybroker`` command line (Typer + Rich). It calls core only: no SQL, no raw crypto."""

from keybroker.cli._app import app, main

__all__ = ["app", "main"]
