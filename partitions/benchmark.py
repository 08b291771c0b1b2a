"""Measure a split under load: `python -m partitions.benchmark` (figures in docs/partitions.md).

On a FRESH local stack (it adds polls and bulk ballots that stay there):

1. creates polls with `api.create_poll` (plain SQL as role authenticated, as PostgREST calls it)
   until `--hot` of them hash into the partition to split and `--cold` into other partitions;
2. bulk-inserts `--rows` ballots into the hot polls (INSERT .. SELECT as superuser), rebuilds
   their tallies, VACUUM ANALYZE;
3. runs pgbench through PgBouncer (`-M extended`, as PostgREST without prepared statements):
   one script votes on hot polls, one on cold polls (anonymous voters drawn from a small range,
   so about a third of the calls are revotes), every transaction logged (-l);
4. after `--split-after` seconds splits the partition from this process (CALL partman.split);
5. reads the pgbench logs: votes/s before, during the copy and after the split, and the latency
   of calls that were in flight while the switch held its locks (the writers' wait).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from partitions.cli import call
from pgvote.bench.pgbench import Run, Transaction, execute
from pgvote.database_url import database_url
from pgvote.loadtest.scenarios import create_poll


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> Any:
    """The first column of the one row a query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]

SCRIPT = """\\set p random(1, {n})
\\set o random(1, 3)
\\set v random(1, {voters})
begin isolation level read committed read write;
select set_config('search_path', '"api", "public"', true), set_config('role', 'anon', true),
       set_config('request.jwt.claims', '{{"role":"anon"}}', true), set_config('request.method', 'POST', true);
select api.cast_vote(('{polls}'::uuid[])[:p], array[('{options}'::uuid[])[(:p - 1) * 3 + :o]],
                     '{tag}-' || :p || '-' || :v);
commit;
"""


def make_polls(conn: psycopg.Connection, admin_url: str, m: int, r: int, hot: int, cold: int,
               ) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """Polls made by api.create_poll as a signed-in creator (3 options, revotes on) until ``hot`` of them hash
    into slice (m, r) and ``cold`` elsewhere."""
    found: dict[bool, list[tuple[str, list[str]]]] = {True: [], False: []}
    while len(found[True]) < hot or len(found[False]) < cold:
        spec = create_poll(admin_url, "split-benchmark", ("a", "b", "c"), 1, allow_revote=True)
        inside = bool(one(conn, "select satisfies_hash_partition('voting.ballots'::regclass, %s, %s, %s::uuid)",
                          (m, r, spec.poll_id)))
        if len(found[inside]) < (hot if inside else cold):
            found[inside].append((spec.poll_id, list(spec.option_ids)))
    return found[True], found[False]


def seed(conn: psycopg.Connection, polls: list[tuple[str, list[str]]], rows: int, source: str) -> float:
    started = time.monotonic()
    ids = [p for p, _ in polls]
    options = [o for _, opts in polls for o in opts]
    conn.execute("""insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
                    select (%(ids)s::uuid[])[1 + g %% %(n)s], sha256(('seed-' || g)::bytea),
                           '00000000-0000-0000-0000-000000000000',
                           array[(%(opts)s::uuid[])[(g %% %(n)s) * 3 + 1 + (g / %(n)s) %% 3]]
                    from generate_series(0, %(rows)s - 1) g""",
                 {"ids": ids, "opts": options, "n": len(ids), "rows": rows})
    if one(conn, "select to_regprocedure('internal.rebuild_tallies(uuid)') is not null"):
        for poll_id in ids:
            conn.execute("select internal.rebuild_tallies(%s)", (poll_id,))
    conn.execute(f"vacuum analyze {source}")
    conn.execute("checkpoint")
    return time.monotonic() - started


def window(name: str, tx: list[Transaction], start: float, end: float) -> dict[str, Any]:
    """votes/s (all, hot polls, cold polls) of the transactions ending in [start, end), and their latency tails
    (all, and the calls on polls of the partition being split)."""
    inside, span = [t for t in tx if start <= t.end < end], max(end - start, 1e-9)
    out: dict[str, Any] = {"name": name, "seconds": round(span, 2),
                           "hot_per_second": round(sum(t.script == 0 for t in inside) / span),
                           "cold_per_second": round(sum(t.script == 1 for t in inside) / span),
                           "per_second": round(len(inside) / span)}
    for prefix, calls in (("", inside), ("hot_", [t for t in inside if t.script == 0])):
        lat = sorted(t.seconds * 1000 for t in calls) or [0.0]
        out |= {f"{prefix}max_ms": round(lat[-1], 1), f"{prefix}p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}
    return out


def main(argv: list[str] | None = None) -> int:
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    conn = psycopg.connect(database_url(), autocommit=True)
    source, m, r = next(row for row in conn.execute("select name, modulus, remainder from partman.partitions("
                                                     "'voting.ballots') where not pending")
                        if args.partition in (None, row[0], row[0].partition(".")[2]))
    hot, cold = make_polls(conn, database_url(), m, r, args.hot, args.cold)
    seeded = seed(conn, hot, args.rows, source)
    rows = one(conn, f"select count(*) from {source}")
    print(f"seeded {rows:,} rows into {source} in {seeded:.0f} s", file=sys.stderr)

    logs = Path(tempfile.mkdtemp(prefix="split-bench-"))
    tag = f"sb{int(time.time())}"
    for name, polls in (("hot", hot), ("cold", cold)):
        (logs / f"{name}.sql").write_text(SCRIPT.format(
            n=len(polls), voters=args.voters, tag=f"{tag}-{name}",
            polls="{" + ",".join(p for p, _ in polls) + "}",
            options="{" + ",".join(o for _, opts in polls for o in opts) + "}"))
    outcome, windows = None, []
    if args.clients == 0:  # the split alone, on an idle server
        [result] = call(conn, "split", source, args.batch_size)
    else:
        run = Run(Path(f"{logs / 'hot.sql'}@1"), args.api_url, args.clients, args.duration, "extended",
                  more_scripts=(f"{logs / 'cold.sql'}@1",))
        with ThreadPoolExecutor(1) as pool:
            load_started = time.time()
            load = pool.submit(execute, run)
            time.sleep(args.split_after)
            split_started = time.time()
            [result] = call(conn, "split", source, args.batch_size)
            outcome = load.result(timeout=args.duration + 120)
        tx, load_ended = outcome.committed, load_started + args.duration
        windows = [
            window("before", tx, max(load_started + 5, split_started - 15), split_started),
            window("copy", tx, result["copy_started_at"], result["copy_ended_at"]),
            window("switch (calls ending within 2 s of the lock request)", tx, result["switch_started_at"],
                   result["switch_started_at"] + 2),
            window("after", tx, result["switched_at"] + 1, load_ended - 1),
        ]
    figures = {
        "machine": {"cpus": os.cpu_count(), "postgres": one(conn, "show server_version"),
                    "load_average_1m": os.getloadavg()[0]},
        "partition": source, "rows": rows, "clients": args.clients, "batch_size": args.batch_size,
        "split": {**result, "writer_wait_ms": result["lock_wait_ms"] + result["held_ms"]},
        "windows": windows,
        "transactions": len(outcome.committed) if outcome else 0,
        "pgbench_aborted_clients": len(outcome.aborted) if outcome else 0,
        "pgbench_errors": list(outcome.aborted.values())[:5] if outcome else [],
        "verify_healthy": not one(conn, "select count(*) from partman.verify('voting') where severity = 'problem'"),
    }
    shutil.rmtree(logs, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    print(outcome.output[-1500:] if outcome else "", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
