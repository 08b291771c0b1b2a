"""The ten PostgREST contract tests of the design docs, against pgvote's API behind the real PostgREST.

Every API call goes over HTTP (nginx -> PostgREST 12.0.2 -> PgBouncer -> PostgreSQL); the catalog and
source checks read the database and procedures/ directly. The HTTP answers PostgREST itself gives (wrong
JSON types, JWT failures, the full error table, body limits, headers) are in tests/test_http_contract.py.
"""
from __future__ import annotations

import json
import re

import psycopg
import pytest
from test_cast_vote import assert_error

from pgvote.paths import PROCEDURES_DIR
from pgvote.stack import LocalStack, read_postgrest_conf

from helpers import fingerprint, stored_ballots, table_snapshot, user

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
    for fn, body in (("create_poll", {"question": "q", "options": ["a", "b"]}), ("close_poll", {"poll_id": poll.poll_id})):
        r = api.rpc(fn, body)
        assert r.status == 401 and r.body["code"] == "42501", (fn, r.body)
        assert r.headers["WWW-Authenticate"] == "Bearer", "PostgREST asks an anonymous caller to sign in"


# 3. JWT path (the failures, signature to ungranted role, are in test_http_contract.py)
def test_jwt_role_comes_from_the_claim_and_sub_is_the_voter(api, make_poll, admin) -> None:
    poll = make_poll(allow_revote=False)
    voter = user()
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]],
                              "voter_fingerprint": fingerprint()}, claims=voter)
    assert r.status == 200
    key = admin.execute("select voter_key from voting.ballots where poll_id = %s", (poll.poll_id,)).fetchone()[0]
    expected = admin.execute("select internal.voter_key('sub:' || %s)", (voter["sub"],)).fetchone()[0]
    assert key == expected, "the sub is the voter; a fingerprint in the body is ignored"


# 4. Happy path shape
def test_happy_path_body_and_response_gucs_parse(api, make_poll) -> None:
    poll = make_poll()
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=user())
    assert r.status == 200 and set(r.body) == {"poll_id", "option_ids", "status"}
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    results = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert results.status == 200, "response.headers must be an array of single-key string objects"
    assert results.headers["Cache-Control"] == "public, max-age=1"


# 5. Re-cast
@pytest.mark.parametrize("allow_revote", [True, False])
def test_recast_unchanged_then_changed_or_409(api, make_poll, admin, allow_revote) -> None:
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


# 6. Custom errors (each code over HTTP, with its status: test_http_contract.py)
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
def test_pre_request_hook_is_configured_private_and_executable(admin) -> None:
    """db-pre-request of api/postgrest.conf lives in a schema PostgREST does not expose, and the API
    roles may execute it (PostgREST calls it as the request's role)."""
    conf = read_postgrest_conf()
    schema, name = conf["db-pre-request"].split(".")
    assert (schema, name) == ("hooks", "pre_request")
    assert schema not in [s.strip() for s in conf["db-schemas"].split(",")], "the hook must be no /rpc endpoint"
    for role in ("anon", "authenticated", "ingest"):
        assert admin.execute("select has_function_privilege(%s, 'hooks.pre_request()', 'EXECUTE')", (role,)).fetchone()[0]


def test_pre_request_hook_is_no_endpoint(api) -> None:
    assert_error(api.rpc("pre_request", {}), 404, "PGRST202")
    r = api.rpc("pre_request", {}, headers={"Content-Profile": "hooks"})
    assert r.status == 406 and r.body["code"] == "PGRST106", "schema hooks is not exposed"


def test_pre_request_hook_limits_writes_and_lets_reads_through(api, admin, make_poll) -> None:
    """Over HTTP: a caller's burst of writes passes, the next is 429 with Retry-After; the hook is
    harmless in READ ONLY transactions (GET, POST to a STABLE function): the same exhausted caller still
    reads results (no 429, and no 25006 -> 405 from a write in a read-only transaction), and a volatile
    function called by GET is refused by PostgreSQL's read-only transaction, not by the hook."""
    burst = admin.execute("select burst from rate_limit.limits where name = 'request'").fetchone()[0]
    poll, voter = make_poll(), user()
    body = {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}
    statuses = [api.rpc("cast_vote", body, claims=voter).status for _ in range(burst)]
    assert statuses == [200] * burst
    limited = api.rpc("cast_vote", body, claims=voter)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    for method in ("GET", "POST"):
        r = api.rpc("poll_results", {"poll_id": poll.poll_id}, method=method, claims=voter)
        assert r.status == 200 and r.body["total_ballots"] == 1, (method, r.status, r.body)
    assert_error(api.rpc("cast_vote", body, claims=voter, method="GET"), 405, "25006")


# 9. No GUC leakage
def test_no_guc_leaks_into_the_next_transaction_through_pgbouncer(stack: LocalStack, admin, api, make_poll) -> None:
    """PostgREST sets role and request.* with set_config(..., true), so within its own connection no
    request sees another's settings; its pool is PgBouncer's session-mode alias pgvote_session, whose
    server connections PgBouncer resets (server_reset_query = DISCARD ALL) before handing them to the
    next client. Both halves: real requests ran on that pool, and a server connection given back with
    session-level state (a setting, a role, a prepared statement) reaches the next client clean."""
    poll = make_poll()
    requests_started = admin.execute("select clock_timestamp()").fetchone()[0]
    api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET", claims=user())
    api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=user())
    served = {r[0] for r in admin.execute(
        """select pid from pg_stat_activity
           where usename = 'authenticator' and backend_type = 'client backend' and state_change >= %s""",
        (requests_started,))}
    with psycopg.connect(stack.bouncer_admin_url, autocommit=True) as console:
        cur = console.cursor(binary=False)
        cur.execute("SHOW SERVERS", prepare=False)
        columns = [d.name for d in cur.description]
        session_pids = {int(row[columns.index("remote_pid")]) for row in cur.fetchall()
                        if row[columns.index("database")] == "pgvote_session"}
    assert served and served <= session_pids, "PostgREST's requests ran on the session pool"

    session_url = stack.api_url.rsplit("/", 1)[0] + "/pgvote_session"
    with psycopg.connect(session_url, autocommit=True) as dirty:
        pid = dirty.execute("select pg_backend_pid()").fetchone()[0]
        dirty.execute("select set_config('request.jwt.claims', '{\"role\": \"leak\"}', false), "
                      "set_config('role', 'anon', false)")
        dirty.execute("prepare leaked as select 1")
    for _ in range(20):  # PgBouncer hands the most recently released server connection out first
        with psycopg.connect(session_url, autocommit=True) as clean:
            row = clean.execute(
                """select pg_backend_pid(), current_user::text, current_setting('role'),
                          coalesce(current_setting('request.jwt.claims', true), ''),
                          (select count(*) from pg_prepared_statements)""").fetchone()
        if row[0] == pid:
            break
    assert row == (pid, "authenticator", "none", "", 0)


def test_procedures_set_nothing_at_session_level() -> None:
    """Every routine a pooled client can reach. The partition manager's (partman.*) are left out on
    purpose: only the database owner may run them, over its own direct connection, and a split's
    application_name must outlive the transactions its procedure commits (status names the holder)."""
    sources = "\n".join(p.read_text() for p in sorted(PROCEDURES_DIR.glob("*.sql")) if not p.name.startswith("partman."))
    assert not re.search(r"set_config\s*\([^;]*,\s*false\s*\)", sources, re.I)
    assert not re.search(r"\b(set\s+session|set\s+role|reset\s+\w+)", sources, re.I), "session state leaks across PgBouncer clients"


# 10. Status hygiene (the concurrency half is in test_concurrency.py)
def test_no_code_path_can_answer_503() -> None:
    sources = procedure_sources()
    assert not re.search(r"sqlstate\s+'(08|53|57P01|PT503)", sources, re.I)
    assert "503" not in sources
