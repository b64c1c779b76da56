"""Parse ``.env`` files and shell rc ``export`` lines into key/value pairs, without I/O.

Why a parser of our own rather than python-dotenv: ``keybroker import`` must report *which* lines it
could not read (with correct line numbers, and without ever echoing a value), and it must not expand
``${...}`` inside single quotes, where a secret containing ``${`` is meant literally. Everything else
follows python-dotenv 1.x (``dotenv_values(interpolate=True)``), whose grammar is ported here regex
for regex; the test-suite uses python-dotenv as an oracle.

Deliberate differences from python-dotenv, all documented on :func:`parse_dotenv`:

* a key without ``=`` (python-dotenv: value ``None``) is not an entry; it is reported in ``skipped``
  with the reason ``"no '=' (no value)"``, and it hides any earlier binding of the same key;
* single-quoted values are not expanded (python-dotenv expands them, see its issue #422);
* line numbers point at the line where the binding's key is, not at the blank lines before it;
* ``environ=None`` means an empty environment, not ``os.environ``: this module does no I/O and reads
  no global state, so callers pass ``os.environ`` explicitly when they want it.

``skipped`` reasons and previews never contain a value: they may be printed to a terminal or a log.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DotenvEntry", "DotenvResult", "DotenvSkip", "parse_dotenv", "parse_shell_exports"]

_PREVIEW_MAX = 20

REASON_NO_VALUE = "no '=' (no value)"
REASON_NEEDS_SHELL = "needs shell evaluation"
REASON_NOT_EXPORT = "not an export line"


@dataclass(frozen=True)
class DotenvEntry:
    """One binding: ``line`` is the 1-based line where it starts (multi-line values span more)."""

    key: str
    value: str = field(repr=False)  # secrets stay out of reprs and tracebacks
    line: int


@dataclass(frozen=True)
class DotenvSkip:
    """A line that gave no entry. ``reason`` and ``text_preview`` never contain a value."""

    line: int
    reason: str
    text_preview: str


@dataclass(frozen=True)
class DotenvResult:
    """Entries in first-definition order (like a dict: the last binding of a key wins) and skips."""

    entries: list[DotenvEntry]
    skipped: list[DotenvSkip]

    def as_dict(self) -> dict[str, str]:
        """The entries as ``{key: value}``, for callers that do not need line numbers."""
        return {entry.key: entry.value for entry in self.entries}


# --- the python-dotenv grammar (dotenv/parser.py, 1.x) ------------------------------------------------

_newline = re.compile(r"(\r\n|\n|\r)")
_multiline_whitespace = re.compile(r"\s*", re.MULTILINE)
_whitespace = re.compile(r"[^\S\r\n]*")
_export = re.compile(r"(?:export[^\S\r\n]+)?")
_single_quoted_key = re.compile(r"'([^']+)'")
_unquoted_key = re.compile(r"([^=\#\s]+)")
_equal_sign = re.compile(r"(=[^\S\r\n]*)")
_single_quoted_value = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_double_quoted_value = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_unquoted_value = re.compile(r"([^\r\n]*)")
_comment = re.compile(r"(?:[^\S\r\n]*#[^\r\n]*)?")
_end_of_line = re.compile(r"[^\S\r\n]*(?:\r\n|\n|\r|$)")
_rest_of_line = re.compile(r"[^\r\n]*(?:\r|\n|\r\n)?")
_double_quote_escapes = re.compile(r"\\[\\'\"abfnrtv]")
_single_quote_escapes = re.compile(r"\\[\\']")
_inline_comment = re.compile(r"\s+#.*")
_posix_variable = re.compile(r"\$\{(?P<name>[^\}:]*)(?::-(?P<default>[^\}]*))?\}")


class _ParseError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Reader:
    """A cursor over the text that counts lines as it advances."""

    __slots__ = ("line", "pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def has_next(self) -> bool:
        return self.pos < len(self.text)

    def peek(self, count: int) -> str:
        return self.text[self.pos : self.pos + count]

    def read_regex(self, regex: re.Pattern[str], reason: str = "") -> tuple[str, ...]:
        match = regex.match(self.text, self.pos)
        if match is None:
            raise _ParseError(reason)
        self.line += len(_newline.findall(self.text, self.pos, match.end()))
        self.pos = match.end()
        return match.groups()


@dataclass(frozen=True)
class _Binding:
    key: str | None
    value: str | None = field(repr=False)
    quote: str  # "'", '"' or "" (unquoted or no value)
    line: int
    error: str | None  # reason, when the statement could not be parsed
    preview: str


def _preview(text: str) -> str:
    """The name before ``=`` (or the first word) on the statement's first line, but only when it
    looks like an identifier of at most 32 characters; otherwise nothing. A raw token pasted on a
    line of its own must not be echoed, not even in part."""
    first_line = _newline.split(text, maxsplit=1)[0]
    head = first_line.split("=", 1)[0].strip()
    word = (
        head.split()[-1]
        if head.startswith("export ") and len(head.split()) > 1
        else (head.split() or [""])[0]
    )
    return word if _preview_ok.fullmatch(word) else ""


_preview_ok = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,31}")


def _decode_escapes(regex: re.Pattern[str], string: str) -> str:
    def decode_match(match: re.Match[str]) -> str:
        return codecs.decode(match.group(0), "unicode-escape")

    return regex.sub(decode_match, string)


def _parse_key(reader: _Reader) -> str | None:
    char = reader.peek(1)
    if char == "#":
        return None
    if char == "'":
        (key,) = reader.read_regex(_single_quoted_key, "invalid quoted key")
    elif char == "=":
        raise _ParseError("missing key before '='")
    else:
        (key,) = reader.read_regex(_unquoted_key, "invalid key")
    return key


def _parse_value(reader: _Reader) -> tuple[str, str]:
    char = reader.peek(1)
    if char == "'":
        (value,) = reader.read_regex(_single_quoted_value, "unterminated single-quoted value")
        return _decode_escapes(_single_quote_escapes, value), "'"
    if char == '"':
        (value,) = reader.read_regex(_double_quoted_value, "unterminated double-quoted value")
        return _decode_escapes(_double_quote_escapes, value), '"'
    if char in ("", "\n", "\r"):
        return "", ""
    (part,) = reader.read_regex(_unquoted_value)
    return _inline_comment.sub("", part).rstrip(), ""


def _parse_binding(reader: _Reader) -> _Binding | None:
    """Port of python-dotenv's ``parse_binding``; ``None`` at end of text."""
    reader.read_regex(_multiline_whitespace)
    if not reader.has_next():
        return None
    start, line = reader.pos, reader.line
    key: str | None = None
    try:
        reader.read_regex(_export)
        key = _parse_key(reader)
        reader.read_regex(_whitespace)
        value: str | None
        quote = ""
        if reader.peek(1) == "=":
            (equal_sign,) = reader.read_regex(_equal_sign)
            # `KEY= # comment` is an empty value; `KEY=#x` is the value "#x" (python-dotenv 1.x).
            if len(equal_sign) > 1 and reader.peek(1) == "#":
                value = ""
            else:
                value, quote = _parse_value(reader)
        else:
            value = None
        reader.read_regex(_comment)
        after = "unexpected text after the value" if value is not None else "unexpected text after the key"
        reader.read_regex(_end_of_line, after)
        return _Binding(key, value, quote, line, None, "" if key is None else _preview(key))
    except _ParseError as exc:
        reader.read_regex(_rest_of_line)
        # Show the key when we got that far: text after it may be a value.
        preview = _preview(key) if key is not None else _preview(reader.text[start:])
        return _Binding(None, None, "", line, exc.reason, preview)


def _bindings(text: str) -> list[_Binding]:
    reader = _Reader(text.removeprefix("\ufeff"))
    out: list[_Binding] = []
    while reader.has_next():
        binding = _parse_binding(reader)
        if binding is None:
            break
        out.append(binding)
    return out


def parse_dotenv(text: str, *, expand: bool = True, environ: Mapping[str, str] | None = None) -> DotenvResult:
    """Parse the text of a ``.env`` file the way ``dotenv.dotenv_values(interpolate=True)`` does.

    ``${VAR}`` and ``${VAR:-default}`` (when ``expand``) resolve from bindings earlier in the file
    first, then from ``environ`` (``None`` means empty: pass ``os.environ`` explicitly), then the
    default, else ``""``; single-quoted values are never expanded. Malformed statements and keys with
    no ``=`` go to ``skipped`` with their 1-based line and the rest of the file is still read. A key
    bound twice keeps the last binding (and its line) at the position of the first, like a dict.

    Raises nothing: every problem in the text is reported in ``skipped``.
    """
    env: Mapping[str, str] = environ if environ is not None else {}
    resolved: dict[str, str | None] = {}  # what python-dotenv's resolver sees (None for `KEY` alone)
    final: dict[str, DotenvEntry | None] = {}
    skipped: list[DotenvSkip] = []

    def lookup(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in resolved:
            return resolved[name] or ""
        if name in env:
            return env[name]
        return default or ""

    for binding in _bindings(text):
        if binding.error is not None:
            skipped.append(DotenvSkip(binding.line, binding.error, binding.preview))
            continue
        if binding.key is None:  # a comment
            continue
        value = binding.value
        if value is not None and expand and binding.quote != "'":
            value = _posix_variable.sub(lookup, value)
        resolved[binding.key] = value
        if value is None:
            final[binding.key] = None
            skipped.append(DotenvSkip(binding.line, REASON_NO_VALUE, binding.preview))
        else:
            final[binding.key] = DotenvEntry(binding.key, value, binding.line)
    entries = [entry for entry in final.values() if entry is not None]
    return DotenvResult(entries=entries, skipped=skipped)


# --- shell rc files ---------------------------------------------------------------------------------

_export_assign = re.compile(r"[ \t]*export[ \t]+([A-Za-z_][A-Za-z0-9_]*)=")
_export_bare = re.compile(r"[ \t]*export[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*(?:#.*)?\r?$")
_after_word = re.compile(r"[ \t]*(?:;[ \t]*)?(?:#[^\n]*)?\r?(?:\n|$)")
# After `$` these start a parameter expansion, command substitution or $'...' / $"..." quoting.
_EXPANDS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_{(@*#?$!-'\"")
_EXPANDS_IN_DOUBLE = _EXPANDS - {"'", '"'}
_WORD_END = frozenset(" \t\r\n;&|")
_NEEDS_SHELL = frozenset("()<>`")


def _shell_word(text: str, start: int) -> tuple[str | None, str | None, int]:
    """Read one shell word from ``start``: ``(value, reason, end)``; exactly one of the first two is set.

    Shell (not dotenv) quoting: '...' is literal; in "..." only \\ \" \\$ \\` and a backslash-newline
    are escapes; unquoted, a backslash quotes the next character. Anything that would make the shell
    run or substitute something (``$VAR``, ``$(...)``, backticks, ``~``, ``(``) gives a reason instead.
    """
    out: list[str] = []
    needs_shell = False
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char == "'":
            close = text.find("'", i + 1)
            if close < 0:
                return None, "unterminated single-quoted value", n
            out.append(text[i + 1 : close])
            i = close + 1
        elif char == '"':
            i += 1
            while True:
                if i >= n:
                    return None, "unterminated double-quoted value", n
                inner = text[i]
                if inner == '"':
                    i += 1
                    break
                nxt = text[i + 1 : i + 2]
                if inner == "\\" and nxt == "\n":
                    i += 2
                    continue
                if inner == "\\" and nxt in ('"', "\\", "$", "`"):
                    out.append(nxt)
                    i += 2
                    continue
                if (inner == "$" and nxt != "" and nxt in _EXPANDS_IN_DOUBLE) or inner == "`":
                    needs_shell = True
                out.append(inner)
                i += 1
        elif char in _WORD_END:
            break
        elif char == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt != "\n":
                out.append(nxt)
            i += 2
        else:
            nxt = text[i + 1 : i + 2]
            if char in _NEEDS_SHELL or (char == "$" and nxt != "" and nxt in _EXPANDS):
                needs_shell = True
            elif char == "~" and (i == start or text[i - 1] == ":"):
                needs_shell = True  # tilde expansion
            out.append(char)
            i += 1
    if needs_shell:
        return None, REASON_NEEDS_SHELL, i
    return "".join(out), None, i


def parse_shell_exports(text: str) -> DotenvResult:
    """Take the ``export NAME=value`` lines of a shell rc file (``~/.zshrc``, ``~/.bashrc``).

    Nothing is evaluated: a value that needs the shell (``$VAR``, ``$(...)``, backticks, ``~``) is
    skipped with ``"needs shell evaluation"``, and that skip hides an earlier export of the same name
    (the shell's final value is unknown). Quoting follows the shell, not dotenv: ``"a\\nb"`` keeps
    its backslash. Every other non-blank, non-comment line (aliases, functions, ``if``, ``source``,
    plain ``NAME=value``) is skipped with ``"not an export line"``; an ``export`` inside a function
    or ``if`` body is still taken, since it is what an interactive shell usually ends up with.

    Raises nothing: every problem in the text is reported in ``skipped``.
    """
    text = text.removeprefix("\ufeff")
    final: dict[str, DotenvEntry | None] = {}
    skipped: list[DotenvSkip] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        eol = text.find("\n", pos)
        eol = n if eol < 0 else eol
        next_pos = eol + 1
        stripped = text[pos:eol].strip()
        if stripped and not stripped.startswith("#"):
            assign = _export_assign.match(text, pos, eol)
            if assign is not None:
                key = assign.group(1)
                value, reason, end = _shell_word(text, assign.end())
                if reason is not None and reason.startswith("unterminated"):
                    pass  # resume on the next line: the quote may simply be unbalanced here
                else:
                    tail = _after_word.match(text, end)
                    if tail is None:
                        value, reason = None, REASON_NEEDS_SHELL
                        tail_end = text.find("\n", end)
                        next_pos = n if tail_end < 0 else tail_end + 1
                    else:
                        next_pos = tail.end()
                if value is not None:
                    final[key] = DotenvEntry(key, value, line)
                else:
                    final[key] = None
                    skipped.append(DotenvSkip(line, reason or REASON_NEEDS_SHELL, _preview(key)))
            elif (bare := _export_bare.match(text, pos, eol)) is not None:
                skipped.append(DotenvSkip(line, REASON_NO_VALUE, _preview(bare.group(1))))
            else:
                skipped.append(DotenvSkip(line, REASON_NOT_EXPORT, _preview(stripped)))
        line += text.count("\n", pos, min(next_pos, n))
        pos = next_pos
    entries = [entry for entry in final.values() if entry is not None]
    return DotenvResult(entries=entries, skipped=skipped)
