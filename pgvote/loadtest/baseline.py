"""The bare-insert reference: the same client machinery, the same PgBouncer, the same PostgREST
statement sequence, but a function that only inserts the ballot row.

So the drain-rate ratio ``cast_vote / bare insert`` isolates what ``api.cast_vote`` itself costs
(poll lookup and fence lock, HMAC voter key, ballot validation, tally slot) from everything the two
share: client overhead, PgBouncer, the four round trips per transaction, the durable commit.

Like with like:
- same signature and JSON body as ``api.cast_vote`` (``poll_id``, ``option_ids``,
  ``voter_fingerprint``), same ``json_to_record`` main query, same BEGIN / set_config / COMMIT;
- the row has the shape of ``voting.ballots`` (poll, 32-byte voter key, ballot id, option array,
  timestamp), same primary key, same number of hash partitions, ``ON CONFLICT DO NOTHING`` (so an
  identical re-cast is idempotent here too), one durable commit per vote;
- the only differences: it is called as the superuser ``postgres`` (logged in through the same
  PgBouncer, role switched with the same ``set_config('role', ...)``), so no API role needs a grant on
  the scratch schema; and its voter key is a plain sha256 (no secret lookup).

The scratch schema ``pgvote_loadtest`` is created for the run and dropped afterwards.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

SCHEMA = "pgvote_loadtest"

_SETUP = """
drop schema if exists pgvote_loadtest cascade;
create schema pgvote_loadtest;
-- the shape of voting.ballots (columns, defaults, primary key, indexes), taken from the table itself
create table pgvote_loadtest.ballots (like voting.ballots including defaults including constraints including indexes)
    partition by hash (poll_id);
"""

_FUNCTION = """
create function pgvote_loadtest.cast_vote(
    poll_id uuid, option_ids uuid[], voter_fingerprint text default null, ballot_id uuid default null
) returns jsonb
language sql volatile
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
"""


def setup(admin_url: str) -> None:
    """(Re)create the scratch schema with as many hash partitions as ``voting.ballots``."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_inherits where inhparent = 'voting.ballots'::regclass").fetchone()
        partitions = max(1, int(row[0])) if row else 1
        conn.execute(_SETUP)
        for i in range(partitions):
            conn.execute(f"create table pgvote_loadtest.ballots_{i} partition of pgvote_loadtest.ballots "
                         f"for values with (modulus {partitions}, remainder {i})")
        conn.execute(_FUNCTION)


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


def superuser_via_bouncer(database_url: str, admin_url: str) -> str:
    """``database_url`` (authenticator through PgBouncer) with the admin URL's user and password."""
    api, admin = urlsplit(database_url), urlsplit(admin_url)
    user = admin.username or "postgres"
    auth = user + (f":{admin.password}" if admin.password else "")
    host = api.hostname or ""
    netloc = f"{auth}@{host}" + (f":{api.port}" if api.port else "")
    return urlunsplit(api._replace(netloc=netloc))
