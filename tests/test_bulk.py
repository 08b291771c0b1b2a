"""api.cast_votes, the bulk path of a trusted edge tier: per-ballot outcomes in input
order, the same rules and codes as cast_vote, all-or-nothing batches."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from test_cast_vote import assert_error
from test_concurrency import wait_until_waiting

from helpers import Poll, counts_from_ballots, results_counts, stored_ballots, table_snapshot, user

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


def test_unknown_polls_take_no_fence_lock(admin, make_poll) -> None:
    """A batch of 1,000 random poll ids (and one real poll) holds one advisory lock, the real
    poll's fence, read from pg_locks inside the batch's own transaction; the rest are
    per-ballot poll_not_found. A lock per unknown id would let batches exhaust the lock table
    (53200, a 5xx) from input alone."""
    poll = make_poll()
    batch = [{"poll_id": str(uuid.uuid4()), "option_ids": [poll.option_ids[0]], "voter_id": f"lock-{i}"}
             for i in range(999)]
    batch.insert(500, {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_id": "lock-real"})
    with admin.transaction(force_rollback=True):
        admin.execute("select set_config('request.jwt.claims', %s, true)", ('{"role": "ingest"}',))
        answer = admin.execute("select api.cast_votes(%s)", (Jsonb(batch),)).fetchone()[0]
        locks = admin.execute("select count(*) from pg_locks where pid = pg_backend_pid() "
                              "and locktype = 'advisory'").fetchone()[0]
    assert locks == 1
    codes = [x.get("code", x["status"]) for x in answer["results"]]
    assert codes == ["poll_not_found"] * 500 + ["recorded"] + ["poll_not_found"] * 499


def test_malformed_uuids_reject_their_ballot_only(api, make_poll, admin) -> None:
    """An unmatched brace is no uuid: that ballot is invalid_ballot, the valid ballot beside it
    is recorded (the uuid cast once failed the whole batch with 22P02)."""
    poll = make_poll(options=3, max_choices=3)
    a, b, c = poll.option_ids
    batch = [
        {"poll_id": "{" + poll.poll_id, "option_ids": [a], "voter_id": "brace-1"},
        {"poll_id": poll.poll_id + "}", "option_ids": [a], "voter_id": "brace-2"},
        {"poll_id": poll.poll_id, "option_ids": ["{" + a], "voter_id": "brace-3"},
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_id": "brace-4", "ballot_id": str(uuid.uuid4()) + "}"},
        {"poll_id": poll.poll_id, "option_ids": [b], "voter_id": "valid"},
        {"poll_id": "{" + poll.poll_id + "}", "option_ids": [a.upper(), "{" + c + "}"], "voter_id": "braces"},
    ]
    r = bulk(api, batch)
    assert r.status == 200, r.body
    assert [(x["status"], x.get("code")) for x in r.body["results"]] == \
        [("rejected", "invalid_ballot")] * 4 + [("recorded", None)] * 2
    assert r.body["results"][5]["option_ids"] == [a, c]
    assert stored_ballots(admin, poll.poll_id) == 2


def test_reversed_revote_batches_never_deadlock(stack, make_poll, admin, api) -> None:
    """Interleaving: two batches revote the same 200 voters at once, one in reverse order. Both
    are first held at their first revote (another transaction holds every ballot row of the
    poll), then released together, so both lock rows at the same time. Rows are locked in key
    order, whatever the input order, so neither waits for the other in a cycle (a 40P01 once
    answered HTTP 500): both succeed, every ballot is `changed`, reported in input order. The
    first round inserts the same new voters from both sides."""
    poll = make_poll(options=4, allow_revote=True)
    voters = [f"deadlock-{poll.poll_id}-{i}" for i in range(200)]

    def batch(option: str, order: list[str]) -> list[dict[str, Any]]:
        return [{"poll_id": poll.poll_id, "option_ids": [option], "voter_id": v} for v in order]

    def send(ballots: list[dict[str, Any]]) -> dict[str, Any]:
        """Straight to PostgreSQL: the emulation retries a 40P01 (PostgREST 12.0.2 answers it 500)."""
        with psycopg.connect(stack.admin_url) as conn:
            conn.execute("select set_config('request.jwt.claims', %s, true)", ('{"role": "ingest"}',))
            return conn.execute("select api.cast_votes(%s)", (Jsonb(ballots),)).fetchone()[0]

    targets = [(poll.option_ids[0], poll.option_ids[1]), (poll.option_ids[2], poll.option_ids[3])] * 3
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n, (one, other) in enumerate(targets):
            batches = [batch(one, voters), batch(other, voters[::-1])]
            with psycopg.connect(stack.admin_url) as holder:
                holder.execute("select from voting.ballots where poll_id = %s for update", (poll.poll_id,))
                futures = [pool.submit(send, b) for b in batches]
                if n:  # round 0 inserts: there is no row to hold yet
                    wait_until_waiting(admin, "%cast_votes%", count=2)
            replies = [f.result(timeout=60) for f in futures]  # a deadlock raises DeadlockDetected
            for r, sent in zip(replies, batches):
                assert [x["option_ids"] for x in r["results"]] == [b["option_ids"] for b in sent], "input order"
                statuses = {x["status"] for x in r["results"]}
                assert statuses in ({"recorded"}, {"changed"}) if n == 0 else statuses == {"changed"}, statuses
    assert stored_ballots(admin, poll.poll_id) == 200
    assert results_counts(api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")) == \
        counts_from_ballots(admin, poll.poll_id)


def test_only_the_ingest_role_may_call_it(api, make_poll) -> None:
    poll = make_poll()
    batch = [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_id": "x"}]
    assert api.rpc("cast_votes", {"ballots": batch}).status == 401
    assert api.rpc("cast_votes", {"ballots": batch}, claims=user()).status == 403


# Equivalence with cast_vote: a sequence of ballot attempts applied one by one through
# cast_vote on one poll, and as ONE batch through cast_votes on a twin poll, gives the
# same outcome per attempt and the same tallies. Every id may be spelled in any form the
# uuid type accepts, or in a malformed one; option_ids may be a JSON array or a string in
# PostgreSQL's array syntax (which PostgREST's json_to_record coerces for cast_vote); a
# fingerprint may be a JSON number. What PostgREST refuses before cast_vote runs (400 with
# a SQLSTATE such as 22P02) is invalid_ballot for that ballot alone in a batch.
UUID_FORMS = ["canonical", "canonical", "upper", "no-hyphens", "hyphen-every-4", "braces", "open-brace",
              "close-brace"]
OPTION_FORMS = ["json", "json", "literal", "literal-lower-0", "literal-2d", "json-nested"]
attempts = st.lists(
    st.tuples(
        st.sampled_from(["sub", "fp", "bad-fp", "none", "number-fp"]),   # identity
        st.integers(min_value=0, max_value=3),                            # which voter
        st.sampled_from(["one", "two", "three", "dup", "empty", "foreign"]),  # ballot shape
        st.integers(min_value=0, max_value=2),                            # first option
        st.sampled_from(UUID_FORMS),                                      # spelling of poll_id
        st.sampled_from(UUID_FORMS),                                      # spelling of option ids
        st.sampled_from(OPTION_FORMS),                                    # shape of option_ids
    ),
    min_size=1, max_size=12,
)


def spell_uuid(value: str, form: str) -> str:
    digits = value.replace("-", "")
    return {"canonical": value, "upper": value.upper(), "no-hyphens": digits,
            "hyphen-every-4": "-".join(digits[i:i + 4] for i in range(0, 32, 4)),
            "braces": "{" + value + "}", "open-brace": "{" + value, "close-brace": value + "}"}[form]


def option_ids_value(ids: list[str], form: str) -> Any:
    return {"json": ids, "literal": "{" + ",".join(ids) + "}",
            "literal-lower-0": f"[0:{len(ids) - 1}]={{" + ",".join(ids) + "}",
            "literal-2d": "{" + ",".join("{" + i + "}" for i in ids) + "}",
            "json-nested": [[i] for i in ids]}[form]


def ballot_for(poll: Poll, other: Poll, shape: str, first: int) -> list[str]:
    ids = poll.option_ids
    return {"one": [ids[first]], "two": [ids[first], ids[(first + 1) % 3]], "three": ids,
            "dup": [ids[first], ids[first]], "empty": [], "foreign": [other.option_ids[first]]}[shape]


def outcome(r) -> tuple[str, str | None]:
    """cast_vote's answer as a batch reports it: PostgREST's own 400 (SQLSTATE code) is invalid_ballot."""
    if r.status == 200:
        return r.body["status"], None
    if r.status == 400 and r.body["code"][:2].isdigit():
        return "rejected", "invalid_ballot"
    return "rejected", r.body["code"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
                "bad-fp": (None, {"voter_fingerprint": ""}), "none": (None, {}),
                "number-fp": (None, {"voter_fingerprint": 7000 + voter})}[kind]

    def body_for(poll: Poll, shape: str, first: int, poll_form: str, option_form: str, ids_form: str) -> dict:
        ids = [spell_uuid(i, option_form) for i in ballot_for(poll, other, shape, first)]
        return {"poll_id": spell_uuid(poll.poll_id, poll_form), "option_ids": option_ids_value(ids, ids_form)}

    one_by_one, batch = [], []
    for kind, voter, shape, first, poll_form, option_form, ids_form in attempts:
        claims, bulk_identity = identity(kind, voter)
        body = body_for(single, shape, first, poll_form, option_form, ids_form)
        if kind != "sub":
            body.update(bulk_identity)
        one_by_one.append(outcome(api.rpc("cast_vote", body, claims=claims)))
        batch.append({**body_for(twin, shape, first, poll_form, option_form, ids_form), **bulk_identity})

    r = bulk(api, batch)
    assert r.status == 200, r.body
    assert [(x["status"], x.get("code")) for x in r.body["results"]] == one_by_one
    def counts_by_position(p: Poll) -> list[int]:
        counts = counts_from_ballots(admin, p.poll_id)
        return [counts[option_id] for option_id in p.option_ids]

    assert counts_by_position(single) == counts_by_position(twin)
    twin_results = api.rpc("poll_results", {"poll_id": twin.poll_id}, method="GET")
    assert results_counts(twin_results) == counts_from_ballots(admin, twin.poll_id)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF-{}", min_size=30, max_size=42),
    st.builds(spell_uuid, st.uuids().map(str), st.sampled_from(UUID_FORMS)),
))
def test_parse_uuid_accepts_exactly_what_the_uuid_type_accepts(admin, text) -> None:
    """internal.parse_uuid is the bulk path's soft twin of the uuid cast json_to_record applies."""
    parsed = admin.execute("select internal.parse_uuid(%s)::text", (text,)).fetchone()[0]
    try:
        cast = admin.execute("select %s::uuid::text", (text,)).fetchone()[0]
    except psycopg.errors.InvalidTextRepresentation:
        cast = None
    assert parsed == cast
