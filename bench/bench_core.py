"""In-process put/get throughput and latency of the core service at growing vault sizes.

Shows that reading one secret costs the same with 1k, 100k or 1M secrets stored (indexed
lookups; one audit record per read, committed durably before the value is returned).

    .venv/bin/python bench/bench_core.py                       # 1k, 100k, 1M on SQLite and PostgreSQL
    .venv/bin/python bench/bench_core.py --sizes 1000 10000 --stores sqlite

Writes bench/results/core-<UTC stamp>.json and .md (with this command and the machine).
Audit is on (it always is): every get appends a hash-chained record in its transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from keybroker.core import RawRoot, Scope, SecretService, Vault, local_principal
from keybroker.crypto import new_key
from keybroker.store import Store

PG = os.environ.get("KEYBROKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).parent / "results"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summarize(lat_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lat_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "ops_per_s": len(ms) / sum(lat_s),
    }


def open_store(kind: str, workdir: Path) -> tuple[Store, Any]:
    if kind == "sqlite":
        return Store(f"sqlite:///{workdir / 'bench.db'}"), None
    schema = "kbbench_" + uuid.uuid4().hex[:10]
    eng = sa.create_engine(PG)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with eng.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        eng.dispose()

    return Store(f"{PG}?options=-csearch_path%3D{schema}"), drop


def run_store(kind: str, sizes: list[int], samples: int, batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {"store": kind, "levels": []}
    with tempfile.TemporaryDirectory() as d:
        store, cleanup = open_store(kind, Path(d))
        try:
            vault = Vault(store)
            me = local_principal("bench")
            vault.initialize(RawRoot(new_key(), kind="bench"), me)
            svc = SecretService(vault)
            scope = Scope()
            have = 0
            rng = random.Random(7)
            for size in sizes:
                t0 = time.perf_counter()
                while have < size:
                    n = min(batch, size - have)
                    svc.put_many(
                        me, scope, {f"S_{have + i:07d}": f"value-{have + i}-{'x' * 32}" for i in range(n)}
                    )
                    have += n
                load_s = time.perf_counter() - t0
                names = [f"S_{rng.randrange(size):07d}" for _ in range(samples)]
                for nm in names[:50]:  # warm-up
                    svc.get(me, scope, nm)
                get_lat = []
                for nm in names:
                    t = time.perf_counter()
                    svc.get(me, scope, nm)
                    get_lat.append(time.perf_counter() - t)
                put_lat = []
                for nm in names[: max(50, samples // 4)]:
                    t = time.perf_counter()
                    svc.put(me, scope, nm, "rotated-" + nm)
                    put_lat.append(time.perf_counter() - t)
                level = {
                    "secrets": size,
                    "bulk_load_s": load_s,
                    "get": summarize(get_lat),
                    "put": summarize(put_lat),
                }
                print(
                    f"[{kind}] {size:>9,} secrets: get p50 {level['get']['p50_ms']:.3f} ms "
                    f"p99 {level['get']['p99_ms']:.3f} ms ({level['get']['ops_per_s']:.0f}/s); "
                    f"put p50 {level['put']['p50_ms']:.3f} ms ({level['put']['ops_per_s']:.0f}/s)",
                    flush=True,
                )
                out["levels"].append(level)
            store.dispose()
        finally:
            if cleanup:
                cleanup()
    base = out["levels"][0]["get"]["p50_ms"]
    for lv in out["levels"]:
        lv["get_p50_ratio_to_smallest"] = lv["get"]["p50_ms"] / base
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "calib_sum_range_1000_us": min(timeit.repeat("sum(range(1000))", number=20000, repeat=5))
        / 20000
        * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    report: dict[str, Any] = {"command": cmd, "machine": machine(), "results": []}
    for kind in args.stores:
        report["results"].append(run_store(kind, sorted(args.sizes), args.samples, args.batch))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"core-{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# keybroker core: put/get at growing vault sizes",
        "",
        f"- command: `{cmd}`",
        f"- machine: {report['machine']['cpu']}, {report['machine']['nproc']} vCPU, "
        f"Python {report['machine']['python']}, {report['machine']['date']}",
        "- audit on (one durable, hash-chained record per read and per write); SQLite WAL synchronous=FULL",
        "",
        "| store | secrets | get p50 ms | get p99 ms | get/s | get p50 vs smallest | put p50 ms | put p99 ms "
        "| put/s | bulk load s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for lv in r["levels"]:
            g, p = lv["get"], lv["put"]
            lines.append(
                f"| {r['store']} | {lv['secrets']:,} | {g['p50_ms']:.3f} | {g['p99_ms']:.3f} | "
                f"{g['ops_per_s']:.0f} | {lv['get_p50_ratio_to_smallest']:.2f}x | {p['p50_ms']:.3f} | "
                f"{p['p99_ms']:.3f} | {p['ops_per_s']:.0f} | {lv['bulk_load_s']:.1f} |"
            )
    md = "\n".join(lines) + "\n"
    (RESULTS / f"core-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
