"""`pgvote bench --ha` on the HA stack (`pgvote up --ha`): the cost of the synchronous standby and how
far behind the standby's results are.

1. votes/s with the synchronous standby ÷ without it, same run: pgbench's cast_vote (spread polls,
   direct to the leader through HAProxy's write port), in alternating rounds with the bench database's
   synchronous_commit `on` (every commit waits for the standby's flush) and `local` (the leader's own
   fsync alone: the durability of the single-node stack, with the WAL still shipped asynchronously);
   the ratio of the medians.
2. the 50,000-vote HTTP burst (k6 through nginx, `pgvote loadtest`'s burst) while a sampler reads,
   every 100 ms, the standby's replay lag on the leader (pg_stat_replication: replay_lag and bytes)
   and the results a client sees (GET /rpc/poll_results through nginx: its one-second cache, then the
   standby's PostgREST), next to the leader's own total. The age of a client's answer: how long before
   it the leader already had more ballots than the answer shows (0 when it shows the leader's total).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console

from pgvote.bench.pgbench import Run, run
from pgvote.bench.report import Section, alternate, command_line, median_ratio, run_mode, stamp
from pgvote.bench.scenarios import BENCH_DATABASE, SPREAD_POLLS, bench_database
from pgvote.http import ApiClient
from pgvote.loadtest.k6 import HttpTarget, run_burst
from pgvote.loadtest.report import latency_summary
from pgvote.loadtest.scenarios import create_poll
from pgvote.loadtest.servers import sampling
from pgvote.tables import yes

CLIENTS = 64
SAMPLE_S = 0.1
SAMPLE_SQL = (Path(__file__).parent / "sql" / "ha_sample.sql").read_text()


def sync_ratio(stack: Any, seconds: float, pairs: int, progress: Any) -> dict[str, Any]:
    """Alternating rounds: synchronous_commit on / local for new sessions of the bench database."""
    with bench_database(stack.admin_url, stack.api_url, 1, SPREAD_POLLS, progress) as db:
        def measure(mode: str) -> float:
            with psycopg.connect(stack.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("alter database {} set synchronous_commit = {}").format(
                    sql.Identifier(BENCH_DATABASE), sql.Literal(mode)))
            per_second = run(Run("cast_vote.sql", db.admin_url, CLIENTS, seconds,
                                 variables={"npolls": str(SPREAD_POLLS)})).per_second
            progress(f"synchronous_commit {mode}: {per_second:.0f} votes/s")
            return round(per_second, 1)

        per_second = alternate(pairs, {"on": lambda: measure("on"), "local": lambda: measure("local")})
    return {"clients": CLIENTS, "seconds_per_round": seconds, "votes_per_s": per_second,
            "ratio": median_ratio(per_second, "on", "local")}


def replica_lag_under_burst(stack: Any, voters: int, console: Console) -> dict[str, Any]:
    """The burst while, every SAMPLE_S, the leader's total and the synchronous standby's replay lag (one
    query) and the total a client GET sees are read."""
    ballots = create_poll(stack.admin_url)
    api = ApiClient(stack.http_url, timeout=10, source_ip="127.0.0.250")
    leader: list[tuple[float, int]] = []
    seen: list[tuple[float, int]] = []
    lag: list[tuple[float, float]] = []  # (ms, WAL bytes)

    def sample(conn: psycopg.Connection) -> None:
        total, lag_ms, lag_bytes = conn.execute(SAMPLE_SQL, (ballots.poll_id,)).fetchone() or (0, None, None)
        leader.append((time.time(), int(total or 0)))
        if lag_ms is not None:
            lag.append((float(lag_ms), float(lag_bytes or 0)))
        answer = api.rpc("poll_results", {"poll_id": ballots.poll_id}, method="GET")
        if answer.status == 200:
            seen.append((time.time(), int(answer.body["total_ballots"])))

    with psycopg.connect(stack.admin_url, autocommit=True) as conn, sampling(lambda: sample(conn), SAMPLE_S):
        try:
            burst = run_burst(HttpTarget.for_stack(stack), voters, None, console, quiet=True, ballots=ballots)
        finally:
            time.sleep(2)  # the cache and the standby catch up: the last answers show the final total
    # per client answer: since when the leader had more ballots than it shows
    ahead = (next((lt for lt, lead in leader if lead > total), None) for _, total in seen)
    ages = [max(0.0, t - a) if a is not None and a <= t else 0.0 for (t, _), a in zip(seen, ahead)]
    return {"voters": voters, "votes_per_s": round(burst["figures"]["votes_per_second"]),
            "exactly_once": burst["verification"]["exactly_once"], "samples": len(lag),
            "replay_lag_ms": latency_summary([ms for ms, _ in lag], 1),
            "replay_lag_bytes": latency_summary([b for _, b in lag], 1, ""), "client_answers": len(ages),
            "results_age_ms": latency_summary(ages), "final_total_seen": seen[-1][1] if seen else None}


def bench(stack: Any, args: Any, *, console: Console, **files: Any) -> dict[str, Any]:
    # many short alternating rounds: the other processes of a shared machine weigh on both modes alike
    def measure() -> tuple[dict[str, Any], Section]:
        r = {"sync": sync_ratio(stack, 3.0 if args.quick else 6.0, 2 if args.quick else 6, stamp(console)),
             "burst": replica_lag_under_burst(stack, args.votes, console)}
        return r, Section([("HA: the synchronous standby's cost and lag", ("figure", "value"), rows(r), (1,))],
                          " on `pgvote up --ha` (2 members under Patroni on this machine's 2 cores, shared with "
                          "pgbench and k6)", "## The synchronous standby (`pgvote bench --ha`)",
                          ["", "Method: `pgvote/bench/ha_bench.py`."])

    return run_mode("bench --ha", measure, command=command_line("ha", args, ("votes",)), console=console, **files)


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    s, b = r["sync"], r["burst"]
    return [
        ("votes/s, synchronous standby (synchronous_commit on), per round", ", ".join(map(str, s["votes_per_s"]["on"]))),
        ("votes/s, leader alone (synchronous_commit local), per round", ", ".join(map(str, s["votes_per_s"]["local"]))),
        (f"sync ÷ single node, medians ({s['clients']} pgbench clients, cast_vote, spread polls)", f"{s['ratio']:.2f}"),
        (f"HTTP burst: {b['voters']:,} voters through nginx (k6), votes/s; exactly once",
         f"{b['votes_per_s']}; {yes(b['exactly_once'])}"),
        ("standby replay lag p50 / p95 / max (pg_stat_replication.replay_lag)", spread(b["replay_lag_ms"], "_ms", 1)),
        ("standby replay lag p50 / p95 / max in WAL bytes", spread(b["replay_lag_bytes"], "", 0)),
        (f"age of the results a client sees (GET via nginx's 1 s cache and the standby; {b['client_answers']} answers) "
         "p50 / p95 / max", spread(b["results_age_ms"], "_ms", 1)),
    ]


def spread(summary: dict[str, float], unit: str, digits: int) -> str:
    """p50 / p95 / max of a latency_summary(), " ms" after them for milliseconds."""
    return " / ".join(f"{summary[f'{q}{unit}']:.{digits}f}" for q in ("p50", "p95", "max")) + unit.replace("_", " ")
