"""The SQL-level scenarios of ``pgvote loadtest --sql``: pgbench through PgBouncer with PostgREST's
statements. Client c's k-th transaction casts number ``c * per_client + k``, so pgbench's log of committed
transactions names every acknowledged voter; further passes re-cast what a lost connection left
unanswered (docs/benchmarks.md).

The ballots of a run: voter n's fingerprint is ``lt-<tag>-<n>`` and its option set
``patterns[n % len(patterns)]``: the k6 scripts (``k6/vote.js``) and the pgbench script
(``pgvote/bench/scripts/postgrest_rpc.sql``) build the same, so verification can compare every stored
ballot with what that voter cast, not only count rows."""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from rich.console import Console

from pgvote.bench.pgbench import POSTGREST_RPC, SCRIPTS, Outcome, Run, Transaction, execute, postgrest_variables
from pgvote.loadtest.report import Record, figures, timeline
from pgvote.loadtest.servers import local_ports, measuring
from pgvote.stack import read_postgrest_conf

if TYPE_CHECKING:
    from pgvote.loadtest import LoadtestConfig

OPTIONS = ("PostgreSQL", "PgBouncer", "PostgREST", "psycopg")
MAX_CHOICES = 2
SCHEMA = "pgvote_loadtest"
SETUP_SQL, STORED_SQL, VERIFY_SQL = ((Path(__file__).parent / "sql" / f"{name}.sql").read_text()
                                     for name in ("scratch", "scratch_stored", "verify"))


@dataclass(frozen=True)
class BallotSpec:
    poll_id: str
    option_ids: tuple[str, ...]
    tag: str  # unique per run: identities never collide with another run's
    max_choices: int = 2

    @property
    def patterns(self) -> tuple[tuple[str, ...], ...]:
        """Every option set of 1..max_choices options, in the poll's option order."""
        return tuple(itertools.chain.from_iterable(itertools.combinations(self.option_ids, k)
                                                   for k in range(1, self.max_choices + 1)))

    @property
    def prefix(self) -> str:
        return f"lt-{self.tag}-"

    def fingerprint(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def options_for(self, fingerprint: str) -> tuple[str, ...]:
        return self.patterns[int(fingerprint.removeprefix(self.prefix)) % len(self.patterns)]

    def bulk_item(self, n: int) -> dict[str, Any]:
        """One ``cast_votes`` ballot: even voters authenticated by the edge tier (``voter_id``), odd ones anonymous."""
        ident = self.fingerprint(n)
        return {"poll_id": self.poll_id, "option_ids": list(self.options_for(ident)),
                "voter_id" if n % 2 == 0 else "voter_fingerprint": ident}

    def bulk_identity(self, n: int) -> str:
        return identity(self.fingerprint(n), signed_in=n % 2 == 0)


def identity(fingerprint: str, *, signed_in: bool = False) -> str:
    """The domain-separated identity the server digests: ``fp:<fingerprint>`` or ``sub:<id>``."""
    return ("sub:" if signed_in else "fp:") + fingerprint


def create_poll(admin_url: str, tag: str | None = None, options: tuple[str, ...] = OPTIONS,
                max_choices: int = MAX_CHOICES, allow_revote: bool = False) -> BallotSpec:
    """A single-ballot poll open to anonymous voters, created by ``api.create_poll`` as a signed-in creator
    would call it (role and JWT claims set as PostgREST sets them); ``tag``, unique per run unless given,
    makes the voters' fingerprints unique."""
    tag = tag or uuid.uuid4().hex[:10]
    claims = json.dumps({"role": "authenticated", "sub": f"loadtest-creator-{tag}"})
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true), "
                     "set_config('request.jwt.claims', %s, true)", (claims,))
        row = conn.execute("select api.create_poll(%s, %s, max_choices => %s, allow_revote => %s)",
                           (f"Load test {tag}: which part do you trust most?", list(options), max_choices,
                            allow_revote)).fetchone()
    assert row is not None
    return BallotSpec(row[0]["poll_id"], tuple(row[0]["option_ids"]), tag, max_choices)


def verify_poll(admin_url: str, poll_id: str, acknowledged: Mapping[str, Sequence[str]],
                attempted: Sequence[str] = ()) -> dict[str, Any]:
    """``acknowledged``: identity -> option ids that voter cast and got a 200 for; ``attempted``: other
    identities the run tried (not acknowledged: their ballot may or may not be stored). The counts of
    sql/verify.sql, its ``problems`` and ``exactly_once`` (no problem)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        results = None  # api.poll_results as an anonymous reader calls it, from the database (not a cached answer)
        with contextlib.suppress(psycopg.Error), admin.transaction():  # poll_not_found: rolled back
            admin.execute("select set_config('role', 'anon', true)")
            results = (admin.execute("select api.poll_results(%s)", (poll_id,)).fetchone() or (None,))[0]
        with admin.cursor(row_factory=dict_row) as cur:
            row = cur.execute(VERIFY_SQL, {"poll": poll_id, "acked": json.dumps({k: list(v) for k, v in acknowledged.items()}),
                                           "attempted": list(attempted),
                                           "results": json.dumps(results) if results else None}).fetchone()
    assert row is not None
    return {**row, "exactly_once": not row["problems"]}


def pre_request_hook(admin_url: str) -> str | None:
    """``db-pre-request`` of the project's api/postgrest.conf, when that function exists in the database:
    PostgREST calls it in every request's transaction, so the load does too."""
    if not (hook := read_postgrest_conf().get("db-pre-request")):
        return None
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return hook if conn.execute("select to_regprocedure(%s) is not null", (hook + "()",)).fetchone() == (True,) else None


#: Passes of pgbench per scenario: the first casts everything, each next one re-casts, identically, what
#: the previous left unanswered after a retryable error (a lost connection or PgBouncer's queue timeout:
#: FATAL or a client-side message, PostgREST's 503) and casts what its aborted clients never reached.
MAX_PASSES = 5


@dataclass
class Cast:  # what became of one voter (or batch) over the passes
    attempts: int = 0
    committed: Transaction | None = None
    error: str = ""  # the last error, while not committed


def retryable(error: str) -> bool:
    """An ``ERROR:`` is the server's answer to the call (an API error: final); anything else means the
    connection went away (``FATAL:`` from PgBouncer or PostgreSQL, or libpq's own message)."""
    return not error.startswith("ERROR:")


def cast_all(cfg: LoadtestConfig, script: str | Path, clients: int, per_client: int, variables: dict[str, str],
             label: str, console: Console, quiet: bool) -> tuple[dict[int, Cast], list[Outcome], dict[str, Any]]:
    """Numbers 0 .. clients x per_client - 1 through PgBouncer, as many passes as needed (``MAX_PASSES``);
    also the servers' memory, pools and CPU while they ran, with pgbench's own CPU."""
    casts, measured, outcomes = dict[int, Cast](), dict[str, Any](), list[Outcome]()
    pending = list(range(clients * per_client))
    servers = local_ports(postgres=cfg.admin_url, pgbouncer=cfg.database_url)
    with measuring(servers, cfg.bouncer_admin_url, measured, cfg.sample_interval):
        for recast in range(MAX_PASSES):
            slots = pending
            if recast:
                time.sleep(1)  # the servers finish the previous pass's tail
                clients, per_client = _plan(len(pending), clients)
                slots = [pending[i % len(pending)] for i in range(clients * per_client)]  # the last repeat: idempotent
                stage(cfg.admin_url, "recasts", slots)
            run = Run(script, cfg.database_url, clients, transactions=per_client, protocol="extended",
                      variables={**variables, "per_client": str(per_client), "recast": str(int(recast > 0))})
            shown = f"{label}{f', re-cast {recast}' if recast else ''}, {len(slots):,} transactions"
            outcomes.append(execute(run, partial(console.print, f"[dim]{shown}:") if not quiet else lambda line: None))
            if not (pending := _settle_pass(outcomes[-1], per_client, slots, casts)):
                break
    measured["cpu_seconds"] = {"pgbench": round(sum(o.cpu_seconds for o in outcomes), 2), **measured["cpu_seconds"]}
    return casts, outcomes, measured


def _settle_pass(outcome: Outcome, per_client: int, slots: list[int], casts: dict[int, Cast]) -> list[int]:
    """Record one pass in ``casts``; return what the next pass must cast."""
    committed = {t.client * per_client + t.number: t for t in outcome.committed}
    done = Counter(t.client for t in outcome.committed)
    for slot, number in enumerate(slots):
        cast = casts.setdefault(number, Cast())
        client, n = divmod(slot, per_client)
        if slot in committed:
            cast.attempts += 1
            cast.committed = committed[slot]
        elif client in outcome.aborted and n == done[client]:  # in flight when its client was aborted
            cast.attempts += 1
            cast.error = outcome.aborted[client]
    return sorted({number for number, cast in casts.items() if cast.committed is None
                   and (cast.attempts == 0 or retryable(cast.error))} & set(slots))


def records(casts: dict[int, Cast], name: Callable[[int], str]) -> list[Record]:
    """One record per number attempted: acknowledged when a pass committed it, else its last error."""
    end = max((c.committed.end for c in casts.values() if c.committed), default=time.time())
    return [(name(n), "ack", 200, "committed", c.committed.end - c.committed.seconds, c.committed.end, c.attempts,
             c.attempts == 1) if c.committed else
            (name(n), "gave_up" if retryable(c.error) else "rejected", 0, c.error, end, end, c.attempts, False)
            for n, c in sorted(casts.items()) if c.attempts]


def _burst_result(name: str, path: str, clients: int, voters: int, outcomes: list[Outcome], recs: list[Record],
                  measured: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    t0 = min((r[4] for r in recs if r[1] == "ack"), default=time.time())
    errors = Counter(error for o in outcomes for error in o.aborted.values())
    first = outcomes[0]  # the burst itself; then how many re-cast passes followed
    return {"name": name, "path": path, "voters": voters, "clients": clients, "figures": figures(recs, t0, errors),
            "pgbench": {"exit_code": first.exit_code, "transactions": first.processed, "tps": first.per_second,
                        "aborted_clients": len(first.aborted), "recast_passes": len(outcomes) - 1,
                        "recast_transactions": sum(o.processed for o in outcomes[1:])},
            **measured, "timeline": timeline(recs, t0), **extra}


def _plan(voters: int, clients: int) -> tuple[int, int]:
    """(clients, transactions per client): every client casts the same number (pgbench -t), so the voters
    are rounded up to a multiple of the clients."""
    clients = max(1, min(clients, voters))
    return clients, math.ceil(voters / clients)


def run_single(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """The burst through ``api.cast_vote`` as PostgREST calls it, through PgBouncer, then verification."""
    ballots = create_poll(cfg.admin_url)
    hook = pre_request_hook(cfg.admin_url)
    clients, per_client = _plan(cfg.voters, cfg.clients)
    variables = postgrest_variables(poll_id=ballots.poll_id, patterns=ballots.patterns, prefix=ballots.prefix,
                                    per_client=per_client, hook=hook is not None, caller="voter")
    with scratch_schema(cfg.admin_url, cfg.database_url):
        casts, outcomes, measured = cast_all(cfg, POSTGREST_RPC, clients, per_client, variables, "cast_vote", console, quiet)
    recs = records(casts, ballots.fingerprint)
    acked = {identity(r[0]): list(ballots.options_for(r[0])) for r in recs if r[1] == "ack"}
    check = verify_poll(cfg.admin_url, ballots.poll_id, acked, [identity(r[0]) for r in recs])
    return _burst_result("single-vote burst", "db", clients, clients * per_client, outcomes, recs, measured,
                         {"poll_id": ballots.poll_id, "pre_request": hook, "verification": check})


def run_bare(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """The same burst against the bare-insert reference function (sql/scratch.sql)."""
    ballots = BallotSpec(str(uuid.uuid4()), tuple(str(uuid.uuid4()) for _ in OPTIONS), uuid.uuid4().hex[:10])
    clients, per_client = _plan(cfg.voters, cfg.clients)
    # no pre-request hook: its bucket write per caller is part of what the ratio charges cast_vote with
    variables = postgrest_variables(poll_id=ballots.poll_id, patterns=ballots.patterns, prefix=ballots.prefix,
                                    per_client=per_client)
    with scratch_schema(cfg.admin_url, cfg.database_url), tempfile.TemporaryDirectory(prefix="pgvote-loadtest-") as tmp:
        casts, outcomes, measured = cast_all(cfg, bare_script(Path(tmp)), clients, per_client, variables,
                                             "bare insert", console, quiet)
        recs = records(casts, ballots.fingerprint)
        acked = [r[0] for r in recs if r[1] == "ack"]
        stored, found = stored_in_scratch(cfg.admin_url, ballots.poll_id, acked)
    check = {"accepted": len(acked), "stored": stored, "lost": len(acked) - found,
             "duplicated": 0, "exactly_once": stored == found == len(acked)}  # the primary key forbids twins
    return _burst_result("bare-insert reference", "bare", clients, clients * per_client, outcomes, recs, measured,
                         {"verification": check})


def run_bulk_scenario(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """N ballots through ``api.cast_votes`` from ``clients`` connections, every client the same number
    of batches of at most ``batch`` ballots (so the batches are split evenly: voter v is in batch
    ``v * batches // voters``)."""
    ballots = create_poll(cfg.admin_url)
    clients, per_client = _plan(math.ceil(cfg.voters / cfg.batch), cfg.clients)
    count = clients * per_client
    if count > cfg.voters:
        raise ValueError(f"{cfg.voters:,} ballots cannot fill {count} batches: use fewer --clients or a larger --batch")
    plan: list[list[int]] = [[] for _ in range(count)]
    for v in range(cfg.voters):
        plan[v * count // cfg.voters].append(v)
    variables = postgrest_variables(poll_id=ballots.poll_id, prefix=ballots.prefix, per_client=per_client,
                                    role="ingest", hook=pre_request_hook(cfg.admin_url) is not None, bulk=True)
    with scratch_schema(cfg.admin_url, cfg.database_url):
        stage(cfg.admin_url, "batches", [json.dumps({"ballots": [ballots.bulk_item(v) for v in voters]})
                                                 for voters in plan])
        casts, outcomes, measured = cast_all(cfg, POSTGREST_RPC, clients, per_client, variables,
                                             f"cast_votes, {count} batches", console, quiet)
    per_batch = records(casts, str)  # a record per batch; then one per ballot, its batch's fate
    recs: list[Record] = [(ballots.fingerprint(v), *r[1:]) for r in per_batch for v in plan[int(r[0])]]
    acked = {ballots.bulk_identity(v): list(ballots.options_for(ballots.fingerprint(v)))
             for r in per_batch if r[1] == "ack" for v in plan[int(r[0])]}
    check = verify_poll(cfg.admin_url, ballots.poll_id, acked, [ballots.bulk_identity(v) for v in range(cfg.voters)])
    return _burst_result("bulk ingestion", "bulk", clients, cfg.voters, outcomes, recs, measured, {
        "poll_id": ballots.poll_id, "batch": max(len(voters) for voters in plan), "batches": count,
        "committed_batches": sum(r[1] == "ack" for r in per_batch), "verification": check})


@contextmanager
def scratch_schema(admin_url: str, login_url: str) -> Iterator[None]:
    """The scratch schema for the block, dropped afterwards; the role of ``login_url`` (PostgREST's, that
    the load connects as) reads the staged batches and re-casts."""
    login = urlsplit(login_url).username or "authenticator"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(SETUP_SQL)
        conn.execute(sql.SQL("grant usage on schema pgvote_loadtest to {login}; grant select on "
                             "pgvote_loadtest.batches, pgvote_loadtest.recasts to {login}")
                     .format(login=sql.Identifier(login)))
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("drop schema if exists pgvote_loadtest cascade")


def bare_script(directory: Path) -> Path:
    """The PostgREST script with its one call of ``api.cast_vote`` pointed at the bare insert (an
    identifier cannot be a pgbench variable under -M extended): nothing else differs."""
    call = '"api"."cast_vote"('
    text = (SCRIPTS / POSTGREST_RPC).read_text()
    if text.count(call) != 1:
        raise RuntimeError(f"{POSTGREST_RPC} should call {call} exactly once")
    path = directory / "bare_insert_rpc.sql"
    path.write_text(text.replace(call, f'"{SCHEMA}"."cast_vote"('))
    return path


def stored_in_scratch(admin_url: str, poll_id: str, fingerprints: list[str]) -> tuple[int, int]:
    """(ballots stored for the poll, how many of ``fingerprints`` have one)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(STORED_SQL, {"poll": poll_id, "fps": fingerprints}).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def stage(admin_url: str, table: str, rows: list[str] | list[int]) -> None:
    """Rows written before the clock starts, row ``i`` at key ``i``: ``batches`` (the bulk path's request
    bodies) or ``recasts`` (slot ``i`` of a re-cast pass casts number ``rows[i]``)."""
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("truncate pgvote_loadtest.{}").format(sql.Identifier(table)))
        cur.executemany(sql.SQL("insert into pgvote_loadtest.{} values (%s, %s)").format(sql.Identifier(table)),
                        list(enumerate(rows)))
