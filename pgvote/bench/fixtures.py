"""The benchmark's own database: created on the target cluster, migrated with the project's migrations,
filled with bench polls (sql/schema.sql, sql/fill.sql), and dropped afterwards."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pgvote.migrate import upgrade
from pgvote.schema_dump import scratch_database

BENCH_DATABASE = "pgvote_bench"
HOT_POLL_BALLOTS = 1_000_000
SPREAD_POLLS = 10_000
SQL = Path(__file__).parent / "sql"


def with_database(url: str, database: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{user}@{parts.netloc.split('@', 1)[-1]}" if user else parts.netloc
    return urlunsplit(parts._replace(path="/" + database, netloc=netloc))


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
