"""Fixtures: one real PostgreSQL + PgBouncer stack per test run, started by the
project's own launcher, and the API called exactly as PostgREST would call it.

Tests are isolated by data: each creates its own polls and voters (random ids), so
they can share the cluster without resetting it.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgvote.postgrest_emulation import PostgrestEmulator, Response, connect_emulator
from pgvote.stack import LocalStack


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """A private cluster for this run: temp state dir, free ports, migrated to head."""
    local = LocalStack.ephemeral()
    try:
        local.up()
        yield local
    finally:
        local.destroy()


@pytest.fixture(scope="session")
def admin_url(stack: LocalStack) -> str:
    return stack.admin_url


@pytest.fixture
def admin(stack: LocalStack) -> Iterator[psycopg.Connection]:
    """A superuser connection straight to PostgreSQL, for inspecting what was stored."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def api(stack: LocalStack) -> Iterator[PostgrestEmulator]:
    """The HTTP API as PostgREST calls it: authenticator through PgBouncer."""
    emulator = connect_emulator(stack.api_url)
    try:
        yield emulator
    finally:
        emulator.conn.close()


def user(sub: str | None = None, **extra: Any) -> dict[str, Any]:
    """JWT claims of a signed-in user (role authenticated); a random sub by default."""
    claims: dict[str, Any] = {"role": "authenticated", "sub": sub if sub is not None else f"user-{uuid.uuid4()}"}
    claims.update(extra)
    return claims


def fingerprint() -> str:
    return f"fp-{uuid.uuid4()}"


@dataclass(frozen=True)
class Poll:
    poll_id: str
    option_ids: list[str]
    creator: dict[str, Any]


PollFactory = Callable[..., Poll]


@pytest.fixture
def make_poll(api: PostgrestEmulator) -> PollFactory:
    """Create a poll through the API; keyword arguments go into the create_poll body."""

    def make(options: int | list[str] = 3, creator: dict[str, Any] | None = None, **body: Any) -> Poll:
        labels = options if isinstance(options, list) else [f"option {i}" for i in range(1, options + 1)]
        owner = creator or user()
        r = api.rpc("create_poll", {"question": "Which one?", "options": labels, **body}, claims=owner)
        assert r.status == 200, r.body
        return Poll(r.body["poll_id"], r.body["option_ids"], owner)

    return make


def stored_ballots(admin: psycopg.Connection, poll_id: str) -> int:
    return int(admin.execute("select count(*) from voting.ballots where poll_id = %s", (poll_id,)).fetchone()[0])


def counts_from_ballots(admin: psycopg.Connection, poll_id: str) -> dict[str, int]:
    """Votes per option derived from the stored ballots, the ground truth for tallies."""
    rows = admin.execute(
        """select o.option_id::text, count(b.poll_id)
           from voting.poll_options o
           left join voting.ballots b on b.poll_id = o.poll_id and o.option_id = any (b.option_ids)
           where o.poll_id = %s group by o.option_id""",
        (poll_id,),
    ).fetchall()
    return {option_id: int(n) for option_id, n in rows}


def results_counts(results: Response) -> dict[str, int]:
    return {o["option_id"]: o["votes"] for o in results.body["options"]}


def table_snapshot(admin: psycopg.Connection) -> tuple[int, int, int, str]:
    """Row counts and a digest of all ballots: equal before and after means nothing was written."""
    row = admin.execute(
        """select (select count(*) from voting.polls), (select count(*) from voting.poll_options),
                  (select count(*) from voting.ballots),
                  coalesce(md5(string_agg(b::text, ',' order by b::text)), '')
           from voting.ballots b"""
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2]), str(row[3])
