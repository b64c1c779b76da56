"""Terminal input and output for the CLI: consoles, JSON, prompts, values, durations.

Results go to stdout; warnings and diagnostics go to stderr. Secret values are written with
plain ``write`` calls, never through Rich (which would interpret markup and wrap lines).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from datetime import UTC, date, datetime, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from keybroker.crypto import SecretValue
from keybroker.errors import InvalidInput

__all__ = [
    "OutputFormat",
    "confirm",
    "err_console",
    "is_interactive",
    "out_console",
    "parse_duration",
    "parse_expires",
    "parse_since",
    "print_json",
    "prompt_passphrase",
    "read_passphrase_file",
    "read_passphrase_stdin",
    "read_value",
    "text",
    "warn",
    "write_stdout",
]


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


def is_interactive() -> bool:
    """True when a person can answer a prompt (stdin is a terminal). Tests patch this."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: Any) -> int | None:
    try:
        return None if stream.isatty() else 200
    except (AttributeError, ValueError):
        return 200


def out_console() -> Console:
    return Console(file=sys.stdout, highlight=False, width=_width(sys.stdout))


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, width=_width(sys.stderr))


def text(value: object) -> Text:
    """Plain text for a Rich cell: user data is never parsed as markup."""
    return Text("" if value is None else str(value))


def _json_default(o: object) -> object:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def write_stdout(data: bytes) -> None:
    """Write raw bytes to stdout (secret values: no markup, no re-encoding)."""
    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is not None:
        buf.write(data)
        buf.flush()
    else:  # pragma: no cover - a text-only stdout
        sys.stdout.write(data.decode("utf-8", errors="surrogateescape"))
        sys.stdout.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def confirm(question: str, yes: bool, *, refuse: str) -> None:
    """Go on if ``yes`` or a person at a terminal says yes; otherwise stop. ``refuse`` is the
    error when nobody can be asked (scripts must pass ``--yes``)."""
    if yes:
        return
    if not is_interactive():
        raise InvalidInput(f"{refuse}: pass --yes (no terminal to ask)")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)


# -- durations and dates ---------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)([smhdwy])")


def parse_duration(value: str, what: str = "duration") -> timedelta:
    """``90d``, ``12h``, ``1h30m``, ``2w``, ``1y`` (units s m h d w y)."""
    v = value.strip().lower()
    if not v or not re.fullmatch(r"(?:\d+[smhdwy])+", v):
        raise InvalidInput(f"invalid {what} {value!r}: use a number and a unit, such as 30m, 12h, 90d or 1y")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(v)))


def _parse_when(value: str) -> datetime | None:
    v = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            return datetime.fromisoformat(v).replace(tzinfo=UTC)
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_expires(value: str, now: datetime) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise), or a duration from now."""
    when = _parse_when(value)
    if when is not None:
        return when
    try:
        return now + parse_duration(value)
    except InvalidInput:
        raise InvalidInput(
            f"invalid expiry {value!r}: use an ISO date (2026-12-31), a date-time, or a duration such as 90d"
        ) from None


def parse_since(value: str, now: datetime) -> datetime:
    """An ISO date or date-time, or a duration meaning that long ago (``1h``: the last hour)."""
    when = _parse_when(value)
    if when is not None:
        return when
    try:
        return now - parse_duration(value)
    except InvalidInput:
        raise InvalidInput(
            f"invalid --since {value!r}: use an ISO date or date-time, or a duration such as 1h or 7d"
        ) from None


# -- values and passphrases ------------------------------------------------------------------------
def _read_stdin_bytes() -> bytes:
    buf = getattr(sys.stdin, "buffer", None)
    if buf is not None:
        data: bytes = buf.read()
        return data
    return sys.stdin.read().encode("utf-8", errors="surrogateescape")  # pragma: no cover


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def read_value(value: str | None, from_stdin: bool, file: Path | None, *, what: str = "value") -> SecretValue:
    """The secret value from exactly one place: the argument (warned: it lands in shell history),
    stdin (one trailing newline dropped), a file (bytes as they are), or a hidden prompt."""
    given = [
        n
        for n, present in (("VALUE", value is not None), ("--stdin", from_stdin), ("--file", file))
        if present
    ]
    if len(given) > 1:
        raise InvalidInput(f"give the {what} one way only, not {' and '.join(given)}")
    if value is not None:
        warn(
            f"a {what} given as an argument lands in your shell history; prefer --stdin, --file or the prompt"
        )
        return SecretValue(value)
    if from_stdin:
        return SecretValue(_strip_newline(_read_stdin_bytes()))
    if file is not None:
        try:
            return SecretValue(file.read_bytes())
        except OSError as exc:
            raise InvalidInput(f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
    if not is_interactive():
        raise InvalidInput(f"no {what} given: pass --stdin, --file F, or run at a terminal to be prompted")
    entered = typer.prompt(what.capitalize(), hide_input=True, err=True)
    if not entered:
        raise InvalidInput(f"the {what} is empty")
    return SecretValue(entered)


def read_passphrase_file(path: Path) -> str:
    """The first line of a passphrase file. Warns when others may read the file."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read the passphrase file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"the passphrase file {path} can be read by other users; chmod 600 it")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"the passphrase file {path} is not UTF-8 text") from None
    passphrase = lines[0] if lines else ""
    if not passphrase:
        raise InvalidInput(f"the passphrase file {path} is empty")
    return passphrase


def read_passphrase_stdin() -> str:
    try:
        data = _read_stdin_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the passphrase on stdin is not UTF-8 text") from None
    lines = data.splitlines()
    if not lines or not lines[0]:
        raise InvalidInput("no passphrase on stdin")
    return lines[0]


def prompt_passphrase(*, twice: bool) -> str:
    if not is_interactive():
        raise InvalidInput("no passphrase: use --passphrase-file F, --passphrase-stdin, or a terminal")
    entered: str = typer.prompt("Vault passphrase", hide_input=True, confirmation_prompt=twice, err=True)
    if not entered:
        raise InvalidInput("the passphrase is empty")
    return entered
