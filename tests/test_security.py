"""Who may do what: API roles reach api functions only, never tables; voters are stored
only as keyed digests. The privileges are read from the catalog (and asserted with pgTAP,
tests/pgtap/); what a client can reach is checked over HTTP."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import psycopg
import pytest

from pgvote.http import ApiClient

from helpers import fingerprint, user

API_ROLES = ["anon", "authenticated", "ingest"]
PGTAP_DIR = Path(__file__).parent / "pgtap"
PRIVATE_SCHEMAS = ["voting", "internal", "rate_limit", "monitoring"]
EXPECTED_EXECUTE = {
    "cast_vote": {"anon", "authenticated"},
    "poll_results": {"anon", "authenticated"},
    "create_poll": {"authenticated"},
    "close_poll": {"authenticated"},
    "cast_votes": {"ingest"},
}


@pytest.mark.parametrize("role", API_ROLES)
def test_api_roles_execute_exactly_the_api_grants(admin, role) -> None:
    rows = admin.execute(
        """select n.nspname, p.proname, has_function_privilege(%s, p.oid, 'EXECUTE')
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname in ('api', 'voting', 'internal')""",
        (role,),
    ).fetchall()
    executable = {(schema, name) for schema, name, ok in rows if ok}
    assert executable == {("api", fn) for fn, roles in EXPECTED_EXECUTE.items() if role in roles}


def test_nothing_of_ours_is_executable_by_public(admin) -> None:
    rows = admin.execute(
        """select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname in ('api', 'voting', 'internal', 'hooks', 'rate_limit', 'monitoring')
             and exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                         where a.grantee = 0 and a.privilege_type = 'EXECUTE')"""
    ).fetchall()
    assert rows == []


def test_security_definer_functions_pin_search_path(admin) -> None:
    rows = admin.execute(
        """select p.oid::regprocedure::text, p.proconfig from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace
           where n.nspname in ('api', 'internal', 'hooks', 'shard') and p.prosecdef"""
    ).fetchall()
    assert rows, "the api functions are SECURITY DEFINER"
    for name, config in rows:
        assert config and "search_path=pg_catalog, pg_temp" in config, name


@pytest.mark.parametrize("role", API_ROLES)
def test_api_role_session_cannot_read_or_write_ballots(stack, role) -> None:
    with psycopg.connect(stack.direct_api_url, autocommit=True) as conn:
        for statement in ("select * from voting.ballots", "insert into voting.polls default values",
                          "select * from internal.voter_key_secret", "select internal.voter_key('sub:x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with conn.transaction():
                    conn.execute("select set_config('role', %s, true)", (role,))
                    conn.execute(statement)


def test_fingerprints_and_subs_are_not_stored_in_clear(api, make_poll, admin) -> None:
    poll = make_poll()
    fp, voter = fingerprint(), user()
    api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_fingerprint": fp})
    api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]]}, claims=voter)
    dump = "".join(
        admin.execute(f"select coalesce(string_agg(t::text, ''), '') from {table} t").fetchone()[0]
        for table in ("voting.polls", "voting.poll_options", "voting.ballots"))
    for secret in (fp, voter["sub"], poll.creator["sub"]):
        assert secret not in dump
        assert secret.encode().hex() not in dump


def test_voter_key_is_hmac_sha256_of_the_domain_separated_identity(api, make_poll, admin) -> None:
    poll = make_poll()
    fp = fingerprint()
    api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_fingerprint": fp})
    stored = admin.execute("select voter_key from voting.ballots where poll_id = %s", (poll.poll_id,)).fetchone()[0]
    inner_pad = admin.execute("select inner_pad from internal.voter_key_secret").fetchone()[0]
    secret = bytes(b ^ 0x36 for b in inner_pad)[:32]  # the key is 32 bytes, zero-padded to 64
    assert bytes(stored) == hmac.new(secret, f"fp:{fp}".encode(), hashlib.sha256).digest()


@pytest.mark.parametrize("role", API_ROLES)
def test_api_roles_execute_only_the_pre_request_hook_outside_api(admin, role) -> None:
    """PostgREST runs db-pre-request as the request's role: EXECUTE on hooks.pre_request, USAGE on hooks,
    and nothing else of the rate limiter or the monitoring schema."""
    rows = admin.execute(
        """select n.nspname || '.' || p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname in ('hooks', 'rate_limit', 'monitoring') and has_function_privilege(%s, p.oid, 'EXECUTE')""",
        (role,),
    ).fetchall()
    assert [r[0] for r in rows] == ["hooks.pre_request"]
    assert admin.execute("select has_schema_privilege(%s, 'hooks', 'USAGE')", (role,)).fetchone()[0]
    assert not admin.execute("select has_schema_privilege(%s, 'hooks', 'CREATE')", (role,)).fetchone()[0]


def test_ops_reads_monitoring_and_nothing_private(admin) -> None:
    views = [r[0] for r in admin.execute(
        "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'monitoring' and c.relkind = 'v'").fetchall()]
    assert len(views) >= 7
    assert all(admin.execute("select has_table_privilege('ops', %s, 'SELECT')", (v,)).fetchone()[0] for v in views)
    for schema in ("voting", "internal", "rate_limit", "hooks", "api"):
        assert not admin.execute("select has_schema_privilege('ops', %s, 'USAGE')", (schema,)).fetchone()[0], schema
    assert admin.execute("select pg_has_role('ops', 'pg_monitor', 'MEMBER')").fetchone()[0]
    assert not admin.execute("select rolcanlogin from pg_roles where rolname = 'ops'").fetchone()[0]


# ---- authenticator and the request roles themselves ----------------------------------
def _project_schemas(admin: psycopg.Connection) -> list[str]:
    wanted = ["api", "hooks", *PRIVATE_SCHEMAS]
    return [r[0] for r in admin.execute("select nspname from pg_namespace where nspname = any(%s)", (wanted,))]


def test_authenticator_executes_nothing_of_ours_itself(admin) -> None:
    """NOINHERIT: the login role holds no privilege until PostgREST switches to a request role."""
    schemas = _project_schemas(admin)
    rows = admin.execute(
        """select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s) and has_function_privilege('authenticator', p.oid, 'EXECUTE')""",
        (schemas,),
    ).fetchall()
    assert rows == []
    for schema in schemas:
        assert not admin.execute("select has_schema_privilege('authenticator', %s, 'USAGE')", (schema,)).fetchone()[0]


def test_authenticator_can_become_only_the_request_roles(admin) -> None:
    attributes = admin.execute(
        """select rolinherit, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
           from pg_roles where rolname = 'authenticator'""").fetchone()
    assert attributes == (False, True, False, False, False, False, False)
    reachable = {r[0] for r in admin.execute(
        "select rolname from pg_roles where pg_has_role('authenticator', oid, 'MEMBER')").fetchall()}
    assert reachable == {"authenticator", *API_ROLES}, "SET ROLE reaches the request roles and nothing else"


@pytest.mark.parametrize("role", API_ROLES)
def test_request_roles_cannot_log_in_or_reach_another_role(admin, role) -> None:
    attributes = admin.execute(
        """select rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
           from pg_roles where rolname = %s""", (role,)).fetchone()
    assert attributes == (False, False, False, False, False, False)
    reachable = {r[0] for r in admin.execute(
        "select rolname from pg_roles where pg_has_role(%s, oid, 'MEMBER')", (role,)).fetchall()}
    assert reachable == {role}


@pytest.mark.parametrize("role", API_ROLES + ["authenticator"])
def test_api_roles_may_create_nothing(admin, role) -> None:
    for schema in [*_project_schemas(admin), "public"]:
        assert not admin.execute("select has_schema_privilege(%s, %s, 'CREATE')", (role, schema)).fetchone()[0], schema
    assert not admin.execute("select has_database_privilege(%s, current_database(), 'CREATE')", (role,)).fetchone()[0]


def test_every_api_function_is_security_definer_with_a_pinned_search_path(admin) -> None:
    rows = admin.execute(
        """select p.oid::regprocedure::text, p.prosecdef, p.proconfig from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'api'""").fetchall()
    assert {r[0].split("(")[0] for r in rows} >= {f"api.{fn}" for fn in EXPECTED_EXECUTE}
    for name, secdef, config in rows:
        assert secdef and config and "search_path=pg_catalog, pg_temp" in config, name


# ---- the same invariants as pgTAP assertions, and what a client reaches over HTTP -------------------
def run_pgtap(admin_url: str, script: Path) -> list[str]:
    """The TAP lines of a tests/pgtap script, run in one transaction that is rolled back (the pgtap
    extension is created inside it, so nothing remains)."""
    with psycopg.connect(admin_url) as conn:
        try:
            installed = conn.execute("select 1 from pg_available_extensions where name = 'pgtap'").fetchone()
            assert installed, "pgTAP is missing: scripts/install-deps installs postgresql-<major>-pgtap"
            conn.execute("create extension pgtap")
            cursor = conn.cursor()
            cursor.execute(script.read_text())
            tap: list[str] = []
            while True:
                if cursor.description:
                    tap += [row[0] for row in cursor.fetchall()]
                if not cursor.nextset():
                    break
        finally:
            conn.rollback()
    return tap


def test_privileges_hold_as_pgtap_asserts_them(admin_url) -> None:
    """tests/pgtap/privileges.sql: schema, function and table privileges of every role (partitions and
    views included)."""
    tap = run_pgtap(admin_url, PGTAP_DIR / "privileges.sql")
    failures = [line for line in tap if not line.startswith(("ok ", "1.."))]  # "not ok" and its diagnostics
    assert failures == [], "\n".join(failures)
    assert sum(line.startswith("ok ") for line in tap) >= 100, "the script asserted what it should"
    assert any("table voting.ballots_m" in line for line in tap), "partitions are checked too"


def _role_client(api: ApiClient, role: str) -> dict[str, str]:
    claims = {"anon": None, "authenticated": user(), "ingest": {"role": "ingest"}}[role]
    return {"Authorization": f"Bearer {api.token(claims)}"} if claims else {}


@pytest.mark.parametrize("role", API_ROLES)
def test_openapi_shows_each_role_exactly_its_functions_and_no_table(api, role) -> None:
    """openapi-mode follow-privileges: PostgREST's schema document is what the role can reach."""
    r = api.request("GET", "/", None, {"Accept": "application/openapi+json", **_role_client(api, role)})
    assert r.status == 200
    expected = {"/"} | {f"/rpc/{fn}" for fn, roles in EXPECTED_EXECUTE.items() if role in roles}
    assert set(r.body["paths"]) == expected
    assert not r.body.get("definitions"), "no table or view is exposed"


@pytest.mark.parametrize("schema", PRIVATE_SCHEMAS + ["hooks"])
def test_private_schemas_are_unreachable_over_http(api, schema) -> None:
    for method, path, profile in (("GET", "/ballots", "Accept-Profile"), ("POST", "/rpc/voter_key", "Content-Profile")):
        r = api.request(method, path, b"{}" if method == "POST" else None,
                        {profile: schema, "Content-Type": "application/json", **_role_client(api, "authenticated")})
        assert r.status == 406 and r.body["code"] == "PGRST106", (schema, method, r.body)
    unexposed = api.request("GET", "/ballots")
    assert (unexposed.status, unexposed.body["code"]) == (404, "42P01"), "tables are not in the exposed schema"
