"""Invariants under real parallel HTTP clients: nginx -> two PostgREST replicas -> PgBouncer
(transaction pooling) -> PostgreSQL.

Each test names the interleaving it proves. Clients are threads that wait at a barrier, then fire
together; every call is its own connection from its own loopback address.
"""
from __future__ import annotations

import random
from collections import Counter

import psycopg
import pytest

from helpers import counts_from_ballots, fingerprint, results_counts, stored_ballots, user
from parallel_clients import cast, fresh_results, in_parallel, raised_request_limit
from pgvote.http import Response

CLIENTS = 200


def test_two_hundred_clients_one_signed_in_voter_one_ballot(stack, api, make_poll, admin) -> None:
    """Interleaving: 200 INSERT ... ON CONFLICT for the same (poll, voter) race, with
    two different ballots and revotes allowed. The primary key admits one row; the rest
    see it and answer unchanged or changed."""
    poll = make_poll(allow_revote=True)
    voter = user()
    choices = [poll.option_ids[i % 2] for i in range(CLIENTS)]
    with raised_request_limit(stack.admin_url, f"one signed-in voter sends {CLIENTS} concurrent calls "
                                               "(the per-sub limit allows a burst of 20)"):
        replies = in_parallel(CLIENTS, lambda i: cast(api, poll, [choices[i]], claims=voter))

    assert {r.status for r in replies} == {200}, Counter((r.status, str(r.body)) for r in replies)
    statuses = Counter(r.body["status"] for r in replies)
    assert statuses["recorded"] == 1, statuses
    assert set(statuses) <= {"recorded", "changed", "unchanged"}
    assert stored_ballots(admin, poll.poll_id) == 1


def test_two_hundred_clients_one_anonymous_voter_no_revote(api, make_poll, admin) -> None:
    """Same race with revotes forbidden, one anonymous fingerprint from 200 addresses: one
    ballot; identical casts are unchanged, the others 409 already_voted, and the stored
    ballot is the recorded one."""
    poll = make_poll(allow_revote=False)
    voter_fp = fingerprint()
    choices = [poll.option_ids[i % 3] for i in range(CLIENTS)]
    replies = in_parallel(CLIENTS, lambda i: cast(api, poll, [choices[i]], voter_fingerprint=voter_fp))

    recorded = [r for r in replies if r.status == 200 and r.body["status"] == "recorded"]
    assert len(recorded) == 1
    winner = recorded[0].body["option_ids"]
    for r in replies:
        if r.status == 200:
            assert r.body["status"] in {"recorded", "unchanged"} and r.body["option_ids"] == winner
        else:
            assert r.status == 409 and r.body["code"] == "already_voted", (r.status, r.body)
    stored = admin.execute("select option_ids::text[] from voting.ballots where poll_id = %s",
                           (poll.poll_id,)).fetchall()
    assert stored == [(winner,)]


def test_two_hundred_clients_distinct_voters_hammer_one_poll(api, make_poll, admin) -> None:
    """200 clients x 10 signed-in voters each on ONE multi-choice poll, every second voter
    revoting once: stored ballots equal the recorded answers, and poll_results (read past
    nginx's cache) equals the counts derived from the stored ballots."""
    poll = make_poll(options=5, max_choices=2, allow_revote=True)
    per_client = 10

    def voters(i: int) -> list[Response]:
        rng = random.Random(i)
        replies = []
        for j in range(per_client):
            claims = user(f"hammer-{poll.poll_id}-{i}-{j}")
            replies.append(cast(api, poll, rng.sample(poll.option_ids, rng.randint(1, 2)), claims=claims))
            if j % 2:
                replies.append(cast(api, poll, rng.sample(poll.option_ids, 1), claims=claims))
        return replies

    replies = [r for batch in in_parallel(CLIENTS, voters) for r in batch]
    assert {r.status for r in replies} == {200}, Counter((r.status, str(r.body)) for r in replies)
    recorded = sum(r.body["status"] == "recorded" for r in replies)
    assert recorded == CLIENTS * per_client
    assert stored_ballots(admin, poll.poll_id) == recorded

    results = fresh_results(api, poll.poll_id)
    assert results.body["total_ballots"] == recorded
    assert results_counts(results) == counts_from_ballots(admin, poll.poll_id)


@pytest.mark.parametrize("attempt", range(3))  # a race: several attempts make a missing fence show
def test_no_ballot_commits_after_close(stack, api, make_poll, admin, attempt) -> None:
    """Interleaving: votes in flight while the creator closes the poll. close_poll takes
    the poll's fence exclusively, so once it has returned the stored ballots are final:
    a vote that read the poll open either committed before the close or gets 410."""
    poll = make_poll()
    clients, casts = CLIENTS, 10
    closed_count: list[int] = []

    def work(i: int) -> list[Response]:
        if i == 0:
            r = api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
            assert r.status == 200, r.body
            closed_count.append(stored_ballots(admin_conn, poll.poll_id))
            return [r]
        return [cast(api, poll, [poll.option_ids[0]], voter_fingerprint=f"fence-{poll.poll_id}-{i}-{k}")
                for k in range(casts)]

    with psycopg.connect(stack.admin_url, autocommit=True) as admin_conn:
        replies = [r for batch in in_parallel(clients, work) for r in batch]

    votes = [r for r in replies if "closed" not in (r.body or {})]
    accepted = sum(r.status == 200 for r in votes)
    assert {r.status for r in votes} <= {200, 410}, Counter((r.status, str(r.body)) for r in votes)
    assert stored_ballots(admin, poll.poll_id) == accepted == closed_count[0]
