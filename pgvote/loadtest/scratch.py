"""The scratch schema ``pgvote_loadtest`` of a SQL-level run (what it holds and why: sql/scratch.sql)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from pgvote.bench.pgbench import POSTGREST_RPC, SCRIPTS

SCHEMA = "pgvote_loadtest"
SETUP_SQL = (Path(__file__).parent / "sql" / "scratch.sql").read_text()


@contextmanager
def schema(admin_url: str, login_url: str) -> Iterator[None]:
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


def stored(admin_url: str, poll_id: str, fingerprints: list[str]) -> tuple[int, int]:
    """(ballots stored for the poll, how many of ``fingerprints`` have one)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "select (select count(*) from pgvote_loadtest.ballots where poll_id = %(poll)s), "
            "(select count(*) from pgvote_loadtest.ballots b join unnest(%(fps)s::text[]) f "
            " on b.voter_key = sha256(convert_to('fp:' || f, 'UTF8')) where b.poll_id = %(poll)s)",
            {"poll": poll_id, "fps": fingerprints}).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def stage(admin_url: str, table: str, rows: list[str] | list[int]) -> None:
    """Rows written before the clock starts, row ``i`` at key ``i``: ``batches`` (the bulk path's request
    bodies) or ``recasts`` (slot ``i`` of a re-cast pass casts number ``rows[i]``)."""
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("truncate pgvote_loadtest.{}").format(sql.Identifier(table)))
        cur.executemany(sql.SQL("insert into pgvote_loadtest.{} values (%s, %s)").format(sql.Identifier(table)),
                        list(enumerate(rows)))
