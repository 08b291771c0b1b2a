"""Helpers shared by the test modules: identities, polls, and ground truth read from the stored ballots."""
from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvote.http import Response


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


# The data helpers add up every row a query returns: one on a single node, one per database through
# the sharded stack's ClusterAdmin (tests/fixtures/shards.py), whose shards each hold part of the data.

def stored_ballots(admin: psycopg.Connection, poll_id: str) -> int:
    rows = admin.execute("select count(*) from voting.ballots where poll_id = %s", (poll_id,)).fetchall()
    return sum(int(n) for (n,) in rows)


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
    rows = admin.execute(
        """select (select count(*) from voting.polls), (select count(*) from voting.poll_options),
                  (select count(*) from voting.ballots),
                  coalesce(md5(string_agg(b::text, ',' order by b::text)), '')
           from voting.ballots b"""
    ).fetchall()
    return (sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows),
            ",".join(str(r[3]) for r in rows))


@contextlib.contextmanager
def frozen_supervisor(stack: Any) -> Iterator[None]:
    """SIGSTOP the stack's supervisor: components killed meanwhile stay dead until it resumes."""
    supervisor_pid = stack.status()["components"]["supervisor"]["pid"]
    assert supervisor_pid
    os.kill(supervisor_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(supervisor_pid, signal.SIGCONT)
