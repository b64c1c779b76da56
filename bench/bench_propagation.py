"""Rotation propagation: time from a write's commit until N SDK clients that follow the change
stream all hold the new value.

N :class:`keybroker.AsyncClient` instances (default 1,000) run in this one asyncio process, each
with ``cache_invalidation=True`` (its own SSE connection to ``/v1/events``) and a 300 s cache
TTL. A writer updates the secret R times. Each client, on the change event, invalidates its
cache and reads the secret again; a client *holds* the new value when that read returns it.
Latency per client = time it holds the value - the event's ``ts`` (taken by the server inside
the write's transaction, just before the commit: so the figure slightly over-states). Reported:
p50/p99 over all clients and rounds of (a) cache invalidated, (b) new value held, and per round
the time until *all* N hold it. The peer in the same run is TTL polling, the way a Vault/OpenBao
client without a change stream learns of a rotation: with a poll interval P its expected
staleness is P/2 and the worst P, computed for the TTL the SDK uses by default (300 s) and a
short one (the p99 of (b) must beat P to matter).

    .venv/bin/python bench/bench_propagation.py                       # 1,000 clients, SQLite
    .venv/bin/python bench/bench_propagation.py --store postgres -n 1000 -r 5
    .venv/bin/python bench/bench_propagation.py --addr http://127.0.0.1:8270 --token kbt_...

The server runs in a separate process (2 processes share the machine's cores). Results go to
bench/results/propagation-<UTC stamp>.json and .md, with the command and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PG = os.environ.get("KEYBROKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NAME = "OPENAI_API_KEY"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def summary_ms(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------ the server
def serve(store_url: str, port: int, ready: Any, token_out: Any, http: str = "h11") -> None:
    """Child process: a keybroker server on ``port`` over ``store_url`` (fresh vault)."""
    import logging

    import uvicorn

    logging.getLogger("keybroker").setLevel(logging.ERROR)
    app, token = build_server(store_url)
    token_out.put(token)
    cfg = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        http=http,  # h11 by default, as `keybroker serve` runs it (it accepts Vault's LIST method)
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(cfg)
    ready.set()
    server.run()


def build_server(store_url: str) -> tuple[Any, str]:
    """The real app (``create_app``, as ``keybroker serve`` builds it) over a new vault, and the
    root token for the bench's writer and readers. Rate limits off (1,000 clients share one
    token and one address); audit on, as always."""
    from keybroker.core import RawRoot, Vault, local_principal
    from keybroker.core._identity import IdentityService
    from keybroker.core._rbac import RbacAuthorizer
    from keybroker.core._tokens import TokenService
    from keybroker.crypto import new_key
    from keybroker.server import ServerSettings, create_app
    from keybroker.store import Store

    me = local_principal("bench")
    vault = Vault(Store(store_url))
    vault.initialize(RawRoot(new_key()), me)
    authz = RbacAuthorizer()
    root = IdentityService(vault, TokenService(vault, authz), authz).bootstrap_root(me)
    settings = ServerSettings(db_url=store_url, token_rate=0, address_rate=0, access_log=False)
    return create_app(settings, vault=vault), root.token.reveal()


# ------------------------------------------------------------------------------ the clients
async def run_clients(
    addr: str, token: str, n: int, rounds: int, project: str, env: str, refetch: bool = True
) -> dict[str, Any]:
    from keybroker import AsyncClient

    writer = AsyncClient(addr, token, project=project, environment=env, cache_ttl=0)
    await writer.set(NAME, "v0")
    clients = [
        AsyncClient(
            addr,
            token,
            project=project,
            environment=env,
            cache_ttl=300,
            cache_invalidation=True,
            timeout=60,
        )
        for _ in range(n)
    ]
    t = time.monotonic()
    # connect in waves so the listen backlog is not the thing measured
    for i in range(0, n, 100):
        for c in clients[i : i + 100]:
            c.start_watching()
        await asyncio.gather(*(c.wait_watching(60) for c in clients[i : i + 100]))
    connect_s = time.monotonic() - t
    assert all(c.watching for c in clients), "not every client connected to the change stream"
    # warm every cache with v0
    for i in range(0, n, 100):
        vals = await asyncio.gather(*(c.get(NAME) for c in clients[i : i + 100]))
        assert all(v.reveal() == "v0" for v in vals)

    invalidated: list[float] = []
    held: list[float] = []
    all_held: list[float] = []
    expected = {"value": "v0"}
    errors: dict[str, int] = {}
    round_state: dict[str, Any] = {}

    def hook(c: Any) -> Callable[[Any], None]:
        def on_change(ev: Any) -> None:
            if ev.name != NAME or ev.kind != "updated":
                return
            now = time.time()
            ts = datetime.fromisoformat(ev.ts).timestamp()
            invalidated.append(now - ts)
            round_state["ts"] = ts
            if not refetch:
                round_state["done"] += 1
                if round_state["done"] == n:
                    round_state["all"].set()
                return

            async def refresh() -> None:
                # read until the new value comes back: an overloaded server may answer 503
                # (the SDK then serves the last known value) or time out; both are counted
                while True:
                    try:
                        v = await c.get(NAME)
                    except Exception as exc:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        await asyncio.sleep(0.05)
                        continue
                    if v.reveal() == expected["value"]:
                        break
                    errors["stale"] = errors.get("stale", 0) + 1
                    await asyncio.sleep(0.05)
                held.append(time.time() - ts)
                round_state["done"] += 1
                if round_state["done"] == n:
                    round_state["all"].set()

            asyncio.get_running_loop().create_task(refresh())

        return on_change

    for c in clients:
        c.on_change(hook(c))
    per_round: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        expected["value"] = f"v{r}-{uuid.uuid4().hex[:8]}"
        round_state.update(done=0, all=asyncio.Event())
        await asyncio.sleep(0.5)
        cpu0 = time.process_time()
        await writer.set(NAME, expected["value"])
        await asyncio.wait_for(round_state["all"].wait(), 600)
        last = time.time() - round_state["ts"]
        cpu = time.process_time() - cpu0
        all_held.append(last)
        per_round.append(
            {"round": r, "all_hold_ms": round(last * 1000, 2), "client_cpu_ms": round(cpu * 1000, 1)}
        )
        print(
            f"  round {r}: all {n} clients hold the new value {last * 1000:.1f} ms after the commit "
            f"(client process CPU {cpu * 1000:.0f} ms)"
        )
    for c in clients:
        await c.aclose()
    await writer.aclose()
    return {
        "clients": n,
        "rounds": rounds,
        "connect_all_s": round(connect_s, 3),
        "invalidated": summary_ms(invalidated),
        "held": summary_ms(held),
        "all_held": summary_ms(all_held),
        "per_round": per_round,
        "reread_errors": errors,
    }


def main() -> None:
    import warnings

    from keybroker.client import StaleValueWarning

    warnings.simplefilter("ignore", StaleValueWarning)  # counted as "stale" instead
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--clients", type=int, default=1000)
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--addr", help="use a running server instead of starting one")
    ap.add_argument("--token", help="token for --addr (needs read+write on the project)")
    ap.add_argument("--project", default="default")
    ap.add_argument("--environment", default="dev")
    ap.add_argument("--http", choices=["h11", "httptools"], default="h11", help="uvicorn HTTP implementation")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--no-refetch",
        action="store_true",
        help="measure only the invalidation (the stream), not the re-reads of the new value",
    )
    args = ap.parse_args()

    proc = None
    tmp = None
    schema = None
    if args.addr:
        addr, token = args.addr, args.token or os.environ.get("KEYBROKER_TOKEN", "")
        store_desc = "external"
    else:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if args.store == "sqlite":
            tmp = tempfile.mkdtemp(prefix="kbbench-")
            url = f"sqlite:///{tmp}/vault.db"
        else:
            import sqlalchemy as sa

            schema = "kbbench_" + uuid.uuid4().hex[:10]
            eng = sa.create_engine(PG)
            with eng.begin() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            eng.dispose()
            url = f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{schema}"
        ctx = multiprocessing.get_context("spawn")
        ready, tokq = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=serve, args=(url, port, ready, tokq, args.http), daemon=True)
        proc.start()
        token = tokq.get(timeout=120)
        ready.wait(60)
        addr = f"http://127.0.0.1:{port}"
        store_desc = f"{args.store}-{args.http}"
        import httpx

        for _ in range(200):
            try:
                httpx.get(f"{addr}/v1/sys/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_propagation.py", *sys.argv[1:]])
    print(f"$ {cmd}")
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; store: {store_desc}")
    try:
        res = asyncio.run(
            run_clients(
                addr, token, args.clients, args.rounds, args.project, args.environment, not args.no_refetch
            )
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.join(10)
        if schema is not None:
            import sqlalchemy as sa

            eng = sa.create_engine(PG)
            with eng.begin() as c:
                c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            eng.dispose()
    target_ms = 100.0
    measure = "invalidated" if args.no_refetch else "held"
    p99 = res[measure]["p99_ms"]
    res.update(
        command=cmd,
        machine=m,
        store=store_desc,
        target_p99_ms=target_ms,
        target_measure=measure,
        target_met=p99 < target_ms,
        ratio_p99_to_target=round(p99 / target_ms, 3),
        peer_ttl_polling={
            "ttl_300s": {"expected_staleness_ms": 150_000, "worst_ms": 300_000},
            "ttl_5s": {"expected_staleness_ms": 2_500, "worst_ms": 5_000},
            "ratio_ttl_300s_expected_to_p50": round(150_000 / max(res[measure]["p50_ms"], 1e-3), 1),
        },
    )
    inv, held, allh = res["invalidated"], res["held"], res["all_held"]
    lines = [
        f"# Rotation propagation ({res['clients']} SDK clients, {res['rounds']} rounds, {store_desc})",
        "",
        f"`{cmd}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['platform']}",
        "",
        "| measure (from the write's commit) | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        f"| cache invalidated (event received) | {inv['p50_ms']} | {inv['p99_ms']} | {inv['max_ms']} |",
        f"| new value held (re-read done) | {held['p50_ms']} | {held['p99_ms']} | {held['max_ms']} |",
        f"| all {res['clients']} clients hold it (per round) "
        f"| {allh['p50_ms']} | {allh['p99_ms']} | {allh['max_ms']} |",
        "",
        f"Target p99 < {target_ms:.0f} ms ({measure}): {'met' if res['target_met'] else 'NOT met'} "
        f"(p99/target = {res['ratio_p99_to_target']}).",
        f"Peer (TTL polling, no change stream): expected staleness 150,000 ms at TTL 300 s, 2,500 ms at 5 s; "
        f"ratio to this run's p50 ({measure}) at 300 s: "
        f"{res['peer_ttl_polling']['ratio_ttl_300s_expected_to_p50']}x.",
        f"All {res['clients']} streams connected in {res['connect_all_s']} s.",
    ]
    print("\n".join(lines))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = RESULTS / f"propagation-{store_desc}-{stamp}"
        base.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        base.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {base}.json and .md")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
