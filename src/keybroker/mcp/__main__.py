"""``python -m keybroker.mcp [--transport stdio|http] ...`` = ``keybroker mcp ...``."""

from __future__ import annotations

import sys

import typer

from keybroker.cli._app import KeybrokerGroup
from keybroker.mcp._cli import register


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(
        cls=KeybrokerGroup, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False
    )

    @app.callback()
    def _root() -> None:
        """keybroker MCP server."""

    register(app)
    app(args=["mcp", *(sys.argv[1:] if argv is None else argv)], prog_name="keybroker")


if __name__ == "__main__":
    main()
