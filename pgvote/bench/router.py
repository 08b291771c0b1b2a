"""`pgvote bench --router`: what the PL/Proxy router costs, as same-run ratios on a sharded stack.

Throw-away databases `pgvote_router_bench` on the router's cluster and on shard-0's, migrated like the
stack's own; the router's has a one-partition PL/Proxy cluster (shard-0's database), so a poll created
through it lives on shard-0. The same pgbench scripts then run, in alternation, against the router (the
router's api functions: PL/Proxy to the shard) and directly against the shard (its api functions): one
new anonymous ballot per transaction (cast_vote.sql) and batches of new ballots (bulk_cast_votes.sql).
Each figure is the median of its rounds; the ratio is routed / direct votes per second, and the CPU
each cluster's processes used per ballot (from /proc) splits the routed cost between router and shard,
which is what a capacity model needs (docs/scaling.md).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from pgvote.bench import pgbench
from pgvote.bench.report import Section, alternate, command_line, run_mode
from pgvote.loadtest.scenarios import create_poll
from pgvote.loadtest.servers import cluster_ticks
from pgvote.migrate import upgrade
from pgvote.schema_dump import scratch_database
from pgvote.shards import ShardedStack, configure_router, share_voter_key_secret

DATABASE = "pgvote_router_bench"
BATCH = 500
SECONDS, QUICK_SECONDS, ROUNDS = 10.0, 4.0, 2  # pgbench seconds per run, alternating rounds

POLL = """
create schema bench;
create table bench.polls (n integer primary key, poll_id uuid not null, option_id uuid not null);
"""


@dataclass(frozen=True)
class Side:
    votes_per_s: float
    p95_ms: float
    router_cpu_us: float  # CPU of the router cluster's processes per ballot
    shard_cpu_us: float  # CPU of the shard cluster's processes per ballot


def cluster_cpu_seconds(data_dir: Path) -> float:
    """User + system CPU of the cluster whose postmaster.pid is in ``data_dir``."""
    return cluster_ticks(int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])) / os.sysconf("SC_CLK_TCK")


def bench(stack: ShardedStack, args: Any, *, console: Console, **files: Any) -> dict[str, Any]:
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    return run_mode("bench --router", lambda: measure(stack, args.seconds, args.clients, ROUNDS, console),
                    command=command_line("router", args, ("clients", "seconds")), console=console, **files)


def measure(stack: ShardedStack, seconds: float, clients: int, rounds: int,
            console: Console) -> tuple[dict[str, Any], Section]:
    shard = stack.shards[0]
    with scratch_database(stack.admin_url, name=DATABASE) as router_url, \
            scratch_database(shard.admin_url, name=DATABASE) as shard_url:
        upgrade(shard_url)
        upgrade(router_url)
        with psycopg.connect(router_url) as conn:
            configure_router(conn, [shard.conninfo(DATABASE)])
        share_voter_key_secret(router_url, [shard_url])
        created = create_poll(router_url, "router", ("a", "b", "c", "d"), 1)
        poll, option = created.poll_id, created.option_ids[0]
        for url in (router_url, shard_url):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(POLL)
                conn.execute("insert into bench.polls values (1, %s, %s)", (poll, option))
        scenarios = {
            "cast_vote": ("cast_vote.sql", {"npolls": "1"}, 1),
            f"cast_votes x {BATCH}": ("bulk_cast_votes.sql", {"poll": poll, "opt": option, "batch": str(BATCH)}, BATCH),
        }
        results: dict[str, dict[str, Side]] = {}
        for name, (script, variables, ballots) in scenarios.items():
            console.print(f"[dim]{name}: direct and router in turn, {clients} clients, {seconds:.0f} s each[/]")
            runs = alternate(rounds, {side: partial(_measure, stack, url, script, variables, ballots, clients, seconds)
                                      for side, url in (("direct", shard_url), ("router", router_url))})
            results[name] = {side: Side(*(statistics.median(getattr(s, f) for s in sides)
                                          for f in Side.__dataclass_fields__))
                             for side, sides in runs.items()}
    figures: dict[str, Any] = {
        "clients": clients, "seconds": seconds, "rounds": rounds,
        "scenarios": {name: {side: s.__dict__ for side, s in sides.items()}
                      | {"ratio": sides["router"].votes_per_s / sides["direct"].votes_per_s}
                      for name, sides in results.items()}}
    return figures, Section(
        [(f"router overhead, {clients} clients, median of {rounds} rounds", COLUMNS, _rows(figures), range(2, 7))],
        f"; {clients} pgbench clients, {seconds:.0f} s per run, median of "
        f"{rounds} alternating rounds; router and shard-0 on this machine (shared: the ratio moves with the load, "
        "the CPU per ballot much less)")


def _measure(stack: ShardedStack, url: str, script: str, variables: dict[str, str], ballots: int, clients: int,
             seconds: float) -> Side:
    before = (cluster_cpu_seconds(stack.data_dir), cluster_cpu_seconds(stack.shards[0].data_dir))
    figures = pgbench.run(pgbench.Run(script, url, clients, seconds, protocol="prepared", variables=variables))
    time.sleep(0.5)  # the backends of the run exit and are reaped: their CPU is the postmaster's
    after = (cluster_cpu_seconds(stack.data_dir), cluster_cpu_seconds(stack.shards[0].data_dir))
    stored = figures.transactions * ballots
    return Side(figures.per_second * ballots, figures.p95_ms, (after[0] - before[0]) / stored * 1e6,
                (after[1] - before[1]) / stored * 1e6)


COLUMNS = ("scenario", "path", "ballots/s", "p95 ms", "router CPU µs/ballot", "shard CPU µs/ballot", "routed ÷ direct")


def _rows(figures: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, sides in figures["scenarios"].items():
        for side in ("direct", "router"):
            s = sides[side]
            ratio = f"{sides['ratio']:.2f}" if side == "router" else ""
            rows.append((str(name), side, f"{s['votes_per_s']:,.0f}", f"{s['p95_ms']:.1f}", f"{s['router_cpu_us']:.0f}",
                         f"{s['shard_cpu_us']:.0f}", ratio))
    return rows
