"""CLI fixtures: an isolated KEYBROKER_HOME per test, the store from ``store_url`` (SQLite and
PostgreSQL), the cheapest Argon2id cost keybroker accepts, and two ways to run the CLI: in
process through Typer's CliRunner (``kb``) and as a real ``python -m keybroker`` process (``kbp``).
Every stderr either produced is kept, so tests (the canary above all) can look through it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.testing
from typer.testing import CliRunner

from keybroker.cli import app

PASSPHRASE = "correct horse battery staple"
FAST_KDF = ["--kdf-memory-kib", "19456", "--kdf-time-cost", "2"]
SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    @property
    def err_line(self) -> str:
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""


@dataclass
class Env:
    tmp: Path
    home: Path
    run_dir: Path
    store_url: str
    passphrase_file: Path
    stderr_log: list[str] = field(default_factory=list)
    stdout_log: list[str] = field(default_factory=list)

    @property
    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        return Path(self.store_url[len(prefix) :]) if self.store_url.startswith(prefix) else None


@pytest.fixture
def cli_env(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    for key in list(os.environ):
        if key.startswith("KEYBROKER_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    pf = tmp_path / "passphrase"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    monkeypatch.setenv("KEYBROKER_HOME", str(home))
    monkeypatch.setenv("KEYBROKER_DB_URL", store_url)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(work)  # no stray .keybroker.toml from the repository
    return Env(tmp_path, home, run_dir, store_url, pf)


@pytest.fixture(autouse=True, scope="session")
def _build_cli_once() -> Iterator[None]:
    """Typer rebuilds the whole command tree on every CliRunner.invoke; build it once."""
    built = typer.testing._get_command(app)
    original = typer.testing._get_command
    typer.testing._get_command = lambda a: built if a is app else original(a)  # type: ignore[assignment]
    yield
    typer.testing._get_command = original  # type: ignore[assignment]


class KB:
    """Run the CLI in process. ``kb("secret", "get", "X")`` asserts exit 0 unless ``code`` is
    given (``code=None``: any)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(
        self,
        *args: str,
        input: str | bytes | None = None,
        code: int | None = 0,
        env: dict[str, str] | None = None,
    ) -> Out:
        r = self.runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)
        out = Out(r.exit_code, r.stdout, r.stderr)
        self.env.stderr_log.append(out.stderr)
        self.env.stdout_log.append(out.stdout)
        if code is not None:
            assert out.code == code, f"{args}: exit {out.code}, stdout={out.stdout!r} stderr={out.stderr!r}"
        return out

    def init(self, *extra: str, code: int | None = 0) -> Out:
        return self(*init_args(self.env, *extra), code=code)


class KBProcess:
    """Run ``python -m keybroker`` as a real process."""

    def __init__(self, env: Env) -> None:
        self.env = env

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        e = dict(os.environ)
        e["PYTHONPATH"] = str(SRC) + os.pathsep + e.get("PYTHONPATH", "")
        e.update(extra or {})
        return e

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "keybroker", *args]

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,
        code: int | None = 0,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Out:
        p = subprocess.run(
            self.cmd(*args),
            input=input,
            capture_output=True,
            env=self.environ(env),
            timeout=timeout,
            check=False,
        )
        out = Out(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        self.env.stderr_log.append(out.stderr)
        self.env.stdout_log.append(out.stdout)
        if code is not None:
            assert out.code == code, f"{args}: exit {out.code}, stdout={out.stdout!r} stderr={out.stderr!r}"
        return out


@pytest.fixture
def kb(cli_env: Env) -> KB:
    return KB(cli_env)


@pytest.fixture
def kbp(cli_env: Env) -> KBProcess:
    return KBProcess(cli_env)


def init_args(env: Env, *extra: str) -> Sequence[str]:
    return ("init", "--passphrase-file", str(env.passphrase_file), *FAST_KDF, *extra)


@pytest.fixture
def vault_cli(kb: KB, cli_env: Env) -> Iterator[KB]:
    """An initialised vault with an unseal session (as `keybroker init` leaves it)."""
    kb.init()
    yield kb
