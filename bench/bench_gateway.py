"""Latency the gateway adds over calling the same local upstream directly.

Three processes on loopback, as in ../shared/bench/litellm_anchor.sh: a fake OpenAI-compatible
upstream (uvicorn, uvloop), the keybroker gateway (uvicorn, uvloop, one worker, SQLite vault,
audit on) and this load generator (httpx). Measured, direct vs through the gateway:

  (a) sequential non-streaming: warm-up + N requests on one keep-alive connection
  (b) C concurrent closed-loop clients for D seconds (one httpx.AsyncClient per client)
  (c) streaming (20 chunks): time to first body byte and to the end, sequential

    .venv/bin/python bench/bench_gateway.py
    .venv/bin/python bench/bench_gateway.py --seq-n 2000 --conc 64 --conc-seconds 10
    .venv/bin/python bench/bench_gateway.py --litellm-results /tmp/litellm_anchor/run/results

With --litellm-results (the results directory litellm_anchor.sh leaves, default its usual place
when it exists) the table gains LiteLLM's added latency from that run and keybroker's ratio to it.
Writes bench/results/gateway-<UTC stamp>.json and .md (with this command and the machine), and
the gateway process's CPU time per proxied request for each phase (load-independent-ish: the
latency figures move with whatever else the machine runs). KEYBROKER_GATEWAY_* settings apply to
the gateway process; KB_BENCH_GATEWAY_PREFIX (e.g. a profiler command) is put in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
DEFAULT_LITELLM = Path(os.environ.get("TMPDIR", "/tmp")) / "litellm_anchor" / "run" / "results"
UPSTREAM_KEY = "sk-upstream-real-0123456789abcdef"
PROMPT = [{"role": "user", "content": "Say hello."}]


# ----------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_upstream(port: int, chunks: int) -> None:
    import uvicorn

    from keybroker.gateway._testing import FakeUpstream

    app = FakeUpstream(keys={UPSTREAM_KEY}, record=False, chunks=chunks)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        ws="none",
        lifespan="off",
    )


def serve_gateway(port: int, db: str, keyfile: str) -> None:
    import uvicorn

    from keybroker.core import KeyFileRoot, SecretService, SystemClock, Vault
    from keybroker.core._principal import Principal
    from keybroker.core._proxy_tokens import ProxyTokenService
    from keybroker.core._sessions import SessionService
    from keybroker.gateway import Gateway
    from keybroker.gateway._settings import GatewaySettings
    from keybroker.store import Store

    vault = Vault(Store(db), SystemClock())
    vault.unseal(KeyFileRoot(Path(keyfile)), Principal(id="bench", kind="service", local=True))
    secrets = SecretService(vault)
    # the settings `keybroker gateway` runs with (KEYBROKER_GATEWAY_* in the environment apply)
    gw = Gateway(ProxyTokenService(SessionService(secrets)), config=GatewaySettings().config())
    uvicorn.run(
        gw,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        ws="none",
        lifespan="on",
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server process exited ({proc.returncode})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"timeout waiting for {url}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- load
def pct(v: list[float], p: float) -> float:
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)


def summarize(vals_s: list[float]) -> dict[str, float]:
    v = sorted(x * 1000.0 for x in vals_s)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "mean_ms": sum(v) / len(v),
        "p50_ms": pct(v, 50),
        "p90_ms": pct(v, 90),
        "p99_ms": pct(v, 99),
        "min_ms": v[0],
        "max_ms": v[-1],
    }


def req(key: str, stream: bool = False) -> tuple[bytes, dict[str, str]]:
    body: dict[str, Any] = {"model": "gpt-test", "messages": PROMPT, "max_tokens": 16}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode(), {"Authorization": "Bearer " + key, "Content-Type": "application/json"}


def ok(r: httpx.Response) -> bool:
    return r.status_code == 200 and b"hello from upstream" in r.content


def run_seq(url: str, key: str, n: int, warmup: int) -> dict[str, Any]:
    body, headers = req(key)
    lat: list[float] = []
    errors = 0
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as c:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r = c.post(url, content=body, headers=headers)
            _ = r.content
            dt = time.perf_counter() - t0
            if i < warmup:
                continue
            if not ok(r):
                errors += 1
                continue
            lat.append(dt)
    return {"errors": errors, "latency": summarize(lat)}


async def run_conc(url: str, key: str, conc: int, seconds: float) -> dict[str, Any]:
    body, headers = req(key)
    lat: list[float] = []
    state = {"ok": 0, "errors": 0}
    clients = [
        httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        for _ in range(conc)
    ]
    try:
        await asyncio.gather(*[c.post(url, content=body, headers=headers) for c in clients])
        stop_at = time.perf_counter() + seconds

        async def worker(c: httpx.AsyncClient) -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    r = await c.post(url, content=body, headers=headers)
                    good = ok(r)
                except httpx.HTTPError:
                    good = False
                dt = time.perf_counter() - t0
                if good:
                    lat.append(dt)
                    state["ok"] += 1
                else:
                    state["errors"] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in clients])
        elapsed = time.perf_counter() - t_start
    finally:
        for c in clients:
            await c.aclose()
    return {
        "concurrency": conc,
        "elapsed_s": elapsed,
        "ok": state["ok"],
        "errors": state["errors"],
        "throughput_rps": state["ok"] / elapsed,
        "latency": summarize(lat),
    }


def run_stream(url: str, key: str, n: int, warmup: int, chunks: int) -> dict[str, Any]:
    body, headers = req(key, stream=True)
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as c:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            t_first = None
            buf = bytearray()
            with c.stream("POST", url, content=body, headers=headers) as r:
                for raw in r.iter_raw():
                    if raw and t_first is None:
                        t_first = time.perf_counter()
                    buf += raw
            t_end = time.perf_counter()
            if i < warmup:
                continue
            text = buf.decode("utf-8", "replace")
            good = (
                r.status_code == 200
                and text.rstrip().endswith("data: [DONE]")
                and text.count('"content"') == chunks
                and t_first is not None
            )
            if not good or t_first is None:
                errors += 1
                continue
            ttfb.append(t_first - t0)
            total.append(t_end - t0)
    return {"errors": errors, "ttfb": summarize(ttfb), "total": summarize(total)}


# ----------------------------------------------------------------------------- report
def g(obj: Any, *path: str) -> Any:
    for k in path:
        if obj is None:
            return None
        obj = obj.get(k)
    return obj


def load_litellm(res: Path | None) -> dict[str, Any] | None:
    if res is None or not res.is_dir():
        return None
    out = {}
    for name in (
        "seq_direct",
        "seq_proxy",
        "conc_direct",
        "conc_proxy",
        "stream_direct",
        "stream_proxy",
        "env",
    ):
        p = res / f"{name}.json"
        if p.exists():
            out[name] = json.loads(p.read_text())
    return out or None


def table(r: dict[str, Any], lite: dict[str, Any] | None) -> str:
    rows: list[tuple[str, ...]] = []

    def f(x: Any, nd: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}"

    def add(
        test: str,
        metric: str,
        d: Any,
        p: Any,
        nd: int = 2,
        ratio: bool = False,
        lite_pair: tuple[Any, Any] | None = None,
        note: str = "",
    ) -> None:
        if d is None or p is None:
            delta = "n/a"
        else:
            delta = f"{p / d:.3f}x" if ratio else f"{p - d:+.{nd}f}"
        lcol, rcol = "", ""
        if lite_pair and None not in lite_pair and d is not None and p is not None:
            ld, lp = lite_pair
            if ratio:
                lcol = f"{lp / ld:.3f}x"
            else:
                ladd = lp - ld
                lcol = f"{ladd:+.{nd}f}"
                kadd = p - d
                rcol = f"{kadd / ladd:.3f}" if ladd > 0 else ""
        rows.append((test, metric, f(d, nd), f(p, nd), delta, lcol, rcol, note))

    sd, sp = r["seq_direct"], r["seq_gateway"]
    t = f"(a) sequential, httpx, {g(sp, 'latency', 'n')} after warm-up"
    for m in ("p50_ms", "p99_ms", "mean_ms"):
        add(
            t,
            m.replace("_ms", " ms"),
            g(sd, "latency", m),
            g(sp, "latency", m),
            lite_pair=(g(lite, "seq_direct", "latency", m), g(lite, "seq_proxy", "latency", m)),
        )
    add(t, "errors", sd["errors"], sp["errors"], nd=0)
    cd, cp = r["conc_direct"], r["conc_gateway"]
    t = f"(b) {cp['concurrency']} concurrent, httpx, {r['args']['conc_seconds']:.0f}s"
    add(
        t,
        "throughput req/s",
        cd["throughput_rps"],
        cp["throughput_rps"],
        nd=1,
        ratio=True,
        lite_pair=(g(lite, "conc_direct", "throughput_rps"), g(lite, "conc_proxy", "throughput_rps")),
        note="direct is client-bound (Python)",
    )
    for m in ("p50_ms", "p99_ms"):
        add(
            t,
            m.replace("_ms", " ms"),
            g(cd, "latency", m),
            g(cp, "latency", m),
            lite_pair=(g(lite, "conc_direct", "latency", m), g(lite, "conc_proxy", "latency", m)),
        )
    add(t, "errors", cd["errors"], cp["errors"], nd=0)
    td, tp = r["stream_direct"], r["stream_gateway"]
    t = f"(c) streaming {r['args']['chunks']} chunks, httpx, {g(tp, 'total', 'n')} sequential"
    for key, label in (("ttfb", "TTFB"), ("total", "total")):
        for m in ("p50_ms", "p99_ms"):
            add(
                t,
                f"{label} {m.replace('_ms', '')} ms",
                g(td, key, m),
                g(tp, key, m),
                lite_pair=(g(lite, "stream_direct", key, m), g(lite, "stream_proxy", key, m)),
            )
    add(t, "errors", td["errors"], tp["errors"], nd=0)
    hdr = (
        "Test",
        "Metric",
        "Direct",
        "Via keybroker",
        "Added (or ratio)",
        "LiteLLM added (or ratio)",
        "keybroker/LiteLLM added",
        "Note",
    )
    lines = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import uvicorn

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": f"httpx {httpx.__version__}, uvicorn {uvicorn.__version__}",
        "calib_sum_range_1000_us": min(timeit.repeat("sum(range(1000))", number=10000, repeat=3))
        / 10000
        * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--keyfile", help=argparse.SUPPRESS)
    ap.add_argument("--seq-n", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--conc-seconds", type=float, default=10.0)
    ap.add_argument("--stream-n", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument(
        "--litellm-results", type=Path, default=DEFAULT_LITELLM if DEFAULT_LITELLM.is_dir() else None
    )
    ap.add_argument("--no-write", action="store_true", help="print only; write nothing to bench/results")
    args = ap.parse_args()
    if args.serve == "upstream":
        serve_upstream(args.port, args.chunks)
        return
    if args.serve == "gateway":
        serve_gateway(args.port, args.db, args.keyfile)
        return

    from keybroker.core import KeyFileRoot, Scope, SecretService, SystemClock, Vault, local_principal
    from keybroker.core._proxy_tokens import ProxyTokenService
    from keybroker.core._sessions import SessionService
    from keybroker.store import Store

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    env = machine()
    print(f"$ {command}\n# {env['cpu']}, {env['nproc']} vCPU, python {env['python']}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-gw-") as tmp:
        db = f"sqlite:///{tmp}/vault.db"
        keyfile = Path(tmp) / "root.key"
        me = local_principal("bench")
        vault = Vault(Store(db), SystemClock())
        vault.initialize(KeyFileRoot(keyfile), me)
        secrets = SecretService(vault)
        up_port, gw_port = free_port(), free_port()
        up_url, gw_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
        secrets.put(
            me,
            Scope(),
            "OPENAI_API_KEY",
            UPSTREAM_KEY,
            provider="openai",
            custom_metadata={"gateway.base_url": up_url},
        )
        sessions = SessionService(secrets)
        session = sessions.open_use_session(me, Scope(), ["OPENAI_API_KEY"], ttl_s=6 * 3600)
        token = ProxyTokenService(sessions, max_ttl_s=6 * 3600).issue(
            me, session.id, Scope(), "OPENAI_API_KEY", ttl_s=6 * 3600
        )
        proxy_key = token.token.reveal()
        me_py = [sys.executable, __file__, "--chunks", str(args.chunks)]
        try:
            procs.append(subprocess.Popen([*me_py, "--serve", "upstream", "--port", str(up_port)]))
            wait_http(up_url + "/v1/models", procs[-1])
            procs.append(
                subprocess.Popen(
                    [
                        *(
                            os.environ.get("KB_BENCH_GATEWAY_PREFIX", "").split()
                            or [sys.executable, __file__]
                        ),
                        "--chunks",
                        str(args.chunks),
                        "--serve",
                        "gateway",
                        "--port",
                        str(gw_port),
                        "--db",
                        db,
                        "--keyfile",
                        str(keyfile),
                    ]
                )
            )
            wait_http(gw_url + "/_health", procs[-1])
            gw_pid = procs[-1].pid
            direct = up_url + "/v1/chat/completions"
            via = token.base_url(gw_url) + "/chat/completions"
            results: dict[str, Any] = {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "env": env,
                "command": command,
            }
            results["gateway_cpu_ms_per_request_by_phase"] = by_phase = {}

            def measured(phase: str, count: Any, fn: Any) -> Any:
                c0 = cpu_s(gw_pid)
                out = fn()
                n = count(out) if callable(count) else count
                by_phase[phase] = 1000 * (cpu_s(gw_pid) - c0) / max(1, n)
                return out

            for name, url, key in (("direct", direct, UPSTREAM_KEY), ("gateway", via, proxy_key)):
                print(f"(a) sequential, {name}", flush=True)
                results[f"seq_{name}"] = measured(
                    f"seq_{name}",
                    args.seq_n + args.warmup,
                    lambda u=url, k=key: run_seq(u, k, args.seq_n, args.warmup),
                )
            for name, url, key in (("direct", direct, UPSTREAM_KEY), ("gateway", via, proxy_key)):
                print(f"(b) {args.conc} concurrent, {name}", flush=True)
                results[f"conc_{name}"] = measured(
                    f"conc_{name}",
                    lambda o: o["ok"] + o["errors"] + args.conc,
                    lambda u=url, k=key: asyncio.run(run_conc(u, k, args.conc, args.conc_seconds)),
                )
            for name, url, key in (("direct", direct, UPSTREAM_KEY), ("gateway", via, proxy_key)):
                print(f"(c) streaming, {name}", flush=True)
                results[f"stream_{name}"] = measured(
                    f"stream_{name}",
                    args.stream_n + args.warmup // 2,
                    lambda u=url, k=key: run_stream(u, k, args.stream_n, args.warmup // 2, args.chunks),
                )
            results["gateway_cpu_ms_per_request"] = (
                sum(by_phase[k] for k in ("seq_gateway", "conc_gateway", "stream_gateway")) / 3
            )
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        # the audit trail holds one record per proxied request (group-committed by the gateway)
        results["audit_records"] = vault.status()["audit_records"]
    lite = load_litellm(args.litellm_results)
    results["litellm"] = lite
    tbl = table(results, lite)
    info = [
        f"- command: `{command}`",
        f"- date (UTC): {env['date']}; machine: {env['cpu']}, {env['nproc']} vCPU, kernel {env['kernel']}",
        f"- python {env['python']}; {env['versions']}; "
        f"sum(range(1000)) = {env['calib_sum_range_1000_us']:.1f} us",
        "- gateway process CPU per proxied request (one process, uvloop): "
        + ", ".join(
            f"{k.split('_')[0]} {v:.3f} ms"
            for k, v in results["gateway_cpu_ms_per_request_by_phase"].items()
            if k.endswith("gateway")
        ),
        f"- audit records written (one per proxied request, hash-chained): {results['audit_records']}",
        "- LiteLLM columns: "
        + (
            f"from {args.litellm_results} ({g(lite, 'env', 'date') or 'date unknown'})"
            if lite
            else "no litellm_anchor.sh results found (run it, then pass --litellm-results)"
        ),
    ]
    out = "\n".join(info) + "\n\n" + tbl + "\n"
    print(out)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
        (RESULTS / f"gateway-{stamp}.md").write_text(out)
        print(f"wrote bench/results/gateway-{stamp}.json and .md")


if __name__ == "__main__":
    main()
