"""``python -m keybroker.server``: ``keybroker serve`` configured only by ``KEYBROKER_*``
variables (for process managers, containers and benchmarks)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from keybroker.errors import KeybrokerError
from keybroker.server._serve import serve
from keybroker.server._settings import ServerSettings


def main() -> int:
    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        serve(ServerSettings(), echo)
    except KeybrokerError as exc:
        echo(f"error: {exc.message}")
        return 2
    except ValidationError as exc:
        bad = ", ".join(f"KEYBROKER_{str(e['loc'][0]).upper()}" for e in exc.errors() if e.get("loc"))
        echo(f"error: invalid setting(s): {bad or 'unknown'}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
