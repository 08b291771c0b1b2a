"""``pgvote bench --http``: k6 against the running stack, same-run ratios only (H1 cast_vote / a no-op RPC,
H2 the 50,000-voter burst, H3 the guide's ramp, the rate-limit hook's cost, CPU per vote; the method is
written into docs/benchmarks.md with the figures). The no-op ``api.bench_noop_cast_vote`` exists only
while the bench runs: created, the replicas' schema caches reloaded, dropped on the way out."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from pgvote.bench.report import RATIO_COLUMNS, Section, command_line, run_mode, stamp
from pgvote.http import ApiClient
from pgvote.loadtest import DEFAULT_RAMP_VUS
from pgvote.loadtest.k6 import HttpTarget, run_burst, run_ramp
from pgvote.tables import yes

NOOP = "bench_noop_cast_vote"
NOOP_SQL = (Path(__file__).parent / "sql" / "noop.sql").read_text()
DROP_NOOP = f"drop function if exists api.{NOOP}(uuid, uuid[], text, uuid)"
CPU_ORDER = ("k6", "nginx", "postgrest", "pgbouncer", "postgres")
FULL = {"h1_voters": 4_000, "h1_vus": 200, "h2_voters": 50_000, "h2_vus": 2_500, "ramp_vus": DEFAULT_RAMP_VUS,
        "ramp_time_scale": 0.25}
QUICK = {"h1_voters": 1_000, "h1_vus": 100, "h2_voters": 2_000, "h2_vus": 100, "ramp_vus": 100,
         "ramp_time_scale": 0.05}  # a smoke run of the same machinery


@contextmanager
def noop_function(stack: Any, timeout: float = 30.0) -> Iterator[None]:
    """The no-op RPC for the block, once every replica serves it (a schema cache reload is asynchronous)."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(DROP_NOOP)
        conn.execute(NOOP_SQL)
    try:
        stack.reload_postgrest()
        body = {"poll_id": "00000000-0000-0000-0000-000000000000", "option_ids": []}
        for replica in stack.live_replicas():
            deadline = time.monotonic() + timeout
            while ApiClient(replica.url).rpc(NOOP, body).status != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{replica.name} does not serve /rpc/{NOOP} after its schema cache reload")
                time.sleep(0.2)
        yield
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            conn.execute(DROP_NOOP)
        stack.reload_postgrest()


@contextmanager
def request_limit_off(stack: Any) -> Iterator[None]:
    """The per-caller request limit switched off for the block, restored whatever happens."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute("update rate_limit.limits set enabled = false where name = 'request'")
        try:
            yield
        finally:
            conn.execute("update rate_limit.limits set enabled = true where name = 'request'")


def bench(stack: Any, args: Any, *, console: Console, **files: Any) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    return run_mode("bench --http", lambda: measure(stack, sizes, console), command=command_line("http", args, ()),
                    console=console, **files)


def measure(stack: Any, sizes: dict[str, Any], console: Console) -> tuple[dict[str, Any], Section]:
    progress = stamp(console)
    nginx = HttpTarget.for_stack(stack)
    direct = HttpTarget(stack.live_replicas()[0].url, stack.admin_url, nginx.servers, stack.bouncer_admin_url)
    runs: dict[str, dict[str, Any]] = {}
    rate: dict[str, float] = {}

    def burst(name: str, target: HttpTarget, size: str, fn: str = "cast_vote", caller_header: bool = False) -> None:
        voters, vus = sizes[f"{size}_voters"], int(sizes[f"{size}_vus"])
        progress(f"{name}: {voters:,} voters, {vus:,} VUs, /rpc/{fn} at {target.base_url}")
        runs[name] = run_burst(target, int(voters), vus, console, fn=fn, caller_header=caller_header)
        rate[name] = float(runs[name]["figures"]["votes_per_second"])
        progress(f"{name}: {rate[name]:,.0f}/s")

    with noop_function(stack):
        progress(f"/rpc/{NOOP} served by every replica")
        burst("noop_h1", nginx, "h1", fn=NOOP)
        burst("cast_vote_h1", nginx, "h1")
        burst("noop_h2", nginx, "h2", fn=NOOP)
    burst("cast_vote_h2", nginx, "h2")
    burst("direct_caller_identified", direct, "h1", caller_header=True)
    with request_limit_off(stack):
        progress("the request limit is switched off for the baseline of the hook's cost")
        burst("direct_limit_off", direct, "h1", caller_header=True)
    progress(f"H3: the guide's ramp, peak {sizes['ramp_vus']:,} VUs, durations x {sizes['ramp_time_scale']:g}")
    ramp = runs["ramp"] = run_ramp(nginx, int(sizes["ramp_vus"]), sizes["ramp_time_scale"], console)

    v2, f2, k6 = runs["cast_vote_h2"]["verification"], runs["cast_vote_h2"]["figures"], ramp["k6"]
    values = {"H1": rate["cast_vote_h1"] / rate["noop_h1"], "H2": rate["cast_vote_h2"] / rate["noop_h2"],
              "hook": rate["direct_caller_identified"] / rate["direct_limit_off"]}
    crossed = k6["thresholds_crossed"]
    h3 = {"p95_ms": k6["http_req_duration_ms"].get("p(95)") or 0.0, "error_rate": k6["http_req_failed_rate"] or 0.0,
          "thresholds_crossed": crossed, "k6_exit_code": k6["exit_code"],
          "exactly_once": ramp["verification"]["exactly_once"], "voters": ramp["figures"]["voters"]}
    ratios = [
        ("H1", f"cast_vote / no-op RPC, same arguments, same path ({sizes['h1_vus']} VUs)", f"{values['H1']:.2f}",
         ">= 0.85", yes(values["H1"] >= 0.85)),
        ("H2", f"{sizes['h2_voters']:,}-voter burst, {sizes['h2_vus']:,} VUs: drain rate / no-op envelope",
         f"{values['H2']:.2f} ({f2['accepted']:,} accepted, {runs['cast_vote_h2']['k6']['retries']:,} retries)",
         "100% exactly once", yes(v2["exactly_once"] and f2["accepted"] == f2["voters"] == sizes["h2_voters"])),
        ("hook", "rate-limit hook: a bucket token per call / the limit switched off (direct to one PostgREST)",
         f"{values['hook']:.2f}", ">= 0.8", yes(values["hook"] >= 0.80)),
        ("H3", f"the guide's ramp ({h3['voters']:,} voters): p95, error rate (k6 exit {h3['k6_exit_code']})",
         f"{h3['p95_ms']:,.0f} ms, {h3['error_rate']:.2%}", "the thresholds of k6/ramp.js",
         yes(not crossed) + (f" ({', '.join(crossed)})" if crossed else "")),
    ]
    # CPU milliseconds per vote of each run, a column per process (k6, nginx, PostgREST, PgBouncer, PostgreSQL)
    cpu = {name: {n: round(s * 1000 / (r["figures"]["accepted"] or 1), 3) for n, s in r["cpu_seconds"].items()}
           for name, r in runs.items()}
    names = sorted({n for per in cpu.values() for n in per},
                   key=lambda n: CPU_ORDER.index(n.split("-")[0]) if n.split("-")[0] in CPU_ORDER else 9)
    cpu_rows = [[run, f"{rate.get(run, ramp['figures']['votes_per_second']):,.0f}",
                 *(f"{per.get(n, 0):.2f}" for n in names)] for run, per in cpu.items()]
    report: dict[str, Any] = {"sizes": sizes, "ratios": ratios, "values": values, "h2_problems": v2.get("problems", []), "h3": h3,
                              "cpu_ms_per_vote": cpu,
                              "runs": {name: {k: v for k, v in r.items() if k != "timeline"} for name, r in runs.items()}}
    smoke = ["", "**Smoke run** (`--quick` sizes on a shared machine): it shows the machinery works end to end, not "
                 "what the path can do; the figures come from a full `pgvote bench --http` on a quiet machine."]
    return report, Section(
        [("HTTP ratios (same run)", RATIO_COLUMNS, ratios, (2,)),
         ("CPU milliseconds per vote, by process", ["run", "votes/s", *names], cpu_rows, range(1, len(names) + 2))],
        "; sizes: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:g}" for k, v in sizes.items())
        + f"; {os.cpu_count()} cores", more=smoke if sizes is QUICK else ())
