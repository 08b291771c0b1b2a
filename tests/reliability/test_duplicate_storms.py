"""Issue 6, point 5 - duplicate storms: 1,000 concurrent calls from ONE voter, identical or conflicting,
through PgBouncer (1,000 client connections, all open before the first call). Exactly one ballot is stored,
and every call answers as the poll's rules say: 200 recorded exactly once, the rest unchanged / changed,
or 409 already_voted when revotes are off. Anonymous voters (a fingerprint): the per-caller rate limit of
the pre-request hook keys on a JWT sub or the proxy's x-real-ip, so it leaves this storm alone; on a
multiple-vote poll the per-fingerprint limit may answer 429, which the test accepts and counts.

Revotes of one voter serialise on that voter's row: on a slow box part of the storm can outwait PgBouncer's
query_wait_timeout (10 s, db/pgbouncer.ini). Those calls got the clean, retryable overload error without
reaching the server; they are re-cast identically after the storm and their answers checked like the rest.
"""
from __future__ import annotations

import random
import uuid
from collections import Counter

import psycopg
import pytest

from helpers import counts_from_ballots, fingerprint
from .checks import query_wait_timeout, unexplained_errors
from .loadgen import CallRecord, Vote, emulator, run_load


@pytest.fixture
def storm_api(stack):
    api = emulator(stack.api_url)
    try:
        yield api
    finally:
        api.conn.close()


def _poll(api, **spec) -> dict:
    creator = {"role": "authenticated", "sub": f"storm-{uuid.uuid4()}"}
    r = api.rpc("create_poll", {"question": "Storm?", "options": ["a", "b", "c", "d"], **spec}, claims=creator)
    assert r.status == 200, r.body
    return r.body


def _storm(stack, api, votes: list[Vote], figures, name: str) -> list[CallRecord]:
    """Fire the calls at once; a call that outwaited PgBouncer's configured queue wait got the clean,
    retryable query_wait_timeout (it never reached the server): it is re-cast identically, once the storm
    is over, and its final answer stands in for it. Any other error fails the test."""
    result = run_load(stack.api_url, api, votes, connections=len(votes), timeout=300)
    assert len(result.records) == len(votes)
    retried = [r for r in result.records if r.outcome == "lost"]  # answers (200/409/429) are checked below
    assert not unexplained_errors(retried, query_wait_timeout(stack)), result.errors_by_kind()
    final = [r for r in result.records if r.outcome != "lost"]
    if retried:
        again = run_load(stack.api_url, api, [r.vote for r in retried], connections=min(50, len(retried)),
                         timeout=300)
        assert not again.lost(), again.errors_by_kind()
        final += again.records
    figures[name] = {"calls": len(votes), "overload_retries": len(retried),
                     "answers": dict(Counter(r.answer or f"{r.status} {r.code}" for r in final)),
                     "latency_ms": result.latency_ms()}
    return final


def _stored(stack, poll_id: str) -> list[tuple[list[str], str]]:
    """The poll's stored ballots (sorted options, ballot_id), after checking poll_results against them."""
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        rows = admin.execute("select option_ids::text[], ballot_id::text from voting.ballots where poll_id = %s",
                             (poll_id,)).fetchall()
        expected = counts_from_ballots(admin, poll_id)
    api = emulator(stack.api_url)
    try:
        results = api.rpc("poll_results", {"poll_id": poll_id}, method="GET").body
    finally:
        api.conn.close()
    assert {o["option_id"]: o["votes"] for o in results["options"]} == expected, "tallies equal the ballots"
    assert results["total_ballots"] == len(rows)
    return [(sorted(r[0]), r[1]) for r in rows]


def test_thousand_identical_ballots_from_one_voter_store_one(stack, storm_api, profile, figures) -> None:
    poll = _poll(storm_api, max_choices=2, allow_revote=False)
    voter = fingerprint()
    ballot = tuple(poll["option_ids"][:2])
    records = _storm(stack, storm_api, [Vote(poll["poll_id"], ballot, fingerprint=voter)] * profile.storm_calls,
                     figures, "storm_identical")
    answers = Counter(r.answer for r in records)
    assert {r.status for r in records} == {200}
    assert answers == {"recorded": 1, "unchanged": profile.storm_calls - 1}
    assert _stored(stack, poll["poll_id"]) == [(sorted(ballot), "00000000-0000-0000-0000-000000000000")]


def test_thousand_conflicting_ballots_with_revotes_store_one(stack, storm_api, profile, figures) -> None:
    poll = _poll(storm_api, max_choices=2, allow_revote=True)
    voter = fingerprint()
    rng = random.Random(5)
    choices = [tuple(poll["option_ids"][:2]), (poll["option_ids"][2],), (poll["option_ids"][3],)]
    votes = [Vote(poll["poll_id"], rng.choice(choices), fingerprint=voter) for _ in range(profile.storm_calls)]
    records = _storm(stack, storm_api, votes, figures, "storm_conflicting_revotes")
    assert {r.status for r in records} == {200}
    answers = Counter(r.answer for r in records)
    assert answers["recorded"] == 1 and set(answers) <= {"recorded", "changed", "unchanged"}, answers
    assert all(r.option_ids == tuple(sorted(r.vote.option_ids, key=poll["option_ids"].index))
               for r in records), "each answer reports the ballot it cast, in poll order"
    stored = _stored(stack, poll["poll_id"])
    assert len(stored) == 1 and stored[0][0] in [sorted(c) for c in choices]


def test_thousand_conflicting_ballots_without_revotes_store_the_first(stack, storm_api, profile, figures) -> None:
    poll = _poll(storm_api, allow_revote=False)
    voter = fingerprint()
    votes = [Vote(poll["poll_id"], (poll["option_ids"][i % 3],), fingerprint=voter)
             for i in range(profile.storm_calls)]
    records = _storm(stack, storm_api, votes, figures, "storm_conflicting_no_revotes")
    recorded = [r for r in records if r.answer == "recorded"]
    assert len(recorded) == 1
    winner = recorded[0].vote.option_ids
    for r in records:
        if r.vote.option_ids == winner:
            assert r.status == 200 and r.answer in ("recorded", "unchanged") and r.option_ids == winner, r
        else:
            assert (r.status, r.code) == (409, "already_voted"), r
    assert _stored(stack, poll["poll_id"]) == [(sorted(winner), "00000000-0000-0000-0000-000000000000")]


def test_thousand_retries_of_one_ballot_id_store_one(stack, storm_api, profile, figures) -> None:
    """Multiple-vote poll: the same ballot_id a thousand times (some with other options) is one ballot."""
    poll = _poll(storm_api, allow_multiple_votes=True)
    voter, ballot_id = fingerprint(), str(uuid.uuid4())
    votes = [Vote(poll["poll_id"], (poll["option_ids"][i % 2],), fingerprint=voter, ballot_id=ballot_id)
             for i in range(profile.storm_calls)]
    records = _storm(stack, storm_api, votes, figures, "storm_one_ballot_id")
    recorded = [r for r in records if r.answer == "recorded"]
    assert len(recorded) == 1
    for r in records:
        if r.status == 200:  # a repeated ballot_id answers with the ballot stored under it
            assert r.answer in ("recorded", "unchanged") and r.option_ids == recorded[0].option_ids, r
        else:
            assert (r.status, r.code) == (429, "rate_limited"), r  # the per-fingerprint limit, if enabled
    assert _stored(stack, poll["poll_id"]) == [(sorted(recorded[0].vote.option_ids), ballot_id)]
