"""keybroker.core._dotenv against python-dotenv as the oracle, plus the documented deviations."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import dotenv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.core._dotenv import (
    DotenvEntry,
    DotenvResult,
    DotenvSkip,
    parse_dotenv,
    parse_shell_exports,
)


def oracle(text: str, environ: Mapping[str, str], *, interpolate: bool = True) -> dict[str, str]:
    """python-dotenv's answer with ``environ`` as the whole process environment; keys without a
    value (``None``) dropped, as keybroker reports them in ``skipped`` instead."""
    logger = logging.getLogger("dotenv.main")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "environ", dict(environ))
        mp.setattr(logger, "disabled", True)  # it logs a warning per unparsable statement
        values = dotenv.dotenv_values(stream=io.StringIO(text), interpolate=interpolate)
    return {k: v for k, v in values.items() if v is not None}


def check(text: str, environ: Mapping[str, str] | None = None) -> DotenvResult:
    env = dict(environ or {})
    result = parse_dotenv(text, environ=env)
    expected = oracle(text, env)
    got = result.as_dict()
    assert got == expected
    assert list(got) == list(expected)  # same (dict) order too
    return result


ENV = {"HOME": "/home/me", "USER": "me", "EMPTY": "", "SHARED": "from-env"}

CASES: dict[str, str] = {
    "unquoted": "A=1\nB=hello world\nC=x=y=z\n",
    "trailing whitespace stripped": "A=value   \nB=  leading\t\n",
    "trailing comment": "A=1 # a comment\nB=2\t# tab comment\n",
    "hash without space is value": "A=a#b\nB=#nocomment\n",
    "empty after space then comment": "A= # just a comment\n",
    "empty values": "A=\nB=''\nC=\"\"\nD=   \n",
    "full-line comments and blanks": "# header\n\n   # indented\nA=1\n\n\n#B=2\nC=3",
    "export prefix": "export A=1\nexport  B='two'\nexport\tC=\"3\"\n",
    "key named export": "export=1\n",
    "single quotes literal": "A='a # not comment'\nB='  spaced  '\nC='a\\nb'\nD='\"dq\"'\n",
    "single quote escapes dotenv decodes": "A='it\\'s'\nB='back\\\\slash'\n",
    "double quote escapes": 'A="a\\nb\\tc\\rd"\nB="q\\"q"\nC="b\\\\s"\nD="s\\\'q"\n',
    "rare double quote escapes": 'A="\\a\\b\\f\\v"\nB="\\x41\\u0041\\z"\n',
    "double quotes keep hash": 'A="a # b"  # real comment\n',
    "multi-line double quoted": 'A="line1\nline2\n  line3"\nB=after\n',
    "multi-line single quoted": "A='line1\nline2'\nB=after\n",
    "crlf line endings": "A=1\r\nB='2'\r\nC=\"x\r\ny\"\r\n",
    "cr only line endings": "A=1\rB=2\r",
    "bom": "\ufeffA=1\n",
    "spaces around equals": "A = 1\nB\t=\t2\n",
    "quoted key": "'my key'=v\n",
    "odd but valid keys": "a.b=1\nx-y=2\nlower=3\n",
    "duplicates last wins": "A=1\nB=2\nA=3\n",
    "no equals hides earlier": "A=1\nA\nB=2\n",
    "no equals at end": "A=1\nB",
    "expand from file": 'A=one\nB=${A}-two\nC="${B}-three"\n',
    "expand from env": 'A=${HOME}/x\nB="${USER}"\n',
    "file beats env": "SHARED=from-file\nA=${SHARED}\n",
    "env used before file definition": "A=${SHARED}\nSHARED=from-file\nB=${SHARED}\n",
    "self reference": "HOME=${HOME}/sub\n",
    "missing var is empty": "A=${NOPE}x\n",
    "default used when unset": 'A=${NOPE:-fallback}\nB="${NOPE:-with space}"\n',
    "default not used when set": "A=${USER:-fallback}\nB=x\nC=${B:-fallback}\n",
    "set but empty beats default (dotenv, not POSIX)": "A=${EMPTY:-fallback}\nB=\nC=${B:-d}\n",
    "key without value expands to empty": "A\nB=${A:-fallback}\n",
    "nested default is not recursive": "A=${NOPE:-${HOME}}\n",
    "dollar without braces not expanded": 'A=$HOME\nB="$USER"\nC=$\n',
    "expansion of multi-line": 'A="x\ny"\nB="${A}!"\n',
    "unterminated brace": "A=${HOME\n",
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_matches_python_dotenv(text: str) -> None:
    check(text, ENV)


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_matches_python_dotenv_without_interpolation(text: str) -> None:
    got = parse_dotenv(text, expand=False, environ=ENV).as_dict()
    assert got == oracle(text, ENV, interpolate=False)


def test_environ_none_means_empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_TEST_SET_IN_PROCESS", "leak")
    result = parse_dotenv("A=${KB_TEST_SET_IN_PROCESS:-d}\n")
    assert result.as_dict() == {"A": "d"}


def test_single_quotes_are_not_expanded_unlike_python_dotenv() -> None:
    text = "A=x\nB='${A}'\nC='pa$${A}ss'\nD=\"${B}\"\n"
    got = parse_dotenv(text, environ=ENV).as_dict()
    assert got == {"A": "x", "B": "${A}", "C": "pa$${A}ss", "D": "${A}"}
    assert oracle(text, ENV)["B"] == "x"  # the deviation is deliberate (python-dotenv issue #422)


def test_entry_lines_point_at_the_key() -> None:
    text = '\n\n# comment\n  A=1\nB="multi\nline\nvalue"\n\nexport C=3\nA=again\n'
    result = check(text)
    assert result.entries == [
        DotenvEntry("A", "again", 10),
        DotenvEntry("B", "multi\nline\nvalue", 5),
        DotenvEntry("C", "3", 9),
    ]
    assert result.skipped == []


def test_crlf_lines_counted_once() -> None:
    result = check('A=1\r\n\r\nB=2\r\nC="x\r\ny"\r\nD=4\r\n')
    assert [(e.key, e.line) for e in result.entries] == [("A", 1), ("B", 3), ("C", 4), ("D", 6)]


def test_malformed_lines_are_skipped_with_line_numbers() -> None:
    text = (
        "GOOD1=1\n"  # 1
        "=orphan-value-1\n"  # 2
        "bad key=orphan-value-2\n"  # 3
        'QUOTE="unterminated-value-3\n'  # 4
        "GOOD2=2\n"  # 5
        "NOVALUE\n"  # 6
        "JUNK='ok' trailing-value-4\n"  # 7
        "'unterminated key=1\n"  # 8
        "GOOD3=3\n"  # 9
    )
    result = check(text)
    assert result.as_dict() == {"GOOD1": "1", "GOOD2": "2", "GOOD3": "3"}
    assert [e.line for e in result.entries] == [1, 5, 9]
    assert result.skipped == [
        DotenvSkip(2, "missing key before '='", ""),
        DotenvSkip(3, "unexpected text after the key", "bad"),
        DotenvSkip(4, "unterminated double-quoted value", "QUOTE"),
        DotenvSkip(6, "no '=' (no value)", "NOVALUE"),
        DotenvSkip(7, "unexpected text after the value", "JUNK"),
        DotenvSkip(8, "invalid quoted key", ""),  # no identifier: nothing echoed
    ]


def test_unterminated_single_quote_reported() -> None:
    result = check("A='never closed\nB=2\n")
    assert result.as_dict() == {"B": "2"}
    assert result.skipped == [DotenvSkip(1, "unterminated single-quoted value", "A")]


SECRET_BEARING = [
    "=sk-live-0123456789abcdef\n",
    "bad key=sk-live-0123456789abcdef\n",
    'K="sk-live-0123456789abcdef\n',
    "K='sk-live-0123456789abcdef' sk-live-0123456789abcdef\n",
    'K="sk-live-0123456789abcdef"sk-live-0123456789abcdef\n',
    "export K sk-live-0123456789abcdef\n",
    "K\n",
]


@pytest.mark.parametrize("text", SECRET_BEARING)
def test_skips_never_show_the_value(text: str) -> None:
    result = parse_dotenv(text)
    assert result.skipped
    for skip in result.skipped:
        for shown in (skip.reason, skip.text_preview, repr(skip)):
            assert "sk-live" not in shown
            assert "0123456789" not in shown


def test_long_or_odd_previews_are_dropped() -> None:
    # a raw token pasted on its own line must not be echoed, not even in part
    result = parse_dotenv("A_VERY_LONG_KEY_NAME_WITHOUT_ANY_VALUE_AT_ALL\nsk-live-0123456789abcdef\n")
    assert [s.text_preview for s in result.skipped] == ["", ""]


def test_entry_repr_hides_value() -> None:
    entry = parse_dotenv("TOKEN=sk-live-0123456789abcdef\n").entries[0]
    assert "sk-live" not in repr(entry)
    assert entry.value == "sk-live-0123456789abcdef"


def test_empty_text() -> None:
    assert parse_dotenv("") == DotenvResult([], [])
    assert parse_dotenv("\n\n  \n# only comments\n") == DotenvResult([], [])


# --- property: generated well-formed files ----------------------------------------------------------

KEYS = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
SAFE = "abcXYZ019 -_./:@+,=!%^&*()[]{}~|;<>?#"
UNQUOTED_VALUE = st.text(alphabet=SAFE.replace("#", "").replace(" ", ""), max_size=12)
SINGLE_VALUE = st.text(alphabet=SAFE + '"\n', max_size=12)
DOUBLE_VALUE = st.text(alphabet=SAFE + "'\n", max_size=12)


@st.composite
def dotenv_files(draw: st.DrawFn) -> tuple[str, dict[str, tuple[str, int]]]:
    """A well-formed file and, for each key, the raw value of its last binding and that line."""
    lines: list[str] = []
    last: dict[str, tuple[str, int]] = {}
    defined: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["binding", "binding", "binding", "comment", "blank"]))
        if kind == "comment":
            lines.append("# " + draw(st.text(alphabet=SAFE + "'\"", max_size=10)))
            continue
        if kind == "blank":
            lines.append(draw(st.sampled_from(["", "  ", "\t"])))
            continue
        key = draw(KEYS | st.sampled_from(["HOME", "USER", "EMPTY", *defined] or ["HOME"]))
        quote = draw(st.sampled_from(["", "'", '"']))
        refs = ["${HOME}", "${NOPE:-dflt}", "${EMPTY}", *(f"${{{k}}}" for k in defined)]
        value = draw({"": UNQUOTED_VALUE, "'": SINGLE_VALUE, '"': DOUBLE_VALUE}[quote])
        if quote != "'" and draw(st.booleans()):
            value += draw(st.sampled_from(refs))
        prefix = draw(st.sampled_from(["", "export ", "  "]))
        spacing = draw(st.sampled_from(["=", " = ", "= "]))
        suffix = draw(st.sampled_from(["", "  ", " # trailing comment"]))
        last[key] = (value, 1 + sum(1 + line.count("\n") for line in lines))
        lines.append(f"{prefix}{key}{spacing}{quote}{value}{quote}{suffix}")
        defined.append(key)
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n"]))
    return text, last


@settings(max_examples=300, deadline=None)
@given(dotenv_files())
def test_generated_files_match_python_dotenv(case: tuple[str, dict[str, tuple[str, int]]]) -> None:
    text, last = case
    result = check(text, ENV)
    assert result.skipped == []
    assert {e.key: e.line for e in result.entries} == {k: line for k, (_, line) in last.items()}
    raw = parse_dotenv(text, expand=False).as_dict()
    assert raw == {k: v for k, (v, _) in last.items()}


TOKENS = ["A", "B", "=", " ", "#", "'", '"', "\\", "\n", "\r", "\t", "export ", "x", "${A}", "${B:-d}", "\\n"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_arbitrary_text_matches_python_dotenv(text: str) -> None:
    # The one behaviour we change on purpose (no expansion in single quotes) needs both.
    if "$" in text and "'" in text:
        text = text.replace("$", "")
    check(text, {"A": "env-a"})


# --- shell rc files ---------------------------------------------------------------------------------

ZSHRC = """\
# Path to your oh-my-zsh installation.
export ZSH="$HOME/.oh-my-zsh"
ZSH_THEME="robbyrussell"
plugins=(git docker kubectl)
source $ZSH/oh-my-zsh.sh

export OPENAI_API_KEY="sk-proj-aaaaaaaaaaaaaaaa"
export ANTHROPIC_API_KEY='sk-ant-bbbbbbbbbbbbbbbb'  # work account
  export INDENTED=plain-value
export PATH="$HOME/.local/bin:$PATH"
export EDITOR=~/bin/nvim
export GITHUB_TOKEN=$(gh auth token)
export OLD_STYLE=`cat ~/.token`
export LITERAL_DOLLAR='pa$$word'
export MULTILINE="first
second"
export EMPTY=
export ESCAPED="say \\"hi\\" \\\\ \\$5 \\n"
alias ll='ls -la'
mkcd() {
  mkdir -p "$1" && cd "$1"
  export INSIDE_FUNCTION=yes
}
if [[ -f ~/.zshrc.local ]]; then
  source ~/.zshrc.local
fi
export NOVALUE
export TWO=1 THREE=2
export SEMI=ok;  # fine
[ -s "$NVM_DIR/nvm.sh" ] && . "$NVM_DIR/nvm.sh"
eval "$(pyenv init -)"
export DUP=first
export DUP=second
"""


def test_shell_exports_from_a_realistic_zshrc() -> None:
    result = parse_shell_exports(ZSHRC)
    assert result.entries == [
        DotenvEntry("OPENAI_API_KEY", "sk-proj-aaaaaaaaaaaaaaaa", 7),
        DotenvEntry("ANTHROPIC_API_KEY", "sk-ant-bbbbbbbbbbbbbbbb", 8),
        DotenvEntry("INDENTED", "plain-value", 9),
        DotenvEntry("LITERAL_DOLLAR", "pa$$word", 14),
        DotenvEntry("MULTILINE", "first\nsecond", 15),
        DotenvEntry("EMPTY", "", 17),
        DotenvEntry("ESCAPED", 'say "hi" \\ $5 \\n', 18),
        DotenvEntry("INSIDE_FUNCTION", "yes", 22),
        DotenvEntry("SEMI", "ok", 29),
        DotenvEntry("DUP", "second", 33),
    ]
    skipped = [(s.line, s.reason, s.text_preview) for s in result.skipped]
    assert skipped == [
        (2, "needs shell evaluation", "ZSH"),
        (3, "not an export line", "ZSH_THEME"),
        (4, "not an export line", "plugins"),
        (5, "not an export line", "source"),
        (10, "needs shell evaluation", "PATH"),
        (11, "needs shell evaluation", "EDITOR"),
        (12, "needs shell evaluation", "GITHUB_TOKEN"),
        (13, "needs shell evaluation", "OLD_STYLE"),
        (19, "not an export line", "alias"),
        (20, "not an export line", ""),
        (21, "not an export line", "mkdir"),
        (23, "not an export line", ""),
        (24, "not an export line", "if"),
        (25, "not an export line", "source"),
        (26, "not an export line", "fi"),
        (27, "no '=' (no value)", "NOVALUE"),
        (28, "needs shell evaluation", "TWO"),
        (30, "not an export line", ""),
        (31, "not an export line", "eval"),
    ]
    for skip in result.skipped:
        assert "sk-" not in skip.text_preview


def test_shell_skip_hides_earlier_export_of_same_name() -> None:
    result = parse_shell_exports("export PATH=/usr/bin\nexport PATH=$PATH:/opt/bin\n")
    assert result.entries == []
    assert [(s.line, s.reason) for s in result.skipped] == [(2, "needs shell evaluation")]


def test_shell_unterminated_quote_resumes_on_next_line() -> None:
    result = parse_shell_exports('export BROKEN="no end\nexport NEXT=ok\n')
    assert result.entries == [DotenvEntry("NEXT", "ok", 2)]
    assert [(s.line, s.reason, s.text_preview) for s in result.skipped] == [
        (1, "unterminated double-quoted value", "BROKEN")
    ]


@pytest.mark.parametrize(
    "line",
    [
        'export A="$(cat secret-file)"',
        "export A=`cat secret-file`",
        "export A=$SECRET_VAR",
        'export A="${SECRET_VAR}"',
        "export A=$'\\x41'",
        "export A=(one two)",
        "export A=~/secret-file",
        "export A=x:~/secret-file",
        "export A=secret-value B=1",
        "export A=secret-value && echo",
    ],
)
def test_shell_needs_evaluation(line: str) -> None:
    result = parse_shell_exports(line + "\n")
    assert result.entries == []
    assert result.skipped == [DotenvSkip(1, "needs shell evaluation", "A")]


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("export A='$(literal) `x` $HOME ~'", "$(literal) `x` $HOME ~"),
        ("export A=cost$", "cost$"),
        ('export A="cost $ 5"', "cost $ 5"),
        ("export A=a#b", "a#b"),
        ("export A=a\\ b", "a b"),
        ("export A=one'two'\"three\"", "onetwothree"),
        ('export A="a\\qb"', "a\\qb"),
        ("export A=x~y", "x~y"),
        ("export A=line\\\ncontinued", "linecontinued"),
        ("export A=value\r", "value"),
    ],
)
def test_shell_quoting(line: str, value: str) -> None:
    assert parse_shell_exports(line + "\n").as_dict() == {"A": value}


def test_shell_never_raises_on_garbage() -> None:
    garbage = '}}}\n\'unbalanced\nexport\nexport =\n"\n`\n$(\nexport A="\n\\\n'
    result = parse_shell_exports(garbage)
    assert result.entries == []
    assert all(s.line >= 1 for s in result.skipped)


BASH = shutil.which("bash")


@pytest.mark.slow
@pytest.mark.skipif(BASH is None, reason="bash not installed")
def test_shell_values_match_bash(tmp_path: Path) -> None:
    """bash itself is the oracle for the shell quoting rules we implement."""
    text = "\n".join(
        [
            "export A='single $HOME `x`'",
            'export B="dq \\"x\\" \\\\ \\$ \\` \\n \\t"',
            "export C=un\\ quoted\\$x",
            "export D=a#b  # comment",
            "export E=\"multi\nline\"'s'",
            "export F=",
            "export G=cost$",
            "export H=line\\\ncontinued",
            "export I=x~y",
        ]
    )
    assert BASH is not None
    rc = tmp_path / "rc"
    rc.write_text(text + "\n")
    names = "A B C D E F G H I".split()
    script = f". {rc}; for n in {' '.join(names)}; do printf '%s\\0' \"${{!n}}\"; done"
    out = subprocess.run(
        [BASH, "--noprofile", "--norc", "-c", script], capture_output=True, check=True, env={}
    ).stdout.decode()
    expected = dict(zip(names, out.split("\0")[:-1], strict=True))
    assert parse_shell_exports(text).as_dict() == expected
