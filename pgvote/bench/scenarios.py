"""The benchmark's scenarios, run in one session so that only same-run ratios are compared (absolute
figures drift by 30% between runs on these machines), on its own database: created on the target
cluster, migrated with the project's migrations, filled with bench polls (sql/schema.sql, sql/fill.sql),
and dropped afterwards. Lock observations: lock waits sampled from pg_locks during a run, and the
locks one cast_vote call holds at its end."""
from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from pgvote.bench.pgbench import POSTGREST_RPC, Figures, Run, postgrest_variables, run
from pgvote.database_url import with_database
from pgvote.loadtest import LoadtestConfig
from pgvote.loadtest.scenarios import run_bare, run_bulk_scenario, run_single
from pgvote.loadtest.servers import sampling
from pgvote.migrate import upgrade
from pgvote.schema_dump import scratch_database

BENCH_DATABASE = "pgvote_bench"
HOT_POLL_BALLOTS = 1_000_000
SPREAD_POLLS = 10_000
SQL = Path(__file__).parent / "sql"
LOCK_WAITS_SQL, LOCKS_HELD_SQL = ((SQL / f"{name}.sql").read_text() for name in ("lock_waits", "locks_held"))


@dataclass(frozen=True)
class BenchDatabase:
    admin_url: str      # superuser, direct
    api_url: str        # authenticator through PgBouncer
    bouncer_url: str    # superuser through PgBouncer: the direct scenarios' calls on the production path
    hot_poll: str
    hot_option: str


@contextmanager
def bench_database(admin_url: str, bouncer_url: str, hot_ballots: int = HOT_POLL_BALLOTS,
                   polls: int = SPREAD_POLLS,
                   progress: Callable[[str], None] = lambda message: None) -> Iterator[BenchDatabase]:
    """Create, migrate and fill pgvote_bench; drop it on the way out, whatever happens."""
    with scratch_database(admin_url, name=BENCH_DATABASE) as bench_admin:
        api_url = with_database(bouncer_url, BENCH_DATABASE)
        progress("migrating the bench database")
        upgrade(bench_admin)
        progress(f"creating {polls:,} polls, loading {hot_ballots:,} ballots into the hot poll")
        with psycopg.connect(bench_admin, autocommit=True) as conn:
            conn.execute((SQL / "schema.sql").read_text())
            conn.execute((SQL / "fill.sql").read_text() % {"polls": int(polls), "ballots": int(hot_ballots)})
            conn.execute("analyze")
            hot = conn.execute("select poll_id::text, option_id::text from bench.polls where n = 1").fetchone()
        assert hot is not None, "fill.sql made poll 1"
        yield BenchDatabase(bench_admin, api_url, with_database(api_url, BENCH_DATABASE, "postgres"), *hot)


@dataclass
class LockWaits:
    """What a lock_waits() block saw: samples taken, and per (locktype, relation) how many saw a wait."""

    samples: int = 0
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)


@contextmanager
def lock_waits(url: str, interval: float = 0.002) -> Iterator[LockWaits]:
    """Samples ungranted locks of the current database every few milliseconds while the block runs."""
    waits = LockWaits()

    def sample(conn: psycopg.Connection) -> None:
        waits.seen.update(conn.execute(LOCK_WAITS_SQL).fetchall())
        waits.samples += 1

    with psycopg.connect(url, autocommit=True) as conn, sampling(lambda: sample(conn), interval):
        yield waits


def locks_held_by_one_call(conn: psycopg.Connection, sql: str, params: tuple[object, ...]) -> list[tuple[str, str, str]]:
    """Run one call in a transaction that is rolled back, and list the locks it held."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql, params)
        rows = conn.execute(LOCKS_HELD_SQL).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


SWEEP_CLIENTS = (16, 64, 256, 1000)
DIRECT_SWEEP_CLIENTS = (16, 64, 200)
SPIKE = 50_000  # ballots of the bulk run and votes of the single-vote burst
BULK_SWEEP = ((500, 2), (500, 4), (1000, 2), (1000, 4), (250, 8))  # (batch size, concurrent batches)
BULK_QUICK = ((500, 4),)
BURST_CLIENTS = 200


@dataclass(frozen=True)
class Measured:
    name: str
    description: str
    clients: int
    path: str  # direct prepared | PgBouncer extended
    figures: Figures
    lock_waits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Ratio:
    name: str
    description: str
    value: float
    goal: float
    numerator: str
    denominator: str

    at_most: bool = False  # the goal is an upper bound (a time), not a lower one

    @property
    def met(self) -> bool:
        return self.value <= self.goal if self.at_most else self.value >= self.goal

    @property
    def goal_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.goal:g}"


@dataclass
class Results:
    seconds_per_run: float
    measured: dict[str, Measured] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    reads_warm: Measured | None = None
    reads_under_writes: Measured | None = None
    locks_per_call: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    bulk_seconds: dict[str, float] = field(default_factory=dict)  # bulk run name -> wall seconds for SPIKE ballots


def _loadtest_measured(name: str, description: str, result: dict[str, Any]) -> Measured:
    """A scenario of ``pgvote loadtest --sql`` as a bench row; one vote lost or doubled fails the bench."""
    if not result["verification"]["exactly_once"]:
        raise RuntimeError(f"{name}: not exactly once: {result['verification']}")
    f = result["figures"]
    return Measured(name, description, result["clients"], "PgBouncer, extended",
                    Figures(f["accepted"], f["votes_per_second"], f["gave_up"], **f["request_latency"]))


def run_all(db: BenchDatabase, seconds: float, progress: Callable[[str], None], quick: bool = False) -> Results:
    results = Results(seconds)
    hot = {"npolls": "1"}
    spread = {"npolls": "10000"}

    def production(hook: bool = False) -> dict[str, str]:
        """PostgREST's call on the hot poll, new voters with a prefix of their own (so that no run
        re-casts an earlier run's ballots); with the hook, each client is its own caller."""
        return postgrest_variables(poll_id=db.hot_poll, patterns=[[db.hot_option]], prefix=f"bench-{uuid.uuid4()}-",
                                   per_client=10**12, hook=hook, caller="client")

    def measure(name: str, description: str, script: str, clients: int, variables: dict[str, str],
                via_bouncer: bool = False, as_superuser: bool = False) -> Measured:
        progress(f"{name}: {description}, {clients} clients")
        url, protocol = ((db.bouncer_url if as_superuser else db.api_url, "extended") if via_bouncer
                         else (db.admin_url, "prepared"))
        with lock_waits(db.admin_url, interval=0.01) as waits:
            figures = run(Run(script, url, clients, seconds, protocol, variables))
        m = Measured(name, description, clients, "PgBouncer, extended" if via_bouncer else "direct, prepared",
                     figures, {f"{locktype} {relation}".strip(): n for (locktype, relation), n in waits.seen.items()})
        results.measured[name] = m
        return m

    # Direct connections cannot go past max_connections (300): the sweep stops at 200, and runs before
    # PgBouncer holds server connections of its own.
    for c in sorted(DIRECT_SWEEP_CLIENTS, key=lambda c: c != 64):  # 64 first, as the ratios' pair
        suffix = "" if c == 64 else f"_{c}"
        measure(f"bare_insert{suffix}", "bare INSERT of one ballot row, hot poll", "bare_insert.sql", c, hot)
        measure(f"cast_vote_hot{suffix}", "cast_vote, one hot poll", "cast_vote.sql", c, hot)
    measure("cast_vote_spread", "cast_vote spread over 10,000 polls", "cast_vote.sql", 64, spread)
    measure("cast_vote_pgbouncer", "cast_vote, one hot poll, through PgBouncer without prepared statements",
            "cast_vote.sql", 64, hot, via_bouncer=True, as_superuser=True)
    measure("guide_baseline", "the original guide's vote path (4 statements, counter row)", "guide_baseline.sql", 64, hot)
    for c in SWEEP_CLIENTS:
        measure(f"postgrest_{c}", "cast_vote as PostgREST sends it, through PgBouncer", POSTGREST_RPC, c, production(),
                via_bouncer=True)
    with psycopg.connect(db.admin_url, autocommit=True) as conn:  # measure the hook's cost, refuse nothing
        conn.execute("update rate_limit.limits set requests_per_minute = 1e6, burst = 1000000")
    measure("postgrest_64_rate_limited", "the same with the rate-limit pre-request hook on",
                   POSTGREST_RPC, 64, production(hook=True), via_bouncer=True)
    # The 50,000-vote burst and the bulk path: `pgvote loadtest --sql`'s scenarios on the bench database
    # (PostgREST's statements through PgBouncer, the hook on, verified exactly once): the same transactions
    # as bare inserts and as cast_vote, then SPIKE ballots through cast_votes for each (batch size,
    # concurrent batches); the fastest bulk run counts.
    cfg = LoadtestConfig(database_url=db.api_url, admin_url=db.admin_url, voters=SPIKE, clients=BURST_CLIENTS)
    quiet = Console(quiet=True)
    for name, scenario in (("burst_bare_insert", run_bare), ("burst_cast_vote", run_single)):
        progress(f"{name}: {SPIKE:,} votes as PostgREST sends them, {BURST_CLIENTS} clients through PgBouncer")
        results.measured[name] = _loadtest_measured(name, f"{SPIKE:,}-vote burst, {name.removeprefix('burst_')}, "
                                                    "hook on, each vote once", scenario(cfg, quiet, True))
    for batch, clients in (BULK_QUICK if quick else BULK_SWEEP):
        name = f"bulk_{batch}x{clients}"
        progress(f"{name}: {SPIKE:,} ballots through cast_votes, batches of {batch}, {clients} at a time")
        bulk = run_bulk_scenario(replace(cfg, batch=batch, clients=clients), quiet, True)
        results.bulk_seconds[name] = bulk["figures"]["drain_seconds"]
        results.measured[name] = _loadtest_measured(name, f"cast_votes, batches of {batch} (rate: ballots/s)", bulk)

    for number, candidate in enumerate(("shared_counter", "delta_log", "backend_slot"), start=1):
        measure(f"tally_{candidate}", f"tally candidate: ballot + {candidate.replace('_', ' ')}", "tally_candidate.sql",
                64, {**hot, "candidate": str(number)})

    # Production state: pg_cron merges the slots of exited backends every minute (pgvote_bench has no
    # pg_cron of its own, and every pgbench run above left its backends' slots behind).
    with psycopg.connect(db.admin_url, autocommit=True) as conn:
        conn.execute("select internal.compact_tally_slots()")
    progress("poll_results of the 1M-ballot poll, warm, no other load")
    results.reads_warm = Measured("poll_results_warm", "poll_results, 1M-ballot poll, warm, no writes", 4,
                                  "direct, prepared", run(Run("poll_results.sql", db.admin_url, 4, seconds, "prepared",
                                                              {"poll": db.hot_poll})))
    progress("R5: poll_results of the 1M-ballot poll while 64 clients vote on it")
    with ThreadPoolExecutor(max_workers=2) as pool:
        writers = pool.submit(run, Run("cast_vote.sql", db.admin_url, 64, seconds, "prepared", hot))
        readers = pool.submit(run, Run("poll_results.sql", db.admin_url, 4, seconds, "prepared", {"poll": db.hot_poll}))
        results.reads_under_writes = Measured("poll_results_under_writes", "poll_results, 1M-ballot poll, under writes",
                                              4, "direct, prepared", readers.result())
        results.measured["writes_during_reads"] = Measured(
            "writes_during_reads", "cast_vote on the same poll during the reads", 64, "direct, prepared", writers.result())

    with psycopg.connect(db.admin_url, autocommit=True) as conn:
        call = "select api.cast_vote(%s, array[%s]::uuid[], %s)"
        results.locks_per_call["cast_vote, new ballot"] = locks_held_by_one_call(
            conn, call, (db.hot_poll, db.hot_option, "lock-probe-new"))
        conn.execute(call, (db.hot_poll, db.hot_option, "lock-probe-revote"))
        second = conn.execute("select option_id::text from voting.poll_options where poll_id = %s and position = 2",
                              (db.hot_poll,)).fetchone()
        assert second is not None, "the hot poll has two options"
        other = second[0]
        results.locks_per_call["cast_vote, revote"] = locks_held_by_one_call(
            conn, call, (db.hot_poll, other, "lock-probe-revote"))

    def ratio(name: str, description: str, numerator: str, denominator: str, goal: float) -> Ratio:
        value = results.measured[numerator].figures.per_second / results.measured[denominator].figures.per_second
        return Ratio(name, description, value, goal, numerator, denominator)

    results.ratios = [
        ratio("R1", "write cost: cast_vote / bare INSERT (direct, prepared, 64 clients, hot poll)",
              "cast_vote_hot", "bare_insert", 0.80),
        ratio("R2", "hot poll: cast_vote on ONE poll / spread over 10,000 polls", "cast_vote_hot", "cast_vote_spread",
              0.90),
        ratio("R3", "vs the original guide's design (one hot poll, 64 clients)", "cast_vote_hot", "guide_baseline", 4.0),
        ratio("R4", "production path: cast_vote through PgBouncer (transaction mode, no prepared statements) / direct "
              "prepared", "cast_vote_pgbouncer", "cast_vote_hot", 0.60),
        ratio("R4+", "the same with PostgREST's whole envelope (BEGIN, set_config, json_to_record call, COMMIT: 4 round "
              "trips)", "postgrest_64", "cast_vote_hot", 0.60),
        ratio("hook", "rate limiting on: PostgREST path with hooks.pre_request / without (PgBouncer, 64 clients)",
              "postgrest_64_rate_limited", "postgrest_64", 0.80),
        ratio("burst", f"{SPIKE:,}-vote burst: cast_vote / bare insert, same transactions, clients and path "
              f"(PostgREST's statements, hook on, {BURST_CLIENTS} clients through PgBouncer)",
              "burst_cast_vote", "burst_bare_insert", 0.80),
    ]
    fastest = min(results.bulk_seconds, key=results.bulk_seconds.__getitem__)
    results.ratios.append(Ratio("bulk", f"seconds for {SPIKE:,} ballots of one poll through cast_votes (ingest role, "
                                f"PgBouncer; fastest of the sweep: {fastest.removeprefix('bulk_')} batch x clients)",
                                results.bulk_seconds[fastest], 1.0, fastest, "", at_most=True))
    return results
