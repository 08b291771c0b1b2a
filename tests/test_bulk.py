"""api.cast_votes, the bulk path of a trusted edge tier: per-ballot outcomes in input
order, the same rules and codes as cast_vote, all-or-nothing batches."""
from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Poll, counts_from_ballots, results_counts, stored_ballots, table_snapshot, user
from test_cast_vote import assert_error

INGEST = {"role": "ingest"}


def bulk(api, ballots: Any):
    return api.rpc("cast_votes", {"ballots": ballots}, claims=INGEST)


def test_mixed_batch_answers_each_ballot_in_input_order(api, make_poll, admin) -> None:
    poll = make_poll(options=3, max_choices=2, allow_revote=True)
    closed = make_poll()
    api.rpc("close_poll", {"poll_id": closed.poll_id}, claims=closed.creator)
    a, b, c = poll.option_ids
    batch = [
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_id": "u1"},
        {"poll_id": poll.poll_id, "option_ids": [b, a], "voter_id": "u2"},
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_id": "u1"},          # identical repeat
        {"poll_id": poll.poll_id, "option_ids": [c], "voter_id": "u1"},          # revote in the batch
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_fingerprint": "device-1"},
        {"poll_id": poll.poll_id, "option_ids": [], "voter_fingerprint": "device-2"},
        {"poll_id": "not-a-uuid", "option_ids": [a], "voter_fingerprint": "device-3"},
        {"poll_id": str(uuid.uuid4()), "option_ids": [a], "voter_fingerprint": "device-3"},
        {"poll_id": poll.poll_id, "option_ids": [a]},                            # no identity
        {"poll_id": closed.poll_id, "option_ids": [closed.option_ids[0]], "voter_id": "u1"},
        {"poll_id": poll.poll_id, "option_ids": [a, b, c], "voter_id": "u3"},    # over max_choices
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_id": "u4", "sub": "x"},  # unknown key
    ]
    r = bulk(api, batch)
    assert r.status == 200, r.body
    outcomes = [(x["status"], x.get("code")) for x in r.body["results"]]
    assert outcomes == [
        ("recorded", None), ("recorded", None), ("unchanged", None), ("changed", None), ("recorded", None),
        ("rejected", "invalid_ballot"), ("rejected", "invalid_ballot"), ("rejected", "poll_not_found"),
        ("rejected", "invalid_fingerprint"), ("rejected", "poll_closed"), ("rejected", "invalid_ballot"),
        ("rejected", "invalid_ballot"),
    ]
    assert r.body["results"][1]["option_ids"] == [a, b], "poll order"
    assert {k: r.body[k] for k in ("recorded", "changed", "unchanged", "rejected")} == \
        {"recorded": 3, "changed": 1, "unchanged": 1, "rejected": 7}
    assert stored_ballots(admin, poll.poll_id) == 3
    results = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert results_counts(results) == counts_from_ballots(admin, poll.poll_id) == {a: 2, b: 1, c: 1}


def test_retried_batch_is_unchanged_and_writes_nothing(api, make_poll, admin) -> None:
    poll = make_poll()
    batch = [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[i % 3]], "voter_id": f"retry-{i}"}
             for i in range(500)]
    assert bulk(api, batch).body["recorded"] == 500
    before = table_snapshot(admin)
    again = bulk(api, batch)
    assert again.body["unchanged"] == 500
    assert table_snapshot(admin) == before


def test_voter_id_is_the_same_voter_as_a_jwt_sub(api, make_poll) -> None:
    poll = make_poll(allow_revote=False)
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]},
                   claims=user("same-person")).body["status"] == "recorded"
    r = bulk(api, [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[1]], "voter_id": "same-person"}])
    assert r.body["results"][0]["code"] == "already_voted"


def test_more_than_1000_ballots_is_400_and_writes_nothing(api, make_poll, admin) -> None:
    poll = make_poll()
    before = table_snapshot(admin)
    batch = [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_id": f"big-{i}"} for i in range(1001)]
    assert_error(bulk(api, batch), 400, "invalid_ballot")
    assert_error(bulk(api, {"poll_id": poll.poll_id}), 400, "invalid_ballot")
    assert table_snapshot(admin) == before


def test_only_the_ingest_role_may_call_it(api, make_poll) -> None:
    poll = make_poll()
    batch = [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_id": "x"}]
    assert api.rpc("cast_votes", {"ballots": batch}).status == 401
    assert api.rpc("cast_votes", {"ballots": batch}, claims=user()).status == 403


# Equivalence with cast_vote: a sequence of ballot attempts applied one by one through
# cast_vote on one poll, and as ONE batch through cast_votes on a twin poll, gives the
# same outcome per attempt and the same tallies.
attempts = st.lists(
    st.tuples(
        st.sampled_from(["sub", "fp", "bad-fp", "none"]),        # identity
        st.integers(min_value=0, max_value=3),                    # which voter
        st.sampled_from(["one", "two", "three", "dup", "empty", "foreign"]),  # ballot shape
        st.integers(min_value=0, max_value=2),                    # first option
    ),
    min_size=1, max_size=12,
)


def ballot_for(poll: Poll, other: Poll, shape: str, first: int) -> list[str]:
    ids = poll.option_ids
    return {"one": [ids[first]], "two": [ids[first], ids[(first + 1) % 3]], "three": ids,
            "dup": [ids[first], ids[first]], "empty": [], "foreign": [other.option_ids[first]]}[shape]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attempts=attempts, allow_revote=st.booleans(), allow_anonymous=st.booleans(), multiple=st.booleans())
def test_cast_votes_matches_cast_vote_ballot_by_ballot(api, make_poll, admin, attempts, allow_revote,
                                                       allow_anonymous, multiple) -> None:
    settings_ = {"options": 3, "max_choices": 2, "allow_revote": allow_revote,
                 "allow_anonymous": allow_anonymous, "allow_multiple_votes": multiple}
    single, twin, other = make_poll(**settings_), make_poll(**settings_), make_poll()
    run = uuid.uuid4().hex[:8]

    def identity(kind: str, voter: int) -> tuple[dict | None, dict]:
        name = f"eq-{run}-{voter}"
        return {"sub": (user(name), {"voter_id": name}), "fp": (None, {"voter_fingerprint": name}),
                "bad-fp": (None, {"voter_fingerprint": ""}), "none": (None, {})}[kind]

    one_by_one, batch = [], []
    for kind, voter, shape, first in attempts:
        claims, bulk_identity = identity(kind, voter)
        body = {"poll_id": single.poll_id, "option_ids": ballot_for(single, other, shape, first)}
        if kind != "sub":
            body.update(bulk_identity)
        r = api.rpc("cast_vote", body, claims=claims)
        one_by_one.append((r.body["status"], None) if r.status == 200 else ("rejected", r.body["code"]))
        batch.append({"poll_id": twin.poll_id, "option_ids": ballot_for(twin, other, shape, first), **bulk_identity})

    r = bulk(api, batch)
    assert r.status == 200
    assert [(x["status"], x.get("code")) for x in r.body["results"]] == one_by_one
    def counts_by_position(p: Poll) -> list[int]:
        counts = counts_from_ballots(admin, p.poll_id)
        return [counts[option_id] for option_id in p.option_ids]

    assert counts_by_position(single) == counts_by_position(twin)
    twin_results = api.rpc("poll_results", {"poll_id": twin.poll_id}, method="GET")
    assert results_counts(twin_results) == counts_from_ballots(admin, twin.poll_id)
