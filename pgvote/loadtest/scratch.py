"""The scratch schema ``pgvote_loadtest`` of a SQL-level scenario: the bare-insert reference, the bulk
path's staged batches, what a re-cast pass casts. Created for a scenario, dropped afterwards.

The bare-insert reference is the same pgbench script, clients, PgBouncer and PostgREST envelope as
the single-vote burst (``pgvote/bench/scripts/postgrest_rpc.sql``, called as the anonymous role with
the same transaction-local settings), but the function it calls only inserts the ballot row, and
the pre-request hook is left out. So the drain-rate ratio ``cast_vote / bare insert`` isolates what
a vote costs on top of a bare insert (the rate-limit hook and its bucket row, poll lookup and fence
lock, HMAC voter key, ballot validation, tally slot) from everything the two share: pgbench,
PgBouncer, the envelope's other round trips, the durable commit.

Like with like: the same signature, JSON body and ``json_to_record`` main query; SECURITY DEFINER,
executable by ``anon`` only; a row of ``voting.ballots``'s shape (poll, 32-byte voter key, ballot
id, option array, timestamp) with its primary key and as many hash partitions; ``ON CONFLICT DO
NOTHING`` (an identical re-cast is idempotent here too); one durable commit per vote. Its voter
key is a plain sha256 (no secret lookup).
"""
from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from pgvote.bench.pgbench import POSTGREST_RPC, SCRIPTS

SCHEMA = "pgvote_loadtest"

_SETUP = """
drop schema if exists pgvote_loadtest cascade;
create schema pgvote_loadtest;
-- the shape of voting.ballots (columns, defaults, primary key, indexes), taken from the table itself
create table pgvote_loadtest.ballots (like voting.ballots including defaults including constraints including indexes)
    partition by hash (poll_id);
-- read by the login role (postgrest_rpc.sql): the bulk path's request bodies, one per batch, and what
-- each slot of a re-cast pass casts
create table pgvote_loadtest.batches (n integer primary key, body text not null);
create table pgvote_loadtest.recasts (slot integer primary key, number integer not null);
create function pgvote_loadtest.cast_vote(
    poll_id uuid, option_ids uuid[], voter_fingerprint text default null, ballot_id uuid default null
) returns jsonb
language sql volatile security definer set search_path = pg_catalog, pg_temp
as $$
    with ins as (
        insert into pgvote_loadtest.ballots (poll_id, voter_key, ballot_id, option_ids)
        values ($1, sha256(convert_to('fp:' || $3, 'UTF8')), '00000000-0000-0000-0000-000000000000', $2)
        on conflict do nothing
        returning 1
    )
    select jsonb_build_object('poll_id', $1, 'option_ids', to_jsonb($2),
                              'status', case when exists (select from ins) then 'recorded' else 'unchanged' end)
$$;
revoke all on function pgvote_loadtest.cast_vote(uuid, uuid[], text, uuid) from public;
grant usage on schema pgvote_loadtest to anon;
grant execute on function pgvote_loadtest.cast_vote(uuid, uuid[], text, uuid) to anon;
"""


def setup(admin_url: str, login_role: str) -> None:
    """(Re)create the scratch schema, its ballots with as many hash partitions as ``voting.ballots``;
    ``login_role`` (PostgREST's, in the URL the load connects with) reads the staged batches."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_inherits where inhparent = 'voting.ballots'::regclass").fetchone()
        partitions = max(1, int(row[0])) if row else 1
        conn.execute(_SETUP)
        for i in range(partitions):
            conn.execute(f"create table pgvote_loadtest.ballots_{i} partition of pgvote_loadtest.ballots "
                         f"for values with (modulus {partitions}, remainder {i})")
        conn.execute(sql.SQL("grant usage on schema pgvote_loadtest to {login}; grant select on "
                             "pgvote_loadtest.batches, pgvote_loadtest.recasts to {login}")
                     .format(login=sql.Identifier(login_role)))


def bare_script(directory: Path) -> Path:
    """The PostgREST script with its one call of ``api.cast_vote`` pointed at the bare insert: nothing
    else differs."""
    call = '"api"."cast_vote"('
    text = (SCRIPTS / POSTGREST_RPC).read_text()
    if text.count(call) != 1:
        raise RuntimeError(f"{POSTGREST_RPC} should call {call} exactly once")
    path = directory / "bare_insert_rpc.sql"
    path.write_text(text.replace(call, f'"{SCHEMA}"."cast_vote"('))
    return path


def stored(admin_url: str, poll_id: str, fingerprints: list[str]) -> tuple[int, int]:
    """(ballots stored for the poll, how many of ``fingerprints`` have one)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        total = conn.execute("select count(*) from pgvote_loadtest.ballots where poll_id = %s", (poll_id,)).fetchone()
        found = conn.execute(
            "select count(*) from pgvote_loadtest.ballots b join unnest(%s::text[]) f "
            "on b.voter_key = sha256(convert_to('fp:' || f, 'UTF8')) where b.poll_id = %s",
            (fingerprints, poll_id)).fetchone()
    return int(total[0]) if total else 0, int(found[0]) if found else 0


def teardown(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("drop schema if exists pgvote_loadtest cascade")


def stage_batches(admin_url: str, bodies: list[str]) -> None:
    """The bulk path's request bodies, batch ``n`` = ``bodies[n]``, written before the clock starts."""
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("insert into pgvote_loadtest.batches (n, body) values (%s, %s)", list(enumerate(bodies)))


def stage_recasts(admin_url: str, numbers: list[int]) -> None:
    """What a re-cast pass casts: slot ``i`` casts ``numbers[i]``."""
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("truncate pgvote_loadtest.recasts")
        cur.executemany("insert into pgvote_loadtest.recasts (slot, number) values (%s, %s)", list(enumerate(numbers)))
