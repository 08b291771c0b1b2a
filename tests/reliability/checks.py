"""Invariant checks shared by the fault tests: nothing acknowledged lost, nothing stored twice, tallies exact."""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvote.http import ApiClient
from pgvote.stack import read_postgrest_conf

from .faults import Bouncer
from .k6round import BROKEN_CONNECTION, RETRYABLE, Fault, Round, Vote, run_round
from helpers import counts_from_ballots

NIL_BALLOT = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class VotePolls:
    """A single-ballot poll (anonymous voters, revotes off) and a multiple-vote poll (signed-in voters,
    ballot_id per ballot): the two ways a retry must stay exactly-once."""

    single: dict[str, Any]
    multiple: dict[str, Any]


def make_polls(api: ApiClient) -> VotePolls:
    creator = {"role": "authenticated", "sub": f"reliability-{uuid.uuid4()}"}
    single = api.rpc("create_poll", {"question": "Reliability, single ballot", "options": ["a", "b", "c", "d"],
                                     "max_choices": 2, "allow_revote": False}, claims=creator)
    multiple = api.rpc("create_poll", {"question": "Reliability, multiple votes", "options": ["x", "y", "z"],
                                       "allow_multiple_votes": True}, claims=creator)
    assert single.status == 200 and multiple.status == 200, (single.body, multiple.body)
    return VotePolls(single.body, multiple.body)


def make_votes(polls: VotePolls, n: int, tag: str, seed: int = 0) -> list[Vote]:
    """n distinct intended ballots: 4 in 5 by distinct anonymous voters on the single-ballot poll, the rest by
    signed-in voters (4 ballots each, under the per-caller rate limit) with a ballot_id on the multiple-vote poll."""
    rng = random.Random(seed)
    votes = []
    for i in range(n):
        if i % 5:
            options = tuple(rng.sample(polls.single["option_ids"], rng.randint(1, 2)))
            votes.append(Vote(polls.single["poll_id"], options, fingerprint=f"fp-{tag}-{i}"))
        else:
            options = (rng.choice(polls.multiple["option_ids"]),)
            votes.append(Vote(polls.multiple["poll_id"], options, sub=f"sub-{tag}-{i // 20}",
                              ballot_id=str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    return votes


@dataclass
class Verdict:
    votes: int
    acknowledged_first_try: int  # ballots answered 200 on their first call
    retried: int  # ballots that needed more than one call (k6's identical re-sends)
    settled: int  # ballots k6 gave up on, answered by the settle step's identical re-casts
    committed_unseen: int  # retried ballots answered "unchanged": a call whose answer the client lost had committed
    stored: int
    duplicates: int
    acknowledged_missing: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def unexpected_errors(result: Round) -> dict[str, int]:
    """Calls answered with anything but 200 or a retryable failure (reset, 502, 503, 504, PostgREST's
    broken-connection 400), by kind and body."""
    return dict(Counter(f"{a.kind}: {a.body}" for a in result.attempts if not a.acked and not a.retryable))


def verify(stack: Any, admin: psycopg.Connection, polls: VotePolls, result: Round) -> Verdict:
    """Check the round once every ballot has its final answer (k6's retries, then the settle step):

    - clients saw at worst a reset, 502, 503 or 504 (or PostgREST's broken-connection 400, counted
      apart in the figures), and every ballot ended acknowledged;
    - a ballot acknowledged on its first call answered ``recorded`` (it is fresh), a retried one
      ``recorded`` or ``unchanged`` (an earlier call had committed though its answer was lost);
    - every vote is stored exactly once, with its options, and nothing else is stored;
    - ``poll_results`` equals the counts derived from the stored ballots and from the votes.
    """
    assert not unexpected_errors(result), f"answers other than 200 or retryable: {unexpected_errors(result)}"
    by_ballot = result.by_ballot()
    unanswered = [i for i in range(len(result.votes)) if i not in by_ballot or not by_ballot[i][-1].acked]
    assert not unanswered, (f"{len(unanswered)} ballots without an acknowledgment after the settle step: "
                            f"{Counter(by_ballot[i][-1].kind for i in unanswered if i in by_ballot)}")
    first_try = retried = committed_unseen = 0
    for calls in by_ballot.values():
        final = calls[-1]
        if len(calls) == 1:
            assert final.detail == "recorded", f"a fresh ballot answered {final.detail!r} on its first call"
            first_try += 1
        else:
            assert final.detail in ("recorded", "unchanged"), final
            retried += 1
            committed_unseen += final.detail == "unchanged"
    stored, duplicates, missing = _check_stored(admin, polls, result.votes)
    api = ApiClient(stack.http_url, stack.jwt_secret)
    for poll in (polls.single, polls.multiple):
        _check_tallies(api, admin, poll, [v for v in result.votes if v.poll_id == poll["poll_id"]])
    return Verdict(votes=len(result.votes), acknowledged_first_try=first_try, retried=retried,
                   settled=len({a.ballot for a in result.attempts if a.by_settle}),
                   committed_unseen=committed_unseen, stored=stored, duplicates=duplicates,
                   acknowledged_missing=missing)


def _check_stored(admin: psycopg.Connection, polls: VotePolls, votes: Sequence[Vote]) -> tuple[int, int, int]:
    voters = sorted({v.voter for v in votes})
    keys = dict(admin.execute("select i, internal.voter_key(i) from unnest(%s::text[]) as i", (voters,)).fetchall())
    expected: Counter[tuple[str, bytes, str]] = Counter()
    options: dict[tuple[str, bytes, str], list[str]] = {}
    for v in votes:
        key = (v.poll_id, bytes(keys[v.voter]), v.ballot_id or NIL_BALLOT)
        expected[key] += 1
        options[key] = sorted(v.option_ids)
    assert max(expected.values()) == 1, "the generated votes are distinct ballots"
    rows = admin.execute(
        """select poll_id::text, voter_key, ballot_id::text, option_ids::text[] from voting.ballots
           where poll_id = any(%s::uuid[])""", ([polls.single["poll_id"], polls.multiple["poll_id"]],)
    ).fetchall()
    stored: Counter[tuple[str, bytes, str]] = Counter((p, bytes(k), b) for p, k, b, _ in rows)
    duplicates = sum(n - 1 for n in stored.values() if n > 1)
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    wrong = [(k, o) for p, vk, b, o in rows if (k := (p, bytes(vk), b)) in options and sorted(o) != options[k]]
    assert duplicates == 0, f"{duplicates} ballots stored twice"
    assert not missing, f"{len(missing)} votes missing after recovery"
    assert not extra, f"{len(extra)} ballots stored that no vote asked for"
    assert not wrong, f"{len(wrong)} ballots stored with other options: {wrong[:3]}"
    return len(rows), duplicates, len(missing)


def _check_tallies(api: ApiClient, admin: psycopg.Connection, poll: dict[str, Any], votes: Sequence[Vote]) -> None:
    # POST: never served from nginx's one-second results cache (it caches GET and HEAD). Retried like any
    # client retries: right after a fault, a PostgREST pool connection may still be the broken one
    # (503, or PostgREST 12.0.2's empty-code 400) until PostgREST replaces it.
    for _ in range(20):
        results = api.rpc("poll_results", {"poll_id": poll["poll_id"]})
        code = results.body.get("code") if isinstance(results.body, dict) else None
        if not (results.status in RETRYABLE or (results.status == 400 and code == "")):
            break
        time.sleep(0.5)
    assert results.status == 200, results.body
    reported = {o["option_id"]: o["votes"] for o in results.body["options"]}
    from_votes = Counter(o for v in votes for o in v.option_ids)
    assert reported == counts_from_ballots(admin, poll["poll_id"]), "poll_results equals the stored ballots"
    assert reported == {o: from_votes.get(o, 0) for o in poll["option_ids"]}, "tallies equal the votes cast"
    assert results.body["total_ballots"] == len(votes)


def assert_no_errors(result: Round) -> None:
    assert not result.errors_by_kind(), f"client errors: {result.errors_by_kind()}"


def overload_wait(stack: Any) -> float:
    """The shortest configured wait after which a queued call gets a clean, retryable overload answer:
    PgBouncer's query_wait_timeout (db/pgbouncer.ini, 503 through PostgREST) or PostgREST's
    db-pool-acquisition-timeout (api/postgrest.conf, 504 PGRST003). Such a call never reached the server."""
    bouncer = float(Bouncer(stack).setting("query_wait_timeout"))
    return min(bouncer, float(read_postgrest_conf()["db-pool-acquisition-timeout"]))


def unexplained_errors(result: Round, wait: float) -> dict[str, int]:
    """Every failed call except a 503 / 504 that came after a wait of at least `wait` seconds (overload,
    settled like any retryable answer), by kind."""
    return dict(Counter(a.kind for a in result.attempts if not a.acked and not (
        a.status in (503, 504) and a.finished - a.started >= wait)))


RATE_LIMITS = ("rate limits: production's (nginx 10 r/s, burst 20; the database 10 a minute, burst 20, per "
               "address), one loopback address per k6 VU, a /16 no earlier round used, <= 16 ballots per VU")


def fault_round(stack: Any, *, name: str, votes: int, vus: int, fault: Fault | None, figures: dict[str, Any],
                seed: int = 0, timeout: float = 300) -> tuple[Round, Verdict]:
    """Cast `votes` fresh ballots through the stack's nginx from `vus` k6 VUs while `fault` runs, settle the
    unanswered ones and check every invariant (verify). Records the figures under `name`."""
    assert votes <= 16 * vus, "at most 16 ballots per VU: each VU's address stays within the burst of 20"
    api = ApiClient(stack.http_url, stack.jwt_secret)
    polls = make_polls(api)
    ballots = make_votes(polls, votes, tag=f"{name}-{uuid.uuid4().hex[:8]}", seed=seed)
    result = run_round(stack, ballots, vus=vus, fault=fault, timeout=timeout)
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        verdict = verify(stack, admin, polls, result)
    figures[name] = {
        **verdict.as_dict(), **result.notes,
        "errors_by_kind": result.errors_by_kind(),
        "postgrest_broken_connection_400": result.errors_by_kind().get(BROKEN_CONNECTION, 0),
        "read_only_server_400": sum(a.read_only_server for a in result.attempts),
        "longest_gap_without_ack_s": result.longest_ack_gap(),
        "latency_ms": result.latency_ms(),
        "votes_per_s": result.votes_per_s,
        "k6_cpu_s": result.k6_cpu_s,
    }
    return result, verdict
