"""In-process put/get throughput and latency of the core service at growing vault sizes.

Shows that reading one secret costs the same with 1k, 100k or 1M secrets stored (indexed
lookups; one audit record per read, committed durably before the value is returned).

    .venv/bin/python bench/bench_core.py                       # 1k, 100k, 1M on SQLite and PostgreSQL
    .venv/bin/python bench/bench_core.py --sizes 1000 10000 --stores sqlite
    .venv/bin/python bench/bench_core.py --fill service         # fill through put_many (slow)

Writes bench/results/core-<UTC stamp>.json and .md (with this command and the machine).
Audit is on (it always is): every measured get/put goes through SecretService and appends a
hash-chained record in its transaction.

Fill (``--fill``): ``bulk`` (default) inserts the rows directly with SQLAlchemy Core
executemany, each value sealed with the vault's own keyring and the AAD context SecretService
uses, with the same columns a ``put_many`` write leaves; the audit records and events of the
fill are NOT written. ``service`` fills through ``SecretService.put_many`` (audit and events
included; ~26 min for 1M on SQLite, over an hour on PostgreSQL). Either way the fill is then
checked: sampled names read back through ``svc.get`` with their expected value.
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
from keybroker.store import Store, tables

PG = os.environ.get("KEYBROKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).parent / "results"
FILL_NOTE = {
    "bulk": "fill rows inserted directly, sealed with the vault's keyring; audit/events not written "
    "for the fill; every measured get/put goes through SecretService with audit on",
    "service": "fill through SecretService.put_many (one version, audit record and event per secret); "
    "every measured get/put goes through SecretService with audit on",
}


def secret_name(i: int) -> str:
    return f"S_{i:07d}"


def secret_value(i: int) -> str:
    return f"value-{i}-{'x' * 32}"


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


def fill_service(svc: SecretService, me: Any, scope: Scope, start: int, stop: int, batch: int) -> None:
    for a in range(start, stop, batch):
        b = min(stop, a + batch)
        svc.put_many(me, scope, {secret_name(i): secret_value(i) for i in range(a, b)})


def fill_bulk(svc: SecretService, me: Any, scope: Scope, start: int, stop: int, batch: int) -> None:
    """Insert secrets start..stop-1 as ``put_many`` would leave them (version 1, labelled current),
    without their audit records and events. Sealed with the vault's keyring and the same AAD
    context as ``SecretService._write``: (org, project, environment, name, version)."""
    s, sv = tables.secrets, tables.secret_versions
    kr = svc.vault.keyring()
    with svc.store.connect() as conn:
        env_id = svc._env_id(conn, scope)  # the service's own scope lookup
    for a in range(start, stop, batch):
        b = min(stop, a + batch)
        now = svc.clock.now()
        names = [secret_name(i) for i in range(a, b)]
        sealed = [
            kr.seal(secret_value(i).encode(), (scope.org, scope.project, scope.environment, nm, 1))
            for i, nm in zip(range(a, b), names, strict=True)
        ]
        # _write: INSERT (tags=[], custom_metadata={}, kind, latest_version=0, created/updated_at;
        # the rest server defaults), then UPDATE latest_version=1, current_version=1,
        # previous_version=None, updated_at=now. Here directly in the final state.
        secret_rows = [
            {
                "environment_id": env_id,
                "name": nm,
                "kind": "generic",
                "tags": [],
                "custom_metadata": {},
                "latest_version": 1,
                "current_version": 1,
                "previous_version": None,
                "created_at": now,
                "updated_at": now,
            }
            for nm in names
        ]
        with svc.store.begin() as conn:
            conn.execute(sa.insert(s), secret_rows)
            ids = dict(
                conn.execute(
                    sa.select(s.c.name, s.c.id).where(
                        s.c.environment_id == env_id, s.c.name.between(names[0], names[-1])
                    )
                ).all()
            )
            if len(ids) != len(names):
                raise RuntimeError(
                    f"fill: expected {len(names)} ids for {names[0]}..{names[-1]}, got {len(ids)}"
                )
            conn.execute(
                sa.insert(sv),
                [
                    {
                        "secret_id": ids[nm],
                        "version": 1,
                        "ciphertext": x.ciphertext,
                        "wrapped_dek": x.wrapped_dek,
                        "kek_id": x.kek_id,
                        "public_key": None,
                        "created_at": now,
                        "created_by": me.label,
                    }
                    for nm, x in zip(names, sealed, strict=True)
                ],
            )


def check_bulk_rows_match_service(svc: SecretService, scope: Scope, ref: str, bulk: str) -> None:
    """The row written by put_many (``ref``) and a bulk row must agree on every column that
    does not depend on the name, the id, the time or the random data key."""
    s, sv = tables.secrets, tables.secret_versions
    with svc.store.connect() as conn:
        env_id = svc._env_id(conn, scope)
        rows = {
            r.name: r._asdict()
            for r in conn.execute(
                sa.select(s).where(s.c.environment_id == env_id, s.c.name.in_([ref, bulk]))
            ).all()
        }
        vers = {
            nm: [
                v._asdict() for v in conn.execute(sa.select(sv).where(sv.c.secret_id == rows[nm]["id"])).all()
            ]
            for nm in (ref, bulk)
        }
    skip = {"id", "name", "created_at", "updated_at"}
    a, b = ({k: v for k, v in rows[n].items() if k not in skip} for n in (ref, bulk))
    assert a == b, f"bulk secret row differs from the service's: {a} != {b}"
    assert len(vers[ref]) == len(vers[bulk]) == 1, vers
    va, vb = vers[ref][0], vers[bulk][0]
    for k in ("ciphertext", "wrapped_dek"):
        assert len(va[k]) == len(vb[k]), k
    skip_v = {"secret_id", "ciphertext", "wrapped_dek", "created_at"}
    va, vb = ({k: v for k, v in x.items() if k not in skip_v} for x in (va, vb))
    assert va == vb, f"bulk version row differs from the service's: {va} != {vb}"


def verify_fill(
    svc: SecretService, me: Any, scope: Scope, lo: int, hi: int, rotated: set[str], rng: random.Random, n: int
) -> int:
    """Read back sampled names of the whole vault and of the newly filled range through svc.get."""
    idx = {lo, hi - 1, 0} | {rng.randrange(hi) for _ in range(n)} | {rng.randrange(lo, hi) for _ in range(n)}
    for i in sorted(idx):
        nm = secret_name(i)
        got = svc.get(me, scope, nm)
        want = ("rotated-" + nm) if nm in rotated else secret_value(i)
        assert got.value.reveal() == want, f"{nm}: read back a wrong value"
        assert nm in rotated or got.version == 1, f"{nm}: version {got.version}"
    return len(idx)


def settle(store: Store, kind: str) -> None:
    """After a fill on PostgreSQL: VACUUM ANALYZE the two tables (what autovacuum would do
    soon anyway), so it does not run in the middle of the measurements."""
    if kind != "postgres":
        return
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        for t in (tables.secrets, tables.secret_versions):
            c.execute(sa.text(f"VACUUM ANALYZE {t.name}"))


def run_store(
    kind: str, sizes: list[int], samples: int, batch: int, fill: str, verify: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"store": kind, "fill": fill, "levels": []}
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
            vrng = random.Random(11)
            rotated: set[str] = set()
            for size in sizes:
                t0 = time.perf_counter()
                if fill == "bulk":
                    if have == 0 and size > 1:
                        # the first secret through the service, as the reference for the row check
                        fill_service(svc, me, scope, 0, 1, 1)
                        fill_bulk(svc, me, scope, 1, size, batch)
                        check_bulk_rows_match_service(svc, scope, secret_name(0), secret_name(1))
                    else:
                        fill_bulk(svc, me, scope, have, size, batch)
                else:
                    fill_service(svc, me, scope, have, size, batch)
                fill_s = time.perf_counter() - t0
                settle(store, kind)
                checked = verify_fill(svc, me, scope, have, size, rotated, vrng, verify)
                print(
                    f"[{kind}] filled {size - have:,} secrets ({fill}) in {fill_s:.1f} s; "
                    f"{checked} sampled names read back through svc.get with the expected value",
                    flush=True,
                )
                have = size
                names = [secret_name(rng.randrange(size)) for _ in range(samples)]
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
                    rotated.add(nm)
                level = {
                    "secrets": size,
                    "fill_s": fill_s,
                    "verified_reads": checked,
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


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument(
        "--fill",
        choices=["bulk", "service"],
        default="bulk",
        help="bulk: rows inserted directly (no audit/events for the fill); service: put_many",
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="secrets per fill transaction (bulk 50000, service 5000)"
    )
    ap.add_argument(
        "--verify", type=int, default=100, help="random names read back per fill (x2: whole vault, new range)"
    )
    args = ap.parse_args()
    batch = args.batch or (50_000 if args.fill == "bulk" else 5_000)
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    report: dict[str, Any] = {
        "command": cmd,
        "machine": machine(),
        "fill": args.fill,
        "fill_batch": batch,
        "fill_note": FILL_NOTE[args.fill],
        "loadavg_start": loadavg(),
        "results": [],
    }
    print(f"fill: {args.fill} ({FILL_NOTE[args.fill]}); load average {report['loadavg_start']}", flush=True)
    for kind in args.stores:
        report["results"].append(
            run_store(kind, sorted(args.sizes), args.samples, batch, args.fill, args.verify)
        )
    report["loadavg_end"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"core-{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# keybroker core: put/get at growing vault sizes",
        "",
        f"- command: `{cmd}`",
        f"- machine: {report['machine']['cpu']}, {report['machine']['nproc']} vCPU, "
        f"Python {report['machine']['python']}, {report['machine']['date']}",
        f"- load average (1/5/15 min) at start {report['loadavg_start']}, at end {report['loadavg_end']} "
        "(shared machine: other work was running)",
        "- audit on (one durable, hash-chained record per read and per write); SQLite WAL synchronous=FULL",
        f"- fill `--fill {args.fill}` ({batch:,} secrets per transaction): {FILL_NOTE[args.fill]}",
        "- after each fill: sampled names (and the first/last of the new range) read back through "
        "`svc.get` and asserted equal to the expected value; on PostgreSQL `VACUUM ANALYZE` of "
        "kb_secrets and kb_secret_versions before measuring (untimed)"
        + (
            "; the first secret is written by `put_many` and its rows are asserted equal to a bulk "
            "row's (all columns but id, name, timestamps, ciphertext and wrapped data key)"
            if args.fill == "bulk"
            else ""
        ),
        f"- {args.samples} gets per level on random names, then {max(50, args.samples // 4)} puts "
        "(a new version of an existing secret); fill time is not part of any latency",
        "",
        "| store | secrets | get p50 ms | get p99 ms | get/s | get p50 vs smallest | put p50 ms | put p99 ms "
        "| put/s | fill s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for lv in r["levels"]:
            g, p = lv["get"], lv["put"]
            lines.append(
                f"| {r['store']} | {lv['secrets']:,} | {g['p50_ms']:.3f} | {g['p99_ms']:.3f} | "
                f"{g['ops_per_s']:.0f} | {lv['get_p50_ratio_to_smallest']:.2f}x | {p['p50_ms']:.3f} | "
                f"{p['p99_ms']:.3f} | {p['ops_per_s']:.0f} | {lv['fill_s']:.1f} |"
            )
    md = "\n".join(lines) + "\n"
    (RESULTS / f"core-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
