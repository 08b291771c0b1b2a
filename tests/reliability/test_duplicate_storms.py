"""Duplicate storms: 1,000 concurrent calls from ONE voter, identical or conflicting, through nginx ->
PostgREST -> PgBouncer (k6, one VU per call, all released together, each from its own loopback address).
Exactly one ballot is stored, and every call answers as the poll's rules say: 200 recorded exactly once,
the rest unchanged / changed, or 409 already_voted when revotes are off. Anonymous voters (a fingerprint):
the per-caller limits of nginx and of the pre-request hook key on the address, one per call here, so they
leave this storm alone; on a multiple-vote poll the per-fingerprint limit may answer 429, which the test
accepts and counts.

Revotes of one voter serialise on that voter's row, so part of a storm can outwait a queue (PostgREST's
pool, PgBouncer's): those calls get a clean, retryable 503 / 504 without reaching the server, and k6
re-sends them identically, like any client; the final answer of each call is what is checked.
"""
from __future__ import annotations

import random
import uuid
from collections import Counter

import psycopg

from pgvote.http import ApiClient

from .k6round import Attempt, Vote, run_round
from helpers import counts_from_ballots, fingerprint

NIL_BALLOT = "00000000-0000-0000-0000-000000000000"


def _poll(stack, **spec) -> dict:
    creator = {"role": "authenticated", "sub": f"storm-{uuid.uuid4()}"}
    r = ApiClient(stack.http_url, stack.jwt_secret).rpc(
        "create_poll", {"question": "Storm?", "options": ["a", "b", "c", "d"], **spec}, claims=creator)
    assert r.status == 200, r.body
    return r.body


def _storm(stack, votes: list[Vote], figures, name: str) -> list[tuple[Vote, Attempt]]:
    """Fire the calls at once; returns each call's vote and final answer (after k6's identical re-sends of
    retryable failures, and the settle step)."""
    result = run_round(stack, votes, vus=len(votes), together=True)
    calls = result.by_ballot()
    assert sorted(calls) == list(range(len(votes))), "every call was sent"
    final = [(votes[i], calls[i][-1]) for i in range(len(votes))]
    assert not [a for _, a in final if a.retryable], "every call got a final answer"
    figures[name] = {"calls": len(votes), "retried": sum(len(c) > 1 for c in calls.values()),
                     "errors_by_kind": result.errors_by_kind(),
                     "answers": dict(Counter(a.detail if a.acked else a.kind for _, a in final)),
                     "latency_ms": result.latency_ms()}
    return final


def _stored(stack, poll_id: str) -> list[tuple[list[str], str]]:
    """The poll's stored ballots (sorted options, ballot_id), after checking poll_results against them."""
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        rows = admin.execute("select option_ids::text[], ballot_id::text from voting.ballots where poll_id = %s",
                             (poll_id,)).fetchall()
        expected = counts_from_ballots(admin, poll_id)
    results = ApiClient(stack.http_url).rpc("poll_results", {"poll_id": poll_id}).body  # POST: never cached
    assert {o["option_id"]: o["votes"] for o in results["options"]} == expected, "tallies equal the ballots"
    assert results["total_ballots"] == len(rows)
    return [(sorted(r[0]), r[1]) for r in rows]


def _in_poll_order(poll: dict, options: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(options, key=poll["option_ids"].index))


def test_thousand_identical_ballots_from_one_voter_store_one(stack, profile, figures) -> None:
    poll = _poll(stack, max_choices=2, allow_revote=False)
    voter = fingerprint()
    ballot = tuple(poll["option_ids"][:2])
    final = _storm(stack, [Vote(poll["poll_id"], ballot, fingerprint=voter)] * profile.storm_calls, figures,
                   "storm_identical")
    assert {a.status for _, a in final} == {200}
    assert Counter(a.detail for _, a in final) == {"recorded": 1, "unchanged": profile.storm_calls - 1}
    assert _stored(stack, poll["poll_id"]) == [(sorted(ballot), NIL_BALLOT)]


def test_thousand_conflicting_ballots_with_revotes_store_one(stack, profile, figures) -> None:
    poll = _poll(stack, max_choices=2, allow_revote=True)
    voter = fingerprint()
    rng = random.Random(5)
    choices = [tuple(poll["option_ids"][:2]), (poll["option_ids"][2],), (poll["option_ids"][3],)]
    votes = [Vote(poll["poll_id"], rng.choice(choices), fingerprint=voter) for _ in range(profile.storm_calls)]
    final = _storm(stack, votes, figures, "storm_conflicting_revotes")
    assert {a.status for _, a in final} == {200}
    answers = Counter(a.detail for _, a in final)
    assert answers["recorded"] == 1 and set(answers) <= {"recorded", "changed", "unchanged"}, answers
    assert all(a.options == _in_poll_order(poll, v.option_ids) for v, a in final), \
        "each answer reports the ballot it cast, in poll order"
    stored = _stored(stack, poll["poll_id"])
    assert len(stored) == 1 and stored[0][0] in [sorted(c) for c in choices]


def test_thousand_conflicting_ballots_without_revotes_store_the_first(stack, profile, figures) -> None:
    poll = _poll(stack, allow_revote=False)
    voter = fingerprint()
    votes = [Vote(poll["poll_id"], (poll["option_ids"][i % 3],), fingerprint=voter)
             for i in range(profile.storm_calls)]
    final = _storm(stack, votes, figures, "storm_conflicting_no_revotes")
    recorded = [v for v, a in final if a.detail == "recorded"]
    assert len(recorded) == 1
    winner = recorded[0].option_ids
    for v, a in final:
        if v.option_ids == winner:
            assert a.status == 200 and a.detail in ("recorded", "unchanged") and a.options == winner, a
        else:
            assert (a.status, a.detail) == (409, "already_voted"), a
    assert _stored(stack, poll["poll_id"]) == [(sorted(winner), NIL_BALLOT)]


def test_thousand_retries_of_one_ballot_id_store_one(stack, profile, figures) -> None:
    """Multiple-vote poll: the same ballot_id a thousand times (some with other options) is one ballot."""
    poll = _poll(stack, allow_multiple_votes=True)
    voter, ballot_id = fingerprint(), str(uuid.uuid4())
    votes = [Vote(poll["poll_id"], (poll["option_ids"][i % 2],), fingerprint=voter, ballot_id=ballot_id)
             for i in range(profile.storm_calls)]
    final = _storm(stack, votes, figures, "storm_one_ballot_id")
    recorded = [(v, a) for v, a in final if a.detail == "recorded"]
    assert len(recorded) == 1
    for _, a in final:
        if a.status == 200:  # a repeated ballot_id answers with the ballot stored under it
            assert a.detail in ("recorded", "unchanged") and a.options == recorded[0][1].options, a
        else:
            assert (a.status, a.detail) == (429, "rate_limited"), a  # the per-fingerprint limit, if enabled
    assert _stored(stack, poll["poll_id"]) == [(sorted(recorded[0][0].option_ids), ballot_id)]
