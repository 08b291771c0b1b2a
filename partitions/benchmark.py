"""Measure a split under load: `python -m partitions.benchmark` (method and figures in docs/partitions.md).

On a FRESH local stack (it adds polls and bulk ballots that stay there):

1. creates polls with `api.create_poll` (as PostgREST calls it for a signed-in creator) until `--hot` of
   them hash into the partition to split and `--cold` into other partitions;
2. bulk-inserts `--rows` ballots into the hot polls (partitions/sql/seed.sql), rebuilds their tallies,
   VACUUM ANALYZE;
3. runs pgbench through PgBouncer (`-M extended`, as PostgREST without prepared statements) with
   partitions/sql/split_load.sql: half the clients vote on hot polls, half on cold ones (anonymous voters
   drawn from a small range, so about a third of the calls are revotes), every transaction logged (-l);
4. after `--split-after` seconds splits the partition from this process (CALL partman.split);
5. reads the pgbench log: votes/s before, during the copy and after the split, and the latency of calls
   that were in flight while the switch held its locks (the writers' wait); prints the tables and writes
   them as the `pgvote partitions benchmark` section of `--report` (`pgvote bench`'s run_mode), `--json`.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from partitions.cli import call
from pgvote.bench.pgbench import Outcome, Run, Transaction, execute
from pgvote.bench.report import Section, run_mode
from pgvote.database_url import database_url
from pgvote.loadtest.report import percentile
from pgvote.loadtest.scenarios import create_poll
from pgvote.paths import PROJECT_ROOT

SQL = Path(__file__).parent / "sql"
SEED_SQL = (SQL / "seed.sql").read_text()
Polls = list[tuple[str, list[str]]]


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> Any:
    """The first column of the one row a query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def make_polls(conn: psycopg.Connection, m: int, r: int, hot: int, cold: int) -> tuple[Polls, Polls]:
    """Polls made by api.create_poll as a signed-in creator (3 options, revotes on) until ``hot`` of them hash
    into slice (m, r) and ``cold`` elsewhere."""
    found: dict[bool, Polls] = {True: [], False: []}
    while len(found[True]) < hot or len(found[False]) < cold:
        spec = create_poll(database_url(), "split-benchmark", ("a", "b", "c"), 1, allow_revote=True)
        inside = bool(one(conn, "select satisfies_hash_partition('voting.ballots'::regclass, %s, %s, %s::uuid)",
                          (m, r, spec.poll_id)))
        if len(found[inside]) < (hot if inside else cold):
            found[inside].append((spec.poll_id, list(spec.option_ids)))
    return found[True], found[False]


def seed(conn: psycopg.Connection, polls: Polls, rows: int, source: str) -> float:
    started, ids = time.monotonic(), [p for p, _ in polls]
    conn.execute(SEED_SQL, {"ids": ids, "opts": [o for _, opts in polls for o in opts], "n": len(ids), "rows": rows})
    conn.execute("select internal.rebuild_tallies(p) from unnest(%s::uuid[]) p", (ids,))
    conn.execute(f"vacuum analyze {source}")
    conn.execute("checkpoint")
    return time.monotonic() - started


def window(name: str, tx: list[Transaction], start: float, end: float) -> tuple[str, ...]:
    """A row: the window's length, votes/s (all, hot polls: even clients, cold polls) of the transactions
    ending in [start, end), and their latency tails (all, and the calls on polls of the partition being split)."""
    inside, span = [t for t in tx if start <= t.end < end], max(end - start, 1e-9)
    hot = [t for t in inside if t.client % 2 == 0]
    tails = [f"{percentile(lat, q) if lat else 0:.1f}" for calls in (inside, hot)
             for lat in [sorted(t.seconds * 1000 for t in calls)] for q in (99, 100)]
    return (name, f"{span:.1f}", f"{len(inside) / span:,.0f}", f"{len(hot) / span:,.0f}",
            f"{(len(inside) - len(hot)) / span:,.0f}", *tails)


def options(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api-url", required=True, help="authenticator through PgBouncer, e.g. "
                    "postgresql://authenticator@127.0.0.1:56432/pgvote")
    ap.add_argument("--partition", help="partition to split (default: the first of voting.ballots)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--hot", type=int, default=20, help="polls in the partition being split")
    ap.add_argument("--cold", type=int, default=40, help="polls elsewhere")
    ap.add_argument("--voters", type=int, default=20_000, help="fingerprints per poll (smaller: more revotes)")
    ap.add_argument("--clients", type=int, default=32, help="pgbench clients; 0: split an idle server")
    ap.add_argument("--split-after", type=float, default=20.0)
    ap.add_argument("--duration", type=int, default=90, help="seconds of load in all (the split must end before)")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--report", type=Path, default=PROJECT_ROOT / "docs" / "partitions.md",
                    help="markdown file whose `pgvote partitions benchmark` section is rewritten "
                         "(default docs/partitions.md)")
    ap.add_argument("--no-report", action="store_true", help="print the tables only")
    ap.add_argument("--json", type=Path, help="write every figure as JSON to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, console = options(argv), Console()
    command = "python -m partitions.benchmark " + " ".join("URL" if "://" in a else a for a in (argv or sys.argv[1:]))
    run_mode("partitions benchmark", lambda: measure(args, console), command=command,
             report_path=None if args.no_report else args.report, json_path=args.json, console=console)
    return 0


def measure(args: argparse.Namespace, console: Console) -> tuple[dict[str, Any], Section]:
    conn = psycopg.connect(database_url(), autocommit=True)
    source, m, r = next(row for row in conn.execute("select name, modulus, remainder from partman.partitions("
                                                     "'voting.ballots') where not pending")
                        if args.partition in (None, row[0], row[0].partition(".")[2]))
    hot, cold = make_polls(conn, m, r, args.hot, args.cold)
    seeded = seed(conn, hot, args.rows, source)
    rows = one(conn, f"select count(*) from {source}")
    console.print(f"seeded {rows:,} rows into {source} in {seeded:.0f} s")
    outcome: Outcome | None = None
    windows: list[tuple[str, ...]] = []
    if args.clients == 0:  # the split alone, on an idle server
        [result] = call(conn, "split", source, args.batch_size)
    else:
        variables = {"voters": str(args.voters), "tag": f"sb{int(time.time())}"}
        for side, polls in (("hot", hot), ("cold", cold)):  # the -D variables of split_load.sql
            variables |= {f"{side}_n": str(len(polls)), f"{side}_polls": "{" + ",".join(p for p, _ in polls) + "}",
                          f"{side}_options": "{" + ",".join(o for _, opts in polls for o in opts) + "}"}
        with ThreadPoolExecutor(1) as pool:
            load_started = time.time()
            load = pool.submit(execute, Run(SQL / "split_load.sql", args.api_url, args.clients, args.duration,
                                            "extended", variables))
            time.sleep(args.split_after)
            split_started = time.time()
            [result] = call(conn, "split", source, args.batch_size)
            outcome = load.result(timeout=args.duration + 120)
        tx = outcome.committed
        windows = [
            window("before", tx, max(load_started + 5, split_started - 15), split_started),
            window("copy", tx, result["copy_started_at"], result["copy_ended_at"]),
            window("switch (calls ending within 2 s of the lock request)", tx, result["switch_started_at"],
                   result["switch_started_at"] + 2),
            window("after", tx, result["switched_at"] + 1, load_started + args.duration - 1),
        ]
        if outcome.aborted:
            console.print(outcome.output[-1500:])
    healthy = not one(conn, "select count(*) from partman.verify('voting') where severity = 'problem'")
    calls, failed = (len(outcome.committed), len(outcome.aborted)) if outcome else (0, 0)
    wait = result["lock_wait_ms"] + result["held_ms"]
    split_row = (source, f"{rows:,}", f"{result['rows_copied']:,}", f"{result['seconds']:.1f} s",
                 f"{result['copy_seconds']:.1f} s ({result['batches']} batches)",
                 f"{result['lock_wait_ms']:.1f} + {result['held_ms']:.1f} ms", f"{wait:.0f} ms", f"{calls:,}",
                 str(failed), "healthy" if healthy else "PROBLEMS")
    figures = {"server": one(conn, "show server_version"), "partition": source, "rows": rows,
               "clients": args.clients, "batch_size": args.batch_size, "split": {**result, "writer_wait_ms": wait},
               "windows": windows, "transactions": calls, "pgbench_aborted_clients": failed,
               "pgbench_errors": list(outcome.aborted.values())[:5] if outcome else [], "verify_healthy": healthy}
    return figures, Section([
        ("split", ("partition", "rows", "rows copied", "split, total", "copy", "switch: lock wait + locks held",
                   "writers' wait", "calls", "failed clients", "`verify` after"), [split_row], range(1, 9)),
        *([("cast_vote in the same run (votes/s: transactions ending in the window ÷ its length)",
            ("window", "seconds", "votes/s", "hot polls", "cold polls", "p99 ms", "max ms", "hot p99 ms",
             "hot max ms"), windows, range(1, 9))] if windows else [])],
        f"; PostgreSQL {figures['server']}; {args.clients} pgbench clients, "
        f"batches of {args.batch_size:,}")


if __name__ == "__main__":
    sys.exit(main())
