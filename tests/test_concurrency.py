"""Invariants under real parallel connections through PgBouncer (transaction pooling).

Each test names the interleaving it proves. Workers open their own connection as the
authenticator through PgBouncer, wait at a barrier, then fire together.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
import pytest

from helpers import Poll, counts_from_ballots, fingerprint, results_counts, stored_ballots, user
from pgvote.postgrest_emulation import PostgrestEmulator, Response, connect_emulator

T = TypeVar("T")
CONNECTIONS = 200


def in_parallel(url: str, n: int, work: Callable[[int, PostgrestEmulator], T]) -> list[T]:
    """Run work(i, emulator) on n connections at once; all start together at a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        emulator = connect_emulator(url)
        try:
            barrier.wait(timeout=60)
            return work(i, emulator)
        finally:
            emulator.conn.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def cast(api: PostgrestEmulator, poll: Poll, options: list[str], claims=None, **body) -> Response:
    return api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": options, **body}, claims=claims)


def test_two_hundred_connections_one_voter_one_ballot(stack, make_poll, admin) -> None:
    """Interleaving: 200 INSERT ... ON CONFLICT for the same (poll, voter) race, with
    two different ballots and revotes allowed. The primary key admits one row; the rest
    see it and answer unchanged or changed."""
    poll = make_poll(allow_revote=True)
    voter = user()
    choices = [poll.option_ids[i % 2] for i in range(CONNECTIONS)]
    replies = in_parallel(stack.api_url, CONNECTIONS, lambda i, api: cast(api, poll, [choices[i]], claims=voter))

    assert {r.status for r in replies} == {200}, Counter(r.status for r in replies)
    statuses = Counter(r.body["status"] for r in replies)
    assert statuses["recorded"] == 1, statuses
    assert set(statuses) <= {"recorded", "changed", "unchanged"}
    assert stored_ballots(admin, poll.poll_id) == 1


def test_two_hundred_connections_one_voter_no_revote(stack, make_poll, admin) -> None:
    """Same race with revotes forbidden: one ballot; identical casts are unchanged,
    the others 409 already_voted, and the stored ballot is the recorded one."""
    poll = make_poll(allow_revote=False)
    voter_fp = fingerprint()
    choices = [poll.option_ids[i % 3] for i in range(CONNECTIONS)]
    replies = in_parallel(stack.api_url, CONNECTIONS,
                          lambda i, api: cast(api, poll, [choices[i]], voter_fingerprint=voter_fp))

    recorded = [r for r in replies if r.status == 200 and r.body["status"] == "recorded"]
    assert len(recorded) == 1
    winner = recorded[0].body["option_ids"]
    for r in replies:
        if r.status == 200:
            assert r.body["status"] in {"recorded", "unchanged"} and r.body["option_ids"] == winner
        else:
            assert r.status == 409 and r.body["code"] == "already_voted"
    stored = admin.execute("select option_ids::text[] from voting.ballots where poll_id = %s",
                           (poll.poll_id,)).fetchall()
    assert stored == [(winner,)]


def test_two_hundred_connections_distinct_voters_hammer_one_poll(stack, make_poll, admin, api) -> None:
    """200 connections x 10 voters each on ONE multi-choice poll, every second voter
    revoting once: stored ballots equal the recorded calls, and poll_results equals the
    counts derived from the stored ballots."""
    poll = make_poll(options=5, max_choices=2, allow_revote=True)
    per_connection = 10

    def voters(i: int, conn_api: PostgrestEmulator) -> list[Response]:
        rng = random.Random(i)
        replies = []
        for j in range(per_connection):
            claims = user(f"hammer-{poll.poll_id}-{i}-{j}")
            replies.append(cast(conn_api, poll, rng.sample(poll.option_ids, rng.randint(1, 2)), claims=claims))
            if j % 2:
                replies.append(cast(conn_api, poll, rng.sample(poll.option_ids, 1), claims=claims))
        return replies

    replies = [r for batch in in_parallel(stack.api_url, CONNECTIONS, voters) for r in batch]
    assert {r.status for r in replies} == {200}, Counter(r.status for r in replies)
    recorded = sum(r.body["status"] == "recorded" for r in replies)
    assert recorded == CONNECTIONS * per_connection
    assert stored_ballots(admin, poll.poll_id) == recorded

    results = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert results.body["total_ballots"] == recorded
    assert results_counts(results) == counts_from_ballots(admin, poll.poll_id)


@pytest.mark.parametrize("attempt", range(3))  # a race: several attempts make a missing fence show
def test_no_ballot_commits_after_close(stack, make_poll, admin, attempt) -> None:
    """Interleaving: votes in flight while the creator closes the poll. close_poll takes
    the poll's fence exclusively, so once it has returned the stored ballots are final:
    a vote that read the poll open either committed before the close or gets 410."""
    poll = make_poll()
    n = 100
    closed_count: list[int] = []

    def work(i: int, conn_api: PostgrestEmulator) -> list[Response]:
        if i == 0:
            r = conn_api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
            assert r.status == 200
            closed_count.append(stored_ballots(admin_conn, poll.poll_id))
            return [r]
        return [cast(conn_api, poll, [poll.option_ids[0]], voter_fingerprint=f"fence-{i}-{k}") for k in range(20)]

    with psycopg.connect(stack.admin_url, autocommit=True) as admin_conn:
        replies = [r for batch in in_parallel(stack.api_url, n, work) for r in batch]

    votes = [r for r in replies if "closed" not in (r.body or {})]
    accepted = sum(r.status == 200 for r in votes)
    assert {r.status for r in votes} <= {200, 410}
    assert stored_ballots(admin, poll.poll_id) == accepted == closed_count[0]
