"""The ten PostgREST contract tests of postgrest-contract.md, against pgvote's API."""
from __future__ import annotations

import json
import re
import uuid

import psycopg
import pytest

from helpers import fingerprint, stored_ballots, table_snapshot, user
from pgvote.paths import PROCEDURES_DIR
from pgvote.postgrest_emulation import PostgrestEmulator, connect_emulator
from test_cast_vote import assert_error

API_CODES = ["invalid_ballot", "invalid_fingerprint", "invalid_poll", "login_required", "not_poll_creator",
             "poll_not_found", "already_voted", "poll_closed", "rate_limited"]


def procedure_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(PROCEDURES_DIR.glob("*.sql")))


# 1. Signature
def test_signatures_match_json_keys_and_volatility(admin) -> None:
    rows = admin.execute(
        """select p.proname, p.prokind, p.provolatile, p.proargnames, p.prosecdef
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'api' order by p.proname"""
    ).fetchall()
    by_name = {r[0]: r[1:] for r in rows}
    assert [r[0] for r in rows].count("cast_vote") == 1
    assert by_name["cast_vote"] == ("f", "v", ["poll_id", "option_ids", "voter_fingerprint", "ballot_id"], True)
    assert by_name["create_poll"][2] == ["question", "options", "max_choices", "allow_revote",
                                         "allow_multiple_votes", "allow_anonymous", "closes_at"]
    assert by_name["poll_results"][:3] == ("f", "s", ["poll_id"]), "read-only so GET works"
    assert by_name["close_poll"][:3] == ("f", "v", ["poll_id"])


# 2. Anon path
def test_anon_casts_on_anonymous_poll_and_gets_401_for_creator_functions(api, make_poll) -> None:
    poll = make_poll()
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]],
                                 "voter_fingerprint": fingerprint()}).status == 200
    r = api.rpc("create_poll", {"question": "q", "options": ["a", "b"]})
    assert r.status == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer")


# 3. JWT path
@pytest.fixture(scope="module")
def ungranted_role(stack) -> str:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute("""do $$ begin
                          if not exists (select from pg_roles where rolname = 'pgvote_test_ungranted') then
                            create role pgvote_test_ungranted nologin;
                          end if; end $$""")
    return "pgvote_test_ungranted"


def test_jwt_role_comes_from_the_claim_and_sub_is_the_voter(api, make_poll, admin) -> None:
    poll = make_poll(allow_revote=False)
    voter = user()
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=voter).status == 200
    key = admin.execute("select voter_key from voting.ballots where poll_id = %s", (poll.poll_id,)).fetchone()[0]
    expected = admin.execute("select internal.voter_key('sub:' || %s)", (voter["sub"],)).fetchone()[0]
    assert key == expected


def test_jwt_role_not_granted_to_authenticator_is_403(api, make_poll, ungranted_role) -> None:
    poll = make_poll()
    r = api.rpc("poll_results", {"poll_id": poll.poll_id}, claims={"role": ungranted_role, "sub": "x"})
    assert r.status == 403 and r.body["code"] == "42501"


def test_jwt_role_that_does_not_exist_is_401(api, make_poll) -> None:
    poll = make_poll()
    r = api.rpc("poll_results", {"poll_id": poll.poll_id}, claims={"role": "no_such_role_anywhere", "sub": "x"})
    assert r.status == 401 and r.body["code"] == "22023"


# 4. Happy path shape
def test_happy_path_body_and_response_gucs_parse(api, make_poll) -> None:
    poll = make_poll()
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=user())
    assert r.status == 200 and set(r.body) == {"poll_id", "option_ids", "status"}
    assert r.headers["Content-Type"].startswith("application/json")
    results = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert results.status == 200, "response.headers must be an array of single-key string objects"
    assert results.headers["Cache-Control"] == "public, max-age=1"


# 5. Re-cast
def test_recast_unchanged_then_changed_or_409(api, make_poll, admin) -> None:
    for allow_revote in (True, False):
        poll = make_poll(allow_revote=allow_revote)
        voter = user()
        api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=voter)
        before = table_snapshot(admin)
        same = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=voter)
        assert same.status == 200 and same.body["status"] == "unchanged"
        assert table_snapshot(admin) == before
        other = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[1]]}, claims=voter)
        if allow_revote:
            assert other.status == 200 and other.body["status"] == "changed"
        else:
            assert_error(other, 409, "already_voted")
            assert table_snapshot(admin) == before
        assert stored_ballots(admin, poll.poll_id) == 1


# 6. Custom errors
@pytest.mark.parametrize("code", API_CODES)
def test_every_api_error_raises_parseable_pgrst_json(admin, code) -> None:
    with pytest.raises(psycopg.Error) as caught:
        admin.execute("select internal.raise_api_error(%s, 'msg', '{\"Retry-After\": \"1\"}')", (code,))
    diag = caught.value.diag
    assert diag.sqlstate == "PGRST"
    message, detail = json.loads(diag.message_primary), json.loads(diag.message_detail)
    assert message == {"code": code, "message": "msg"}
    assert isinstance(detail["status"], int) and 400 <= detail["status"] < 500
    assert detail["headers"] == {"Retry-After": "1"}


def test_pgrst_is_raised_only_through_raise_api_error_and_pt_codes_are_numeric() -> None:
    sources = procedure_sources()
    assert len(re.findall(r"raise\s+sqlstate\s+'PGRST'", sources, re.I)) == 1
    assert all(re.fullmatch(r"PT\d{3}", c) for c in re.findall(r"sqlstate\s+'(PT\w*)'", sources, re.I))


# 7. Pre-request hook
def test_pre_request_hook(stack, admin, make_poll) -> None:
    """db-pre-request of api/postgrest.conf: in a schema PostgREST does not expose, executable by the
    API roles, the N+1-th call of a caller within the window is 429 with Retry-After, and it is
    harmless in a READ ONLY transaction (GET, STABLE functions: no 25006 -> 405)."""
    from pgvote.paths import PROJECT_ROOT

    conf = (PROJECT_ROOT / "api" / "postgrest.conf").read_text()
    hook = re.search(r'^db-pre-request\s*=\s*"([^"]+)"', conf, re.M).group(1)
    exposed = re.search(r'^db-schemas\s*=\s*"([^"]+)"', conf, re.M).group(1)
    schema, name = hook.split(".")
    assert (schema, name) == ("hooks", "pre_request")
    assert schema not in [s.strip() for s in exposed.split(",")], "the hook must be no /rpc endpoint"
    for role in ("anon", "authenticated", "ingest"):
        assert admin.execute("select has_function_privilege(%s, %s, 'EXECUTE')", (role, f"{hook}()")).fetchone()[0]
    burst = admin.execute("select burst from rate_limit.limits where name = 'request'").fetchone()[0]

    api = connect_emulator(stack.api_url, pre_request=hook)
    try:
        assert api.rpc("pre_request", {}).status == 404, "not callable over HTTP"
        poll, voter = make_poll(), user()
        body = {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}
        statuses = [api.rpc("cast_vote", body, claims=voter).status for _ in range(burst)]
        assert statuses == [200] * burst
        limited = api.rpc("cast_vote", body, claims=voter)
        assert limited.status == 429 and limited.body["code"] == "rate_limited"
        assert limited.headers["Retry-After"].isdigit() and int(limited.headers["Retry-After"]) >= 1
        for method in ("GET", "POST"):  # READ ONLY: GET, and POST to the STABLE poll_results
            r = api.rpc("poll_results", {"poll_id": poll.poll_id}, method=method, claims=voter)
            assert r.status == 200, (method, r.status, r.body)
    finally:
        api.conn.close()


# 8. Type coercion
def test_type_errors_are_400_and_unknown_ids_are_404_never_500(api, make_poll) -> None:
    poll, other = make_poll(), make_poll()
    assert api.rpc("cast_vote", {"poll_id": "x", "option_ids": [poll.option_ids[0]]}).status == 400
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": ["x"]}).status == 400
    assert_error(api.rpc("cast_vote", {"poll_id": str(uuid.uuid4()), "option_ids": [poll.option_ids[0]]}),
                 404, "poll_not_found")
    assert_error(api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [other.option_ids[0]]}, claims=user()),
                 400, "invalid_ballot")


# 9. No GUC leakage
@pytest.mark.parametrize("path", ["pgbouncer", "direct"])
def test_no_guc_leaks_into_the_next_transaction(stack, make_poll, path) -> None:
    poll = make_poll()
    url = stack.api_url if path == "pgbouncer" else stack.direct_api_url
    api = connect_emulator(url)
    try:
        api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
        api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=user())
        row = api.conn.execute(
            """select current_user::text, coalesce(current_setting('request.jwt.claims', true), ''),
                      coalesce(current_setting('response.status', true), ''),
                      coalesce(current_setting('response.headers', true), '')"""
        ).fetchone()
    finally:
        api.conn.close()
    assert row == ("authenticator", "", "", "")


def test_procedures_set_nothing_at_session_level() -> None:
    sources = procedure_sources()
    assert not re.search(r"set_config\s*\([^;]*,\s*false\s*\)", sources, re.I)
    assert not re.search(r"\b(set\s+session|set\s+role|reset\s+\w+)", sources, re.I), "session state leaks across PgBouncer clients"


# 10. Status hygiene (the concurrency half is in test_concurrency.py)
def test_no_code_path_can_answer_503() -> None:
    sources = procedure_sources()
    assert not re.search(r"sqlstate\s+'(08|53|57P01|PT503)", sources, re.I)
    assert "503" not in sources
