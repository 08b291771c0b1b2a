"""The benchmark's own database: created on the target cluster, migrated with the
project's migrations, filled with bench polls, and dropped afterwards."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from pgvote.migrate import upgrade

BENCH_DATABASE = "pgvote_bench"
HOT_POLL_BALLOTS = 1_000_000
SPREAD_POLLS = 10_000

SCHEMA = """
create schema bench;
-- n -> a poll and its first option; n = 1 is the hot poll (it also holds the 1M ballots).
create table bench.polls (n integer primary key, poll_id uuid not null, option_id uuid not null);
-- The original guide's design, for the R3 baseline: votes plus a counter row per option.
create table bench.guide_polls (n integer primary key, poll_id uuid not null, option_id uuid not null,
                                allow_multiple_votes boolean not null default false);
create table bench.guide_votes (id bigint generated always as identity primary key, poll_id uuid not null,
                                option_id uuid not null, voter bigint not null, created_at timestamptz default now());
create index on bench.guide_votes (poll_id, voter);
create table bench.guide_option_counts (option_id uuid primary key, votes bigint not null default 0);
-- Tally candidates: a shared counter row per option, and an append-only delta log.
create table bench.shared_counters (n integer, position integer, votes bigint not null default 0,
                                    primary key (n, position));
create table bench.tally_deltas (poll_id uuid not null, position smallint not null, delta smallint not null);
-- The bare-insert reference of the 50,000-vote burst: cast_vote's signature and answer, the ballot
-- insert only (same shape, key and partitions as voting.ballots, ON CONFLICT as cast_vote's insert),
-- callable by anon so that both run as the same role through the same PgBouncer and hook.
create table bench.bare_ballots (like voting.ballots including defaults including constraints including indexes)
    partition by hash (poll_id);
create function bench.bare_cast_vote(poll_id uuid, option_ids uuid[], voter_fingerprint text default null,
                                     ballot_id uuid default null) returns jsonb
language sql volatile security definer set search_path = pg_catalog, pg_temp
as $$
    with stored as (
        insert into bench.bare_ballots (poll_id, voter_key, ballot_id, option_ids)
        values ($1, sha256(convert_to('fp:' || $3, 'UTF8')), '00000000-0000-0000-0000-000000000000', $2)
        on conflict do nothing
        returning 1
    )
    select jsonb_build_object('poll_id', $1, 'option_ids', to_jsonb($2),
                              'status', case when exists (select from stored) then 'recorded' else 'unchanged' end)
$$;
grant usage on schema bench to anon;
grant execute on function bench.bare_cast_vote(uuid, uuid[], text, uuid) to anon;
"""

BARE_PARTITIONS = """
do $partitions$
declare
    n integer := (select count(*) from pg_inherits where inhparent = 'voting.ballots'::regclass);
begin
    for i in 0 .. n - 1 loop
        execute format('create table bench.bare_ballots_%s partition of bench.bare_ballots '
                       'for values with (modulus %s, remainder %s)', i, n, i);
    end loop;
end
$partitions$;
"""

CREATE_POLLS = """
do $polls$
begin
    perform set_config('request.jwt.claims', '{"role": "authenticated", "sub": "bench"}', true);
    insert into bench.polls (n, poll_id, option_id)
    select n, (created ->> 'poll_id')::uuid, (created -> 'option_ids' ->> 0)::uuid
    from generate_series(1, %(polls)s) as n,
         lateral (select api.create_poll('bench poll ' || n, array['a', 'b', 'c', 'd'])) as c(created);
end
$polls$;
insert into bench.guide_polls (n, poll_id, option_id) select n, poll_id, option_id from bench.polls;
insert into bench.guide_option_counts (option_id) select option_id from bench.polls;
insert into bench.shared_counters (n, position) select n, p from bench.polls, generate_series(1, 4) as p;
"""

LOAD_HOT_POLL = """
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, sha256(int8send(i) || int2send(o.position)), '00000000-0000-0000-0000-000000000000',
       array[o.option_id]
from bench.polls as b
join voting.poll_options as o on o.poll_id = b.poll_id
cross join generate_series(1, %(ballots)s / 4) as i
where b.n = 1;
select internal.rebuild_tallies(poll_id) from bench.polls where n = 1;
"""


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


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
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(BENCH_DATABASE)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(BENCH_DATABASE)))
    bench_admin = with_database(admin_url, BENCH_DATABASE)
    try:
        progress("migrating the bench database")
        upgrade(bench_admin)
        with psycopg.connect(bench_admin, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(BARE_PARTITIONS)
            progress(f"creating {polls:,} polls")
            conn.execute(CREATE_POLLS % {"polls": int(polls)})
            progress(f"loading {hot_ballots:,} ballots into the hot poll")
            conn.execute(LOAD_HOT_POLL % {"ballots": int(hot_ballots)})
            conn.execute("analyze")
            hot = conn.execute("select poll_id::text, option_id::text from bench.polls where n = 1").fetchone()
            assert hot is not None, "CREATE_POLLS made poll 1"
            hot_poll, hot_option = hot
        api_url = with_database(bouncer_url, BENCH_DATABASE)
        yield BenchDatabase(bench_admin, api_url, urlunsplit(urlsplit(api_url)._replace(
            netloc="postgres@" + urlsplit(api_url).netloc.split("@", 1)[-1])), hot_poll, hot_option)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(BENCH_DATABASE)))
