"""``pgvote bench --http``: k6 against the running stack, same-run ratios only (H1 cast_vote / a no-op RPC,
H2 the 50,000-voter burst, H3 the guide's ramp, the rate-limit hook's cost, CPU per vote; the method is
written into docs/benchmarks.md with the figures). The no-op ``api.bench_noop_cast_vote`` exists only
while the bench runs: created, the replicas' schema caches reloaded, dropped on the way out."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from pgvote.bench.report import publish, stamp
from pgvote.http import ApiClient
from pgvote.loadtest import DEFAULT_RAMP_VUS
from pgvote.loadtest.k6 import HttpTarget, run_burst, run_ramp

NOOP = "bench_noop_cast_vote"
NOOP_SQL = (Path(__file__).parent / "sql" / "noop.sql").read_text()
DROP_NOOP = f"drop function if exists api.{NOOP}(uuid, uuid[], text, uuid)"
RATIO_COLUMNS = ("ratio", "what", "value", "goal", "met")


@dataclass(frozen=True)
class Sizes:
    h1_voters: int
    h1_vus: int
    h2_voters: int
    h2_vus: int
    ramp_vus: int
    ramp_time_scale: float


FULL = Sizes(4_000, 200, 50_000, 2_500, DEFAULT_RAMP_VUS, 0.25)
QUICK = Sizes(1_000, 100, 2_000, 100, 100, 0.05)  # a smoke run of the same machinery


@contextmanager
def noop_function(stack: Any, progress: Callable[[str], None]) -> Iterator[None]:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(DROP_NOOP)
        conn.execute(NOOP_SQL)
    try:
        stack.reload_postgrest()
        _wait_visible(stack, progress)
        yield
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            conn.execute(DROP_NOOP)
        stack.reload_postgrest()


def _wait_visible(stack: Any, progress: Callable[[str], None], timeout: float = 30.0) -> None:
    """Until every replica answers the no-op (its schema cache reload is asynchronous)."""
    body = {"poll_id": "00000000-0000-0000-0000-000000000000", "option_ids": []}
    for replica in stack.live_replicas():
        deadline = time.monotonic() + timeout
        while ApiClient(replica.url).rpc(NOOP, body).status != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.name} does not serve /rpc/{NOOP} after its schema cache reload")
            time.sleep(0.2)
    progress(f"/rpc/{NOOP} served by every replica")


def _rate(result: dict[str, Any]) -> float:
    return float(result["figures"]["votes_per_second"])


def _cpu_per_vote(result: dict[str, Any]) -> dict[str, float]:
    accepted = result["figures"]["accepted"] or 1
    return {name: round(seconds * 1000 / accepted, 3) for name, seconds in result["cpu_seconds"].items()}


@contextmanager
def request_limit_off(stack: Any, progress: Callable[[str], None]) -> Iterator[None]:
    """The per-caller request limit switched off for the block, restored whatever happens."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute("update rate_limit.limits set enabled = false where name = 'request'")
        progress("the request limit is switched off for the baseline of the hook's cost")
        try:
            yield
        finally:
            conn.execute("update rate_limit.limits set enabled = true where name = 'request'")


def run_http_bench(stack: Any, *, quick: bool, json_path: Path | None, report_path: Path | None, command: str,
                   console: Console) -> dict[str, Any]:
    sizes, progress = QUICK if quick else FULL, stamp(console)
    load_before = os.getloadavg()[0]

    nginx = HttpTarget.for_stack(stack)
    replica = stack.live_replicas()[0]
    direct = HttpTarget(replica.url, stack.admin_url, nginx.servers, stack.bouncer_admin_url)
    runs: dict[str, dict[str, Any]] = {}

    def burst(name: str, target: HttpTarget, voters: int, vus: int, fn: str = "cast_vote",
              caller_header: bool = False) -> dict[str, Any]:
        progress(f"{name}: {voters:,} voters, {vus:,} VUs, /rpc/{fn} at {target.base_url}")
        runs[name] = run_burst(target, voters, vus, console, fn=fn, caller_header=caller_header)
        progress(f"{name}: {_rate(runs[name]):,.0f}/s")
        return runs[name]

    with noop_function(stack, progress):
        noop_h1 = burst("noop_h1", nginx, sizes.h1_voters, sizes.h1_vus, fn=NOOP)
        cast_h1 = burst("cast_vote_h1", nginx, sizes.h1_voters, sizes.h1_vus)
        noop_h2 = burst("noop_h2", nginx, sizes.h2_voters, sizes.h2_vus, fn=NOOP)
    cast_h2 = burst("cast_vote_h2", nginx, sizes.h2_voters, sizes.h2_vus)
    hook_on = burst("direct_caller_identified", direct, sizes.h1_voters, sizes.h1_vus, caller_header=True)
    with request_limit_off(stack, progress):
        hook_off = burst("direct_limit_off", direct, sizes.h1_voters, sizes.h1_vus, caller_header=True)
    progress(f"H3: the guide's ramp, peak {sizes.ramp_vus:,} VUs, durations x {sizes.ramp_time_scale:g}")
    ramp = runs["ramp"] = run_ramp(nginx, sizes.ramp_vus, sizes.ramp_time_scale, console)

    v2, f2, k6 = cast_h2["verification"], cast_h2["figures"], ramp["k6"]
    values = {"H1": _rate(cast_h1) / _rate(noop_h1), "H2": _rate(cast_h2) / _rate(noop_h2),
              "hook": _rate(hook_on) / _rate(hook_off)}
    exactly_once = v2["exactly_once"] and f2["accepted"] == f2["voters"] == sizes.h2_voters
    h3 = {"p95_ms": k6["http_req_duration_ms"].get("p(95)") or 0.0, "error_rate": k6["http_req_failed_rate"] or 0.0,
          "thresholds_crossed": k6["thresholds_crossed"], "k6_exit_code": k6["exit_code"],
          "exactly_once": ramp["verification"]["exactly_once"], "voters": ramp["figures"]["voters"]}
    ratios = [
        ("H1", f"cast_vote / no-op RPC, same arguments, same path ({sizes.h1_vus} VUs)", f"{values['H1']:.2f}",
         ">= 0.85", _yes(values["H1"] >= 0.85)),
        ("H2", f"{sizes.h2_voters:,}-voter burst, {sizes.h2_vus:,} VUs: drain rate / no-op envelope",
         f"{values['H2']:.2f} ({f2['accepted']:,} accepted, {cast_h2['k6']['retries']:,} retries)",
         "100% exactly once", _yes(exactly_once)),
        ("hook", "rate-limit hook: a bucket token per call / the limit switched off (direct to one PostgREST)",
         f"{values['hook']:.2f}", ">= 0.8", _yes(values["hook"] >= 0.80)),
        ("H3", f"the guide's ramp ({h3['voters']:,} voters): p95, error rate (k6 exit {h3['k6_exit_code']})",
         f"{h3['p95_ms']:,.0f} ms, {h3['error_rate']:.2%}", "the thresholds of k6/ramp.js",
         _yes(not h3["thresholds_crossed"]) + (f" ({', '.join(h3['thresholds_crossed'])})" if h3["thresholds_crossed"]
                                               else "")),
    ]
    environment = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                   "load_before": load_before, "load_after": os.getloadavg()[0]}
    report: dict[str, Any] = {"command": command, "sizes": sizes.__dict__, "environment": environment, "ratios": ratios,
                              "values": values, "h2_problems": v2.get("problems", []), "h3": h3,
              "cpu_ms_per_vote": {name: _cpu_per_vote(r) for name, r in runs.items()},
              "runs": {name: {k: v for k, v in r.items() if k != "timeline"} for name, r in runs.items()}}
    columns, rows = _cpu_table(report)
    env = environment
    smoke = ["", "**Smoke run** (`--quick` sizes on a shared machine): it shows the machinery works end to end, not "
                 "what the path can do; the figures come from a full `pgvote bench --http` on a quiet machine."]
    publish("bench --http", [("HTTP ratios (same run)", RATIO_COLUMNS, ratios, (2,)),
                             ("CPU milliseconds per vote, by process", columns, rows, range(1, len(columns)))],
            [f"Command: `{command}`; sizes: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:g}"
                                                      for k, v in sizes.__dict__.items())
             + f". {env['date']}, {env['cpus']} cores, 1-minute load average {env['load_before']:.1f} before, "
             f"{env['load_after']:.1f} after.", *(smoke if quick else [])],
            report, report_path=report_path, json_path=json_path, console=console)
    return report


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def _cpu_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """CPU milliseconds per vote of each run, a column per process (k6, nginx, PostgREST, PgBouncer, PostgreSQL)."""
    order = ("k6", "nginx", "postgrest", "pgbouncer", "postgres")
    names = sorted({n for per in report["cpu_ms_per_vote"].values() for n in per},
                   key=lambda n: order.index(n.split("-")[0]) if n.split("-")[0] in order else 9)
    rows = [[run, f"{report['runs'][run]['figures']['votes_per_second']:,.0f}", *(f"{per.get(n, 0):.2f}" for n in names)]
            for run, per in report["cpu_ms_per_vote"].items()]
    return ["run", "votes/s", *names], rows
