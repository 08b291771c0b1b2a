"""Invariant checks shared by the fault tests: nothing acknowledged lost, nothing stored twice, tallies exact."""
from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvote.postgrest_emulation import PostgrestEmulator

from .faults import Bouncer
from .loadgen import CallRecord, LoadResult, Vote, emulator, recast, run_load

NIL_BALLOT = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class VotePolls:
    """A single-ballot poll (anonymous voters, revotes off) and a multiple-vote poll (signed-in voters,
    ballot_id per ballot): the two ways a retry must stay exactly-once."""

    single: dict[str, Any]
    multiple: dict[str, Any]


def make_polls(api: PostgrestEmulator) -> VotePolls:
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
    acknowledged: int
    lost: int
    lost_during_commit: int
    resolved_recorded: int  # lost calls whose re-cast answered recorded (the first attempt had not committed)
    resolved_unchanged: int  # lost calls whose re-cast answered unchanged (the first attempt had committed)
    stored: int
    duplicates: int
    acknowledged_missing: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def resolve_and_verify(url: str, template: PostgrestEmulator, admin: psycopg.Connection, polls: VotePolls,
                       votes: Sequence[Vote], result: LoadResult) -> Verdict:
    """Resolve every lost call by an identical re-cast, then check the ballots and tallies.

    - no call was rejected (every vote is valid);
    - a call lost before its COMMIT was sent cannot have committed: its re-cast answers ``recorded``;
      one lost during COMMIT (or timed out) answers ``recorded`` or ``unchanged``;
    - every vote is stored exactly once, with its options, and nothing else is stored;
    - ``poll_results`` equals the counts derived from the stored ballots and from the votes.
    """
    records = {r.vote: r for r in result.records}
    assert len(records) == len(result.records) == len(votes), "every vote was cast exactly once by the load"
    rejected = result.rejected()
    assert not rejected, f"valid votes rejected: {Counter((r.status, r.code) for r in rejected)}"
    lost = result.lost()
    resolution = recast(url, template, [r.vote for r in lost]) if lost else {}
    recorded = unchanged = 0
    for r in lost:
        final: CallRecord | None = resolution.get(r.vote)
        assert final is not None and final.outcome == "ack", f"re-cast of a lost vote did not succeed: {final}"
        if r.lost_in in ("commit", "timeout"):
            assert final.answer in ("recorded", "unchanged"), final
        else:
            assert final.answer == "recorded", (
                f"a call lost before COMMIT ({r.lost_in}: {r.code}) was found committed: {final}")
        recorded += final.answer == "recorded"
        unchanged += final.answer == "unchanged"

    stored, duplicates, missing = _check_stored(admin, polls, votes)
    for poll in (polls.single, polls.multiple):
        _check_tallies(template, admin, poll, [v for v in votes if v.poll_id == poll["poll_id"]])
    return Verdict(votes=len(votes), acknowledged=len(result.acked()), lost=len(lost),
                   lost_during_commit=sum(r.lost_in in ("commit", "timeout") for r in lost),
                   resolved_recorded=recorded, resolved_unchanged=unchanged, stored=stored,
                   duplicates=duplicates, acknowledged_missing=missing)


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


def _check_tallies(api: PostgrestEmulator, admin: psycopg.Connection, poll: dict[str, Any],
                   votes: Sequence[Vote]) -> None:
    results = api.rpc("poll_results", {"poll_id": poll["poll_id"]}, method="GET")
    assert results.status == 200, results.body
    reported = {o["option_id"]: o["votes"] for o in results.body["options"]}
    from_votes = Counter(o for v in votes for o in v.option_ids)
    from_ballots = dict(admin.execute(
        """select o.option_id::text, count(b.poll_id) from voting.poll_options o
           left join voting.ballots b on b.poll_id = o.poll_id and o.option_id = any (b.option_ids)
           where o.poll_id = %s group by o.option_id""", (poll["poll_id"],)).fetchall())
    assert reported == {o: int(n) for o, n in from_ballots.items()}, "poll_results equals the stored ballots"
    assert reported == {o: from_votes.get(o, 0) for o in poll["option_ids"]}, "tallies equal the votes cast"
    assert results.body["total_ballots"] == len(votes)


def assert_no_errors(result: LoadResult) -> None:
    errors = result.errors_by_kind()
    assert not errors, f"client errors: {errors}"


def query_wait_timeout(stack: Any) -> float:
    """PgBouncer's configured wait for a server connection (s): past it a queued client gets the clean,
    retryable query_wait_timeout error (db/pgbouncer.ini)."""
    return float(Bouncer(stack).setting("query_wait_timeout"))


def unexplained_errors(records: Sequence[CallRecord], wait: float) -> list[CallRecord]:
    """Every error except PgBouncer's query_wait_timeout after a wait of at least `wait` seconds.

    A call that waited longer than the configured wait may get that clean overload error (it never reached
    the server, so it is not committed and an identical re-cast settles it); any other error is a fault.
    """
    return [r for r in records if r.outcome != "ack" and not (
        r.outcome == "lost" and r.lost_in == "statement" and r.message == "query_wait_timeout"
        and r.latency >= wait)]


def fault_round(stack: Any, *, name: str, votes: int, connections: int, fault: Any, figures: dict[str, Any],
                seed: int = 0, timeout: float = 900) -> tuple[LoadResult, Verdict]:
    """Cast `votes` fresh ballots through the stack's PgBouncer on `connections` clients while `fault` runs,
    then resolve the lost calls and check every invariant (resolve_and_verify). Records the figures under
    `name` and returns them for test-specific assertions."""
    api = emulator(stack.api_url)
    try:
        polls = make_polls(api)
        ballots = make_votes(polls, votes, tag=f"{name}-{uuid.uuid4().hex[:8]}", seed=seed)
        result = run_load(stack.api_url, api, ballots, connections=connections, fault=fault, timeout=timeout)
    finally:
        api.conn.close()
    api = emulator(stack.api_url)
    try:
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            verdict = resolve_and_verify(stack.api_url, api, admin, polls, ballots, result)
    finally:
        api.conn.close()
    figures[name] = {
        **verdict.as_dict(), **result.notes,
        "errors_by_kind": result.errors_by_kind(),
        "error_examples": result.error_examples(),
        "longest_gap_without_ack_s": result.longest_ack_gap(),
        "latency_ms": result.latency_ms(),
        "votes_per_s": round(result.throughput),
    }
    return result, verdict
