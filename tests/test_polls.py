"""create_poll limits, close_poll rules, poll_results shape."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from test_cast_vote import assert_error

from helpers import fingerprint, table_snapshot, user

GOOD: dict[str, Any] = {"question": "Lunch?", "options": ["soup", "salad"]}


def test_create_poll_returns_ids_in_option_order(api, admin) -> None:
    r = api.rpc("create_poll", {"question": "Pick", "options": ["c", "a", "b"]}, claims=user())
    assert r.status == 200 and set(r.body) == {"poll_id", "option_ids"}
    labels = admin.execute(
        "select label from voting.poll_options o join unnest(%s::uuid[]) with ordinality as i(id, n) "
        "on i.id = o.option_id order by i.n", (r.body["option_ids"],)).fetchall()
    assert [label for (label,) in labels] == ["c", "a", "b"]


def test_create_poll_defaults(api, admin) -> None:
    r = api.rpc("create_poll", GOOD, claims=user())
    row = admin.execute(
        "select max_choices, allow_revote, allow_multiple_votes, allow_anonymous, closes_at, closed_at "
        "from voting.polls where poll_id = %s", (r.body["poll_id"],)).fetchone()
    assert row == (1, True, False, True, None, None)


@pytest.mark.parametrize(
    "change",
    [
        {"question": ""}, {"question": "   "}, {"question": "\t\n"}, {"question": "\u3000\u00a0 "},
        {"question": "q" * 501}, {"question": None},
        {"options": ["a", "\t"]}, {"options": ["a", "\r\n"]}, {"options": ["a", "\u2003"]},
        {"options": "[0:1]={a,b}"}, {"options": "{{a,b},{c,d}}"}, {"options": [["a", "b"], ["c", "d"]]},
        {"options": ["only one"]}, {"options": [f"o{i}" for i in range(101)]}, {"options": ["a", "a"]},
        {"options": ["a", ""]}, {"options": ["a", "x" * 201]}, {"options": ["a", None]}, {"options": None},
        {"max_choices": 0}, {"max_choices": 3}, {"allow_revote": None},
        {"closes_at": "2000-01-01T00:00:00Z"},
    ],
    ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))!r}",
)
def test_create_poll_limits_are_400_invalid_poll(api, admin, change) -> None:
    before = table_snapshot(admin)
    assert_error(api.rpc("create_poll", {**GOOD, **change}, claims=user()), 400, "invalid_poll")
    assert table_snapshot(admin) == before


def test_options_as_an_array_literal_string_are_the_same_list(api, admin) -> None:
    """PostgREST coerces a string in PostgreSQL's array syntax into the text[] before the function
    runs, which cannot tell it from the JSON array: the contract accepts it as that list."""
    r = api.rpc("create_poll", {"question": "Lunch?", "options": "{soup,\"green salad\"}"}, claims=user())
    assert r.status == 200, r.body
    labels = admin.execute("select array_agg(label order by position) from voting.poll_options where poll_id = %s",
                           (r.body["poll_id"],)).fetchone()[0]
    assert labels == ["soup", "green salad"]


def test_create_poll_accepts_the_limits(api) -> None:
    body = {"question": "q" * 500, "options": [f"{i:03d}" + "x" * 197 for i in range(100)], "max_choices": 100}
    assert api.rpc("create_poll", body, claims=user()).status == 200


def test_create_poll_needs_a_sub(api) -> None:
    assert_error(api.rpc("create_poll", GOOD, claims={"role": "authenticated"}), 401, "login_required")


def test_anonymous_caller_cannot_create_a_poll(api, admin) -> None:
    before = table_snapshot(admin)
    r = api.rpc("create_poll", GOOD)
    assert r.status == 401 and r.body["code"] == "42501"
    assert "Bearer" in r.headers.get("WWW-Authenticate", "")
    assert table_snapshot(admin) == before


def test_only_the_creator_closes_a_poll(api, make_poll, admin) -> None:
    poll = make_poll()
    assert_error(api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=user()), 403, "not_poll_creator")
    assert admin.execute("select closed_at from voting.polls where poll_id = %s", (poll.poll_id,)).fetchone()[0] is None
    r = api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
    assert r.status == 200 and r.body["closed"] is True and r.body["poll_id"] == poll.poll_id


def test_close_poll_is_idempotent(api, make_poll) -> None:
    poll = make_poll()
    first = api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
    again = api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator)
    assert first.status == again.status == 200
    assert first.body == again.body


def test_close_unknown_poll_is_404(api) -> None:
    assert_error(api.rpc("close_poll", {"poll_id": str(uuid.uuid4())}, claims=user()), 404, "poll_not_found")


def test_anonymous_caller_cannot_close(api, make_poll) -> None:
    poll = make_poll()
    assert api.rpc("close_poll", {"poll_id": poll.poll_id}).status == 401


def test_poll_results_shape_and_cache_header(api, make_poll) -> None:
    poll = make_poll(options=["yes", "no"])
    api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[1]], "voter_fingerprint": fingerprint()})
    r = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert r.status == 200
    assert r.body == {
        "poll_id": poll.poll_id, "question": "Which one?", "total_ballots": 1,
        "options": [{"option_id": poll.option_ids[0], "label": "yes", "votes": 0},
                    {"option_id": poll.option_ids[1], "label": "no", "votes": 1}],
        "closes_at": None, "closed": False,
    }
    assert r.headers.get("Cache-Control") == "public, max-age=1"


def test_poll_results_unknown_poll_is_404(api) -> None:
    assert_error(api.rpc("poll_results", {"poll_id": str(uuid.uuid4())}, method="GET"), 404, "poll_not_found")
