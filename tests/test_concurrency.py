"""Invariants under real parallel HTTP clients: nginx -> two PostgREST replicas -> PgBouncer
(transaction pooling) -> PostgreSQL.

Each test names the interleaving it proves. Clients are threads that wait at a barrier, then fire
together; every call is its own connection from its own loopback address.
"""
from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from pgvote.http import Response

from helpers import counts_from_ballots, fingerprint, results_counts, stored_ballots, user
from parallel_clients import cast, fresh_results, in_parallel, raised_request_limit

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


def hold_fence(conn: psycopg.Connection, poll_id: str) -> None:
    """Take a poll's close fence exclusively in conn's open transaction, as close_poll does."""
    conn.execute("select pg_advisory_xact_lock(internal.advisory_lock_namespace('poll_fence'), "
                 "internal.poll_fence_lock_key(%s))", (poll_id,))


def wait_until_waiting(admin: psycopg.Connection, query_like: str, count: int = 1) -> None:
    """Until `count` backends running a query like `query_like` wait for a heavyweight lock."""
    deadline = time.monotonic() + 20
    while admin.execute("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                        "and query like %s", (query_like,)).fetchone()[0] < count:
        assert time.monotonic() < deadline, "the calls never queued for the lock"
        time.sleep(0.02)


def wait_past(admin: psycopg.Connection, moment: str) -> None:
    while admin.execute("select clock_timestamp() <= %s::timestamptz", (moment,)).fetchone()[0]:
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["cast_vote", "cast_votes"])
def test_vote_that_waited_past_closes_at_is_poll_closed(stack, make_poll, admin, api, path) -> None:
    """Interleaving: a vote starts while its poll is open, then waits (here behind the poll's
    fence, held by another transaction; a queue in the pre-request hook is the same) until
    closes_at has passed. The close is judged by the clock once the fence is held, not by the
    transaction's start: the vote answers poll_closed and writes nothing."""
    closes_at = admin.execute("select (clock_timestamp() + interval '2 seconds')::text").fetchone()[0]
    poll = make_poll(closes_at=closes_at)
    ballot = {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}
    with psycopg.connect(stack.admin_url) as holder, ThreadPoolExecutor(max_workers=1) as pool:
        hold_fence(holder, poll.poll_id)

        def call() -> Response:  # over HTTP: nginx, PostgREST and its pre-request hook, PgBouncer
            if path == "cast_vote":
                return api.rpc("cast_vote", {**ballot, "voter_fingerprint": fingerprint()})
            return api.rpc("cast_votes", {"ballots": [{**ballot, "voter_id": "late"}]}, claims={"role": "ingest"})

        reply = pool.submit(call)
        wait_until_waiting(admin, f"%{path}%")
        wait_past(admin, closes_at)
        holder.commit()
        r = reply.result(timeout=30)
    if path == "cast_vote":
        assert (r.status, r.body.get("code")) == (410, "poll_closed"), r.body
    else:
        assert r.status == 200 and r.body["results"][0].get("code") == "poll_closed", r.body
    assert stored_ballots(admin, poll.poll_id) == 0


def test_no_poll_id_reaches_the_partition_split_lock(stack, admin) -> None:
    """Advisory locks live in disjoint namespaces (internal.advisory_lock_namespace). A poll
    whose id starts with the bits of the split lock's old single 64-bit key once held that very
    lock while voting: a split could not start, and `partitions status` reported the voter as a
    running split. Now the fence is (poll_fence namespace, 32 bits of the id): while such a vote
    holds it, pg_locks shows it in the fence namespace, no split holder is reported, and the
    split lock can still be taken."""
    crafted = "70677670-0000-0001-" + str(uuid.uuid4())[19:]
    admin.execute("insert into voting.polls (poll_id, creator_key, question, option_count, max_choices, "
                  "allow_revote, allow_multiple_votes, allow_anonymous) "
                  "values (%s, '\\x00', 'crafted', 2, 1, true, false, true)", (crafted,))
    option = admin.execute("insert into voting.poll_options (poll_id, position, label) values "
                           "(%s, 1, 'a'), (%s, 2, 'b') returning option_id::text", (crafted, crafted)).fetchone()[0]
    namespaces = dict(admin.execute(
        "select f, internal.advisory_lock_namespace(f) from unnest(array['poll_fence', 'tally_maintenance', "
        "'partition_split', 'split_mirror']) as f").fetchall())
    assert None not in namespaces.values() and len(set(namespaces.values())) == len(namespaces)

    with psycopg.connect(stack.admin_url) as voter, psycopg.connect(stack.admin_url, autocommit=True) as split:
        r = voter.execute("select api.cast_vote(%s, array[%s]::uuid[], 'crafted-voter')", (crafted, option))
        assert r.fetchone()[0]["status"] == "recorded"
        held = admin.execute("select classid::bigint, objsubid from pg_locks where locktype = 'advisory' "
                             "and pid = %s", (voter.info.backend_pid,)).fetchall()
        assert held == [(namespaces["poll_fence"], 2)]
        assert admin.execute("select * from partman.split_holder()").fetchall() == []
        assert split.execute("select pg_try_advisory_lock(%s, 0)", (namespaces["partition_split"],)).fetchone()[0]
        assert admin.execute("select pid from partman.split_holder()").fetchone()[0] == split.info.backend_pid
        voter.rollback()


def test_every_advisory_lock_in_procedures_names_a_registered_namespace(admin) -> None:
    """A lock on an unregistered feature would lock nothing (the namespace would be NULL)."""
    from pgvote.procedures import procedure_files

    named = {m for f in procedure_files() for m in re.findall(r"advisory_lock_namespace\('(\w+)'\)", f.text)}
    assert named >= {"poll_fence", "tally_maintenance"}
    for feature in named:
        assert admin.execute("select internal.advisory_lock_namespace(%s)", (feature,)).fetchone()[0] is not None
