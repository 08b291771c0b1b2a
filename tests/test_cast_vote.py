"""cast_vote semantics, one behaviour per test, every call as PostgREST makes it."""
from __future__ import annotations

import uuid

import pytest

from pgvote.http import ApiClient, Response

from helpers import Poll, PollFactory, fingerprint, results_counts, stored_ballots, table_snapshot, user


def assert_error(r: Response, status: int, code: str) -> None:
    assert r.status == status, r.body
    assert set(r.body) == {"code", "message", "details", "hint"}, r.body
    assert r.body["code"] == code
    assert r.body["message"], "every error carries a human message"


def vote(api: ApiClient, poll: Poll, options: list[str], claims=None, **body) -> Response:
    return api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": options, **body}, claims=claims)


def test_anonymous_vote_is_recorded(api, make_poll: PollFactory, admin) -> None:
    poll = make_poll()
    r = vote(api, poll, [poll.option_ids[1]], voter_fingerprint=fingerprint())
    assert r.status == 200
    assert r.body == {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[1]], "status": "recorded"}
    assert stored_ballots(admin, poll.poll_id) == 1


def test_identical_recast_is_unchanged_and_writes_nothing(api, make_poll, admin) -> None:
    poll = make_poll(max_choices=2)
    voter = user()
    assert vote(api, poll, poll.option_ids[:2], claims=voter).body["status"] == "recorded"
    before = table_snapshot(admin)
    r = vote(api, poll, list(reversed(poll.option_ids[:2])), claims=voter)  # a ballot is a set
    assert r.status == 200 and r.body["status"] == "unchanged"
    assert r.body["option_ids"] == poll.option_ids[:2], "responses list options in poll order"
    assert table_snapshot(admin) == before


def test_revote_replaces_the_ballot_when_allowed(api, make_poll, admin) -> None:
    poll = make_poll(allow_revote=True)
    voter = user()
    vote(api, poll, [poll.option_ids[0]], claims=voter)
    r = vote(api, poll, [poll.option_ids[2]], claims=voter)
    assert r.status == 200 and r.body["status"] == "changed"
    assert stored_ballots(admin, poll.poll_id) == 1
    counts = results_counts(api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET"))
    assert counts == {poll.option_ids[0]: 0, poll.option_ids[1]: 0, poll.option_ids[2]: 1}


def test_revote_forbidden_is_409_and_keeps_the_first_ballot(api, make_poll, admin) -> None:
    poll = make_poll(allow_revote=False)
    voter = user()
    vote(api, poll, [poll.option_ids[0]], claims=voter)
    before = table_snapshot(admin)
    assert_error(vote(api, poll, [poll.option_ids[1]], claims=voter), 409, "already_voted")
    assert table_snapshot(admin) == before
    # the identical ballot is still an idempotent success (clients retry after timeouts)
    assert vote(api, poll, [poll.option_ids[0]], claims=voter).body["status"] == "unchanged"


def test_multiple_vote_poll_adds_a_ballot_per_call(api, make_poll, admin) -> None:
    poll = make_poll(allow_multiple_votes=True)
    voter = user()
    statuses = [vote(api, poll, [poll.option_ids[0]], claims=voter).body["status"] for _ in range(3)]
    assert statuses == ["recorded"] * 3
    assert stored_ballots(admin, poll.poll_id) == 3


def test_repeated_ballot_id_is_unchanged_on_multiple_vote_poll(api, make_poll, admin) -> None:
    poll = make_poll(allow_multiple_votes=True)
    voter, ballot_id = user(), str(uuid.uuid4())
    assert vote(api, poll, [poll.option_ids[0]], claims=voter, ballot_id=ballot_id).body["status"] == "recorded"
    before = table_snapshot(admin)
    r = vote(api, poll, [poll.option_ids[1]], claims=voter, ballot_id=ballot_id)
    assert r.status == 200 and r.body["status"] == "unchanged"
    assert r.body["option_ids"] == [poll.option_ids[0]], "answers with the ballot that was stored"
    assert table_snapshot(admin) == before


def test_multi_choice_ballot_within_max_choices(api, make_poll) -> None:
    poll = make_poll(options=4, max_choices=3)
    r = vote(api, poll, [poll.option_ids[3], poll.option_ids[0], poll.option_ids[2]], claims=user())
    assert r.status == 200
    assert r.body["option_ids"] == [poll.option_ids[0], poll.option_ids[2], poll.option_ids[3]]


@pytest.mark.parametrize(
    "ballot, why",
    [
        (lambda p, other: [], "empty"),
        (lambda p, other: [p.option_ids[0], p.option_ids[0]], "duplicate option"),
        (lambda p, other: p.option_ids[:3], "more than max_choices"),
        (lambda p, other: [other.option_ids[0]], "option of another poll"),
        (lambda p, other: [str(uuid.uuid4())], "unknown option"),
        (lambda p, other: [p.option_ids[0], None], "null in the list"),
        (lambda p, other: [[p.option_ids[0]], [p.option_ids[1]]], "nested list"),
    ],
)
def test_invalid_ballot_is_400_and_writes_nothing(api, make_poll, admin, ballot, why) -> None:
    poll, other = make_poll(max_choices=2), make_poll()
    before = table_snapshot(admin)
    assert_error(vote(api, poll, ballot(poll, other), claims=user()), 400, "invalid_ballot")
    assert table_snapshot(admin) == before, why


@pytest.mark.parametrize(
    "literal, why",
    [
        (lambda ids: f"[0:0]={{{ids[0]}}}", "lower bound 0"),
        (lambda ids: f"[2:3]={{{ids[0]},{ids[1]}}}", "lower bound 2"),
        (lambda ids: f"{{{{{ids[0]}}},{{{ids[1]}}}}}", "two dimensions"),
    ],
)
def test_array_literal_that_no_json_array_makes_is_invalid_ballot(api, make_poll, admin, literal, why) -> None:
    """PostgREST coerces an array-literal string for option_ids; one with another lower bound or
    more dimensions is no flat list, and the message says so (not "not an option of this poll")."""
    poll = make_poll(max_choices=2)
    before = table_snapshot(admin)
    r = vote(api, poll, literal(poll.option_ids), claims=user())
    assert_error(r, 400, "invalid_ballot")
    assert "flat JSON array" in r.body["message"], (why, r.body["message"])
    assert table_snapshot(admin) == before


def test_array_literal_string_is_the_same_ballot_as_the_json_array(api, make_poll) -> None:
    """The function cannot tell "{a,b}" (coerced by PostgREST) from ["a","b"]: the same ballot."""
    poll, voter = make_poll(max_choices=2, allow_revote=False), user()
    a, b = poll.option_ids[:2]
    assert vote(api, poll, f"{{{b},{a}}}", claims=voter).body["status"] == "recorded"
    assert vote(api, poll, [a, b], claims=voter).body == {"poll_id": poll.poll_id, "option_ids": [a, b],
                                                         "status": "unchanged"}


def test_unknown_poll_is_404(api) -> None:
    assert_error(api.rpc("cast_vote", {"poll_id": str(uuid.uuid4()), "option_ids": [str(uuid.uuid4())]},
                         claims=user()), 404, "poll_not_found")


def test_closed_poll_is_410(api, make_poll, admin) -> None:
    poll = make_poll()
    assert api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator).status == 200
    before = table_snapshot(admin)
    assert_error(vote(api, poll, [poll.option_ids[0]], claims=user()), 410, "poll_closed")
    assert table_snapshot(admin) == before


def test_expired_poll_is_410_and_shows_closed(api, make_poll, admin) -> None:
    poll = make_poll(closes_at="2999-01-01T00:00:00Z")
    admin.execute("update voting.polls set closes_at = now() - interval '1 second' where poll_id = %s", (poll.poll_id,))
    assert_error(vote(api, poll, [poll.option_ids[0]], voter_fingerprint=fingerprint()), 410, "poll_closed")
    assert api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET").body["closed"] is True


def test_anonymous_vote_on_members_only_poll_is_401(api, make_poll, admin) -> None:
    poll = make_poll(allow_anonymous=False)
    before = table_snapshot(admin)
    assert_error(vote(api, poll, [poll.option_ids[0]], voter_fingerprint=fingerprint()), 401, "login_required")
    assert table_snapshot(admin) == before


def test_jwt_without_sub_is_401(api, make_poll) -> None:
    poll = make_poll()
    assert_error(vote(api, poll, [poll.option_ids[0]], claims={"role": "authenticated"}), 401, "login_required")


@pytest.mark.parametrize("bad", [None, "", "x" * 257, "tab\there"], ids=["missing", "empty", "too-long", "control-char"])
def test_bad_fingerprint_is_400(api, make_poll, admin, bad) -> None:
    poll = make_poll()
    body = {} if bad is None else {"voter_fingerprint": bad}
    before = table_snapshot(admin)
    assert_error(vote(api, poll, [poll.option_ids[0]], **body), 400, "invalid_fingerprint")
    assert table_snapshot(admin) == before


def test_longest_fingerprint_is_accepted(api, make_poll) -> None:
    poll = make_poll()
    assert vote(api, poll, [poll.option_ids[0]], voter_fingerprint="é" * 256).status == 200


def test_body_fingerprint_cannot_override_jwt_identity(api, make_poll, admin) -> None:
    """A signed-in voter who sends someone's fingerprint still votes as themself."""
    poll = make_poll(allow_revote=False)
    victim_fp = fingerprint()
    assert vote(api, poll, [poll.option_ids[0]], voter_fingerprint=victim_fp).body["status"] == "recorded"
    attacker = user()
    r = vote(api, poll, [poll.option_ids[1]], claims=attacker, voter_fingerprint=victim_fp)
    assert r.status == 200 and r.body["status"] == "recorded"  # a ballot of the attacker's own
    assert stored_ballots(admin, poll.poll_id) == 2
    # and the same sub votes as the same voter whatever fingerprint it sends
    assert_error(vote(api, poll, [poll.option_ids[2]], claims=attacker, voter_fingerprint=fingerprint()),
                 409, "already_voted")


def test_body_sub_cannot_override_jwt_identity(api, make_poll) -> None:
    """cast_vote has no parameter for a voter id: PostgREST rejects the unknown key."""
    poll = make_poll()
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "sub": "someone"},
                claims=user())
    assert r.status == 404 and r.body["code"] == "PGRST202"


def test_sub_and_fingerprint_namespaces_do_not_collide(api, make_poll, admin) -> None:
    """JWT sub 'x' and fingerprint 'x' are two different voters (domain-separated keys)."""
    poll = make_poll(allow_revote=False)
    assert vote(api, poll, [poll.option_ids[0]], claims=user("same-text")).body["status"] == "recorded"
    assert vote(api, poll, [poll.option_ids[1]], voter_fingerprint="same-text").body["status"] == "recorded"
    assert stored_ballots(admin, poll.poll_id) == 2


# Which error wins, first match: poll_not_found, poll_closed, login_required,
# invalid_fingerprint, invalid_ballot, (rate_limited), already_voted.
def test_precedence_closed_beats_identity_and_ballot_errors(api, make_poll) -> None:
    poll = make_poll(allow_anonymous=False)
    api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
    assert_error(vote(api, poll, []), 410, "poll_closed")


def test_precedence_not_found_beats_everything(api) -> None:
    assert_error(api.rpc("cast_vote", {"poll_id": str(uuid.uuid4()), "option_ids": []}), 404, "poll_not_found")


def test_precedence_login_beats_fingerprint_and_ballot(api, make_poll) -> None:
    poll = make_poll(allow_anonymous=False)
    assert_error(vote(api, poll, []), 401, "login_required")


def test_precedence_fingerprint_beats_ballot(api, make_poll) -> None:
    poll = make_poll()
    assert_error(vote(api, poll, []), 400, "invalid_fingerprint")


def test_precedence_ballot_beats_already_voted(api, make_poll) -> None:
    poll = make_poll(allow_revote=False)
    voter = user()
    vote(api, poll, [poll.option_ids[0]], claims=voter)
    assert_error(vote(api, poll, [poll.option_ids[0], poll.option_ids[0]], claims=voter), 400, "invalid_ballot")


def test_malformed_uuid_is_rejected_before_the_function_runs(api, make_poll) -> None:
    poll = make_poll()
    r = api.rpc("cast_vote", {"poll_id": "not-a-uuid", "option_ids": [poll.option_ids[0]]}, claims=user())
    assert r.status == 400 and r.body["code"] == "22P02"
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": "not-an-array"}, claims=user())
    assert r.status == 400 and r.body["code"].startswith("22")


def test_seed_load_test_payload_is_a_valid_body(api, make_poll) -> None:
    """The original guide's k6 payload maps onto cast_vote's parameter names."""
    poll = make_poll()
    body = {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_fingerprint": "k6-user-1"}
    assert api.rpc("cast_vote", body).status == 200
