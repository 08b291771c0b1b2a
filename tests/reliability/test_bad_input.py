"""Bad input over real HTTP (nginx -> PostgREST 12 -> PgBouncer -> PostgreSQL), two ways.

Property tests (hypothesis) over the bodies and JWT claims of every api function: wrong types, nulls,
huge and empty arrays, NUL bytes, lone surrogates, invalid UTF-8, huge strings, unknown and missing keys,
numeric edges, ids of other polls, malformed and expired claims (signed into real tokens: PostgREST does
the JWT checks). Every answer is a 200 or a 4xx with a stable code in the API's error shape (the same
again on a repeat; an api code carries the status of the error table), never a 5xx; a rejected call
writes nothing (no table of voting, internal or rate_limit changes), and a 200 writes exactly what it
reports. Bodies holding lone surrogates are sent as JSON escapes ("\\ud800"), the only way such text can
be written in JSON; raw invalid UTF-8 is sent once as bytes, and once straight to PostgreSQL.

schemathesis, driven by PostgREST's own OpenAPI document as each role sees it (anon, a signed-in user,
ingest), with the world's real poll and option ids written into that document so generated calls get
past 404: never a 5xx, and every answer conforms to the document's response schemas.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from pgvote.http import ApiClient, Response, random_loopback_address

from .profile import PROFILE

API_STATUS = {"invalid_ballot": 400, "invalid_fingerprint": 400, "invalid_poll": 400, "login_required": 401,
              "not_poll_creator": 403, "poll_not_found": 404, "already_voted": 409, "poll_closed": 410,
              "rate_limited": 429}
# nginx answers these itself, in the API's error shape (deploy/nginx/pgvote.conf.template)
NGINX_STATUS = {"bad_request": 400, "headers_too_large": 400, "not_found": 404, "method_not_allowed": 405,
                "body_too_large": 413, "uri_too_long": 414}
STABLE_CODE = re.compile(r"[0-9A-Z]{5}|PGRST\d{3}|" + "|".join({**API_STATUS, **NGINX_STATUS}))
MAX_BODY = 64_000_000  # bytes: the strategies stay far below (a guard against runaway generators)
FUZZED = {"create_poll", "cast_vote", "cast_votes", "poll_results", "close_poll"}
FUZZ = settings(max_examples=PROFILE.fuzz_examples, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
OUTCOMES: Counter[tuple[str, int, str]] = Counter()


# ---- the world the generated requests aim at ------------------------------------------------------------

@dataclass(frozen=True)
class World:
    creator: dict[str, Any]
    polls: dict[str, dict[str, Any]]  # open / members / multiple / closed -> {"poll_id", "option_ids"}

    @property
    def poll_ids(self) -> list[str]:
        return [p["poll_id"] for p in self.polls.values()]

    @property
    def option_ids(self) -> list[str]:
        return [o for p in self.polls.values() for o in p["option_ids"]]


def _make_world(api: ApiClient) -> World:
    creator = {"role": "authenticated", "sub": f"fuzz-creator-{uuid.uuid4()}"}
    specs = {
        "open": {"options": ["a", "b", "c"], "max_choices": 2},
        "members": {"options": ["a", "b"], "allow_anonymous": False, "allow_revote": False},
        "multiple": {"options": ["a", "b", "c", "d"], "allow_multiple_votes": True, "max_choices": 3},
        "closed": {"options": ["a", "b"]},
    }
    polls = {}
    for name, spec in specs.items():
        r = api.rpc("create_poll", {"question": f"fuzz {name}", **spec}, claims=creator)
        assert r.status == 200, r.body
        polls[name] = r.body
    assert api.rpc("close_poll", {"poll_id": polls["closed"]["poll_id"]}, claims=creator).status == 200
    return World(creator, polls)


@pytest.fixture(scope="module")
def fuzz_admin(stack) -> Iterator[psycopg.Connection]:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def world(api) -> World:
    return _make_world(api)


@pytest.fixture(scope="module")
def close_world(api) -> World:
    return _make_world(api)  # close_poll may close these; the other properties keep their open polls


@pytest.fixture(scope="module", autouse=True)
def _outcome_figures(figures) -> Iterator[None]:
    yield
    figures["bad_input"] = {"requests": sum(OUTCOMES.values()),
                            "answers": {f"{fn} {status} {code}": n for (fn, status, code), n in
                                        sorted(OUTCOMES.items())}}


# Tables whose rows background jobs rewrite without changing what they mean (pg_cron, db/schedules.sql):
# tally slots are compacted (compared as per-option sums), full rate-limit buckets are purged (a purged
# bucket and a full one are the same: compared as "no bucket added or changed").
LOGICAL = {("voting", "tally_slots"), ("rate_limit", "buckets")}


@dataclass(frozen=True)
class State:
    tables: tuple[Any, ...]
    buckets: frozenset[tuple[bytes, str]]

    def unchanged_since(self, before: State) -> bool:
        return self.tables == before.tables and self.buckets <= before.buckets


@pytest.fixture(scope="module")
def snapshot_sql(fuzz_admin) -> sql.Composed:
    """One query: row count and digest of every table of voting, internal and rate_limit (the rows of the
    world's polls for tables keyed by poll; tally slots as per-option sums)."""
    tables = fuzz_admin.execute(
        """select n.nspname, c.relname,
                  exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'poll_id')
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname in ('voting', 'internal', 'rate_limit') and c.relkind in ('r', 'p')
             and not c.relispartition order by 1, 2""").fetchall()
    assert any(t[:2] == ("voting", "ballots") for t in tables)
    parts = []
    for schema, table, by_poll in tables:
        ident = sql.Identifier(schema, table)
        where = sql.SQL("where t.poll_id = any(%(ids)s::uuid[])") if by_poll else sql.SQL("")
        if (schema, table) not in LOGICAL:
            parts.append(sql.SQL("(select count(*) from {})").format(ident))
            parts.append(sql.SQL("(select md5(coalesce(string_agg(t::text, ',' order by t::text), '')) from {} t {})")
                         .format(ident, where))
    if any(t[:2] == ("voting", "tally_slots") for t in tables):
        parts.append(sql.SQL(
            """(select md5(coalesce(string_agg(concat_ws(':', q.poll_id, q.pos, q.n), ',' order by q.poll_id, q.pos), ''))
                from (select t.poll_id, 0 as pos, sum(t.ballots) as n from voting.tally_slots t
                      where t.poll_id = any(%(ids)s::uuid[]) group by t.poll_id
                      union all
                      select t.poll_id, v.pos, sum(v.n) from voting.tally_slots t,
                             unnest(t.votes) with ordinality as v(n, pos)
                      where t.poll_id = any(%(ids)s::uuid[]) group by t.poll_id, v.pos) q)"""))
    return sql.SQL("select ") + sql.SQL(", ").join(parts)


def _snapshot(admin: psycopg.Connection, query: sql.Composed, world: World) -> State:
    tables = admin.execute(query, {"ids": world.poll_ids}).fetchone()
    buckets = frozenset()
    if admin.execute("select to_regclass('rate_limit.buckets') is not null").fetchone()[0]:
        buckets = frozenset((bytes(k), d) for k, d in admin.execute(
            "select limit_name::bytea || bucket_key, md5(t::text) from rate_limit.buckets t").fetchall())
    return State(tuple(tables), buckets)


def _counts(admin: psycopg.Connection) -> tuple[int, int, int]:
    return admin.execute("""select (select count(*) from voting.polls), (select count(*) from voting.poll_options),
                                   (select count(*) from voting.ballots)""").fetchone()


# ---- strategies --------------------------------------------------------------------------------------------

SPECIAL_TEXT = ["", " ", "\x00", "a\x00b", "\u0000" * 3, "\ud800", "a\udfff", "\udfff\udbff", "\x1b[31m",
                "\x7f", "\u202e", "\ufeff", "null", "NULL", "true", "{}", "[]", "{a,b}", '"', "\\",
                "'; drop table voting.ballots; --", "😀" * 300, "x" * 256, "x" * 257, "é" * 200, "é" * 201,
                "infinity", "-infinity", "epoch", "now", "1e309", "NaN"]
NUMBERS = [0, -1, 1, 2, 3, 100, 101, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**100, 0.5, -0.0,
           1e308, float("inf"), float("nan")]

lone_surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
texts = st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_TEXT), lone_surrogates,
                  st.sampled_from([10_000, 300_000]).map(lambda n: "x" * n))
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(texts, inner, max_size=4)),
                           max_leaves=12)
UUID_FORMS = ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "{12345678-1234-1234-1234-123456789abc}",
              "12345678123412341234123456789ABC", "12345678-1234-1234-1234-123456789abc ",
              "ffffffff-ffff-ffff-ffff-ffffffffffff"]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights (hypothesis merges identical branches of one_of, so repeating one does not)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def ids(world: World) -> st.SearchStrategy[Any]:
    """Real poll and option ids (of every poll: ids of other polls), random and malformed uuids."""
    return st.one_of(st.sampled_from(world.poll_ids + world.option_ids), st.uuids().map(str),
                     st.sampled_from(UUID_FORMS))


def id_lists(world: World) -> st.SearchStrategy[Any]:
    one = ids(world)
    return st.one_of(
        st.lists(one, max_size=6),
        st.lists(st.one_of(one, st.none()), max_size=4),
        st.lists(st.lists(one, max_size=3), max_size=3),  # nested, ragged
        st.tuples(st.sampled_from([1000, 100_000]), one).map(lambda t: [t[1]] * t[0]),  # huge arrays
        st.sampled_from([[], None, "{}", "not a list"]),
    )


def body(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
         ) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies with the function's keys (mostly well-typed, else wild); sometimes an unknown or a missing key."""
    known = {k: weighted((3, s), (1, json_values)) for k, s in {**required, **optional}.items()}
    unknown = {k: json_values for k in ("sub", "role", "voter_key", "", "poll_id ", "Poll_Id")}
    full = st.fixed_dictionaries({k: known[k] for k in required}, optional={k: known[k] for k in optional})
    with_unknown = st.fixed_dictionaries({k: known[k] for k in required},
                                         optional={**{k: known[k] for k in optional}, **unknown})
    partial = st.fixed_dictionaries({}, optional={**known, **unknown})
    return weighted((8, full), (1, with_unknown), (1, partial))


def claims(world: World, role: str = "authenticated") -> st.SearchStrategy[dict[str, Any] | None]:
    """Mostly plausible callers (anonymous, the creator, a voter), sometimes wild or expired claims."""
    roles = st.one_of(st.sampled_from(["anon", "authenticated", "authenticated", "ingest", "authenticator",
                                       "postgres", "pg_read_all_data", "none", "", "no_such_role"]), json_values)
    subs = st.one_of(st.just(world.creator["sub"]), st.text(min_size=1, max_size=20), texts, json_values)
    now = int(time.time())
    times = weighted((3, st.sampled_from([now + 3600, now - 3600, 0, 2**63, -1, now + 10**9])), (1, json_values))
    wild = st.fixed_dictionaries({}, optional={"role": roles, "sub": subs, "exp": times, "nbf": times,
                                               "iat": times, "aud": json_values, "email": json_values})
    plausible = weighted((1, st.none()), (1, st.just(world.creator)),
                         (2, st.just({"role": role, "sub": "fuzz-voter"})),
                         (2, st.builds(lambda s: {"role": role, "sub": s}, subs)),
                         (1, st.builds(lambda t: {**world.creator, "exp": t, "iat": now - 60},
                                       st.one_of(st.just(now + 3600), times))))
    return weighted((4, plausible), (1, wild))


# ---- calling -----------------------------------------------------------------------------------------------

def _has_surrogate(value: Any) -> bool:
    return bool(re.search("[\ud800-\udfff]", json.dumps(value, ensure_ascii=False, default=str)))


def call(api: ApiClient, fn: str, args: dict[str, Any], raw_claims: dict[str, Any] | None,
         method: str = "POST", escape: bool = False) -> Response:
    """One call over HTTP: the claims signed into a bearer token, a POST body as UTF-8 JSON (with \\u escapes
    when asked, or when it holds lone surrogates, which UTF-8 cannot carry), a GET's arguments as the query."""
    size = len(json.dumps(args, default=str))
    assert size < MAX_BODY, f"generator bug: a {size}-byte body (the strategies keep bodies under {MAX_BODY})"
    if method == "GET":
        return api.rpc(fn, args, claims=raw_claims, method="GET")
    escaped = escape or _has_surrogate(args)
    raw = json.dumps(args, ensure_ascii=escaped, separators=(",", ":"), default=str).encode()
    return api.rpc(fn, claims=raw_claims, method=method, raw_body=raw)


@dataclass
class Checker:
    api: ApiClient
    admin: psycopg.Connection
    snapshot_sql: sql.Composed
    world: World

    def __call__(self, fn: str, args: dict[str, Any], raw_claims: dict[str, Any] | None, method: str = "POST",
                 escape: bool = False) -> Response:
        """The property: 200 or a stable 4xx, never a 5xx; a rejected call writes nothing; a 200 writes
        exactly what it reports."""
        before, counts_before = _snapshot(self.admin, self.snapshot_sql, self.world), _counts(self.admin)
        r = call(self.api, fn, args, raw_claims, method, escape)
        code = r.body.get("code") if r.status != 200 and isinstance(r.body, dict) else None
        OUTCOMES[(fn, r.status, str(code))] += 1
        assert r.status < 500, f"{fn} answered {r.status}: {r.body}"
        if r.status == 200:
            delta = tuple(a - b for a, b in zip(_counts(self.admin), counts_before))
            _check_success(fn, args, r, delta)
            return r
        assert 400 <= r.status < 500, (r.status, r.body)
        assert set(r.body) == {"code", "message", "details", "hint"}, r.body
        assert isinstance(code, str) and STABLE_CODE.fullmatch(code), f"unstable code {code!r}: {r.body}"
        if code in API_STATUS or code in NGINX_STATUS:
            assert r.status == {**API_STATUS, **NGINX_STATUS}[code], r.body
        assert _snapshot(self.admin, self.snapshot_sql, self.world).unchanged_since(before), \
            f"rejected {fn} ({r.status} {code}) wrote something"
        if code != "rate_limited":  # a rate limit ends with time: the only answer allowed to change
            again = call(self.api, fn, args, raw_claims, method, escape)
            assert (again.status, again.body.get("code")) == (r.status, code), "the same input, the same answer"
            assert _snapshot(self.admin, self.snapshot_sql, self.world).unchanged_since(before)
        return r


def _check_success(fn: str, args: dict[str, Any], r: Response, delta: tuple[int, ...]) -> None:
    """What a 200 wrote, from the row counts of polls, poll_options and ballots."""
    if fn == "create_poll":
        assert set(r.body) == {"poll_id", "option_ids"}
        assert delta == (1, len(r.body["option_ids"]), 0)
    elif fn == "cast_vote":
        assert r.body["status"] in ("recorded", "changed", "unchanged"), r.body
        assert delta == (0, 0, int(r.body["status"] == "recorded"))
    elif fn == "cast_votes":
        counts = {k: r.body[k] for k in ("recorded", "changed", "unchanged", "rejected")}
        assert sum(counts.values()) == len(r.body["results"]) == len(args["ballots"]), r.body
        assert delta == (0, 0, counts["recorded"])
    elif fn == "poll_results":
        assert delta == (0, 0, 0)
    elif fn == "close_poll":
        assert r.body["closed"] is True and delta == (0, 0, 0)


@pytest.fixture(scope="module")
def check(api, fuzz_admin, snapshot_sql, world) -> Checker:
    return Checker(api, fuzz_admin, snapshot_sql, world)


@pytest.fixture(scope="module")
def check_close(api, fuzz_admin, snapshot_sql, close_world) -> Checker:
    return Checker(api, fuzz_admin, snapshot_sql, close_world)


# ---- the properties, one per api function --------------------------------------------------------------------

def test_every_api_function_has_a_bad_input_property(fuzz_admin) -> None:
    exposed = {r[0] for r in fuzz_admin.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'api'")}
    assert exposed == FUZZED, "a new api function needs its property test here"


@FUZZ
@given(data=st.data(), escape=st.booleans())
def test_create_poll_bad_bodies_get_a_stable_4xx_and_write_nothing(check, world, data, escape) -> None:
    many = st.tuples(st.sampled_from([1, 2, 100, 101, 5000]), st.text(max_size=8))
    labels = st.lists(texts, max_size=6) | many.map(lambda t: [f"{t[1]}{i}" for i in range(t[0])])
    b = data.draw(body({"question": texts, "options": labels},
                       {"max_choices": numbers, "allow_revote": st.booleans(), "allow_multiple_votes": st.booleans(),
                        "allow_anonymous": st.booleans(), "closes_at": st.one_of(st.datetimes().map(str), texts)}))
    check("create_poll", b, data.draw(claims(world)), escape=escape)


@FUZZ
@given(data=st.data(), escape=st.booleans())
def test_cast_vote_bad_bodies_get_a_stable_4xx_and_write_nothing(check, world, data, escape) -> None:
    b = data.draw(body({"poll_id": ids(world), "option_ids": id_lists(world)},
                       {"voter_fingerprint": st.one_of(texts, st.just("fuzz-fp")), "ballot_id": ids(world)}))
    check("cast_vote", b, data.draw(claims(world)), escape=escape)


@FUZZ
@given(data=st.data(), escape=st.booleans())
def test_cast_votes_bad_batches_get_a_stable_4xx_or_per_ballot_rejections(check, world, data, escape) -> None:
    entry = st.one_of(
        st.fixed_dictionaries({"poll_id": ids(world), "option_ids": id_lists(world)},
                              optional={"voter_id": st.one_of(st.text(max_size=20), texts, json_values),
                                        "voter_fingerprint": st.one_of(st.just("fuzz-fp"), texts, json_values),
                                        "ballot_id": ids(world), "sub": json_values}),
        json_values)
    small = st.fixed_dictionaries({"poll_id": ids(world), "option_ids": st.lists(ids(world), max_size=3)},
                                  optional={"voter_id": st.text(max_size=20), "voter_fingerprint": st.just("fuzz-fp")})
    batches = st.one_of(st.lists(entry, max_size=8), st.lists(entry, max_size=8), json_values,
                        st.tuples(st.sampled_from([1000, 1001]), small).map(lambda t: [t[1]] * t[0]))
    b = data.draw(body({"ballots": batches}, {}))
    check("cast_votes", b, data.draw(claims(world, role="ingest")), escape=escape)


@FUZZ
@given(data=st.data(), escape=st.booleans(), method=st.sampled_from(["POST", "GET"]))
def test_poll_results_bad_arguments_get_a_stable_4xx_and_write_nothing(check, world, data, escape,
                                                                       method) -> None:
    if method == "GET":  # a query string carries UTF-8 text: no lone surrogates (NUL is %00)
        clean = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
        b = data.draw(st.fixed_dictionaries({}, optional={"poll_id": st.one_of(ids(world), clean),
                                                          "extra": clean}))
    else:
        b = data.draw(body({"poll_id": ids(world)}, {}))
    r = check("poll_results", b, data.draw(claims(world)), method=method, escape=escape)
    if r.status == 200:
        assert r.body["poll_id"] in world.poll_ids


@FUZZ
@given(data=st.data(), escape=st.booleans())
def test_close_poll_bad_bodies_get_a_stable_4xx_and_write_nothing(check_close, close_world, data,
                                                                  escape) -> None:
    b = data.draw(body({"poll_id": ids(close_world)}, {}))
    check_close("close_poll", b, data.draw(claims(close_world)), escape=escape)


@FUZZ
@given(data=st.data(), fn=st.sampled_from(sorted(FUZZED)))
def test_malformed_and_expired_jwt_claims_get_a_stable_4xx(check, world, data, fn) -> None:
    """Well-formed bodies, wild claims: the identity checks answer, never a 5xx."""
    poll = world.polls["open"]
    bodies = {
        "create_poll": {"question": "claims?", "options": ["a", "b"]},
        "cast_vote": {"poll_id": poll["poll_id"], "option_ids": poll["option_ids"][:1]},
        "cast_votes": {"ballots": [{"poll_id": poll["poll_id"], "option_ids": poll["option_ids"][:1],
                                    "voter_id": "fuzz-batch-voter"}]},
        "poll_results": {"poll_id": poll["poll_id"]},
        "close_poll": {"poll_id": world.polls["closed"]["poll_id"]},
    }
    raw = data.draw(st.one_of(claims(world), claims(world, role="ingest"),
                              st.dictionaries(texts, json_values, max_size=4)))
    check(fn, bodies[fn], raw)


# ---- raw invalid UTF-8 -----------------------------------------------------------------------------------------

INVALID_UTF8 = [b'{"poll_id": "\xff", "option_ids": []}',
                b'{"poll_id": null, "option_ids": [], "voter_fingerprint": "\xc3\x28"}',
                b'{"poll_id": null, "option_ids": [], "voter_fingerprint": "\xed\xa0\x80"}']


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8_body_is_refused_before_the_database(api, fuzz_admin, snapshot_sql, world, raw) -> None:
    """PostgREST's JSON parser refuses a body that is not UTF-8: 400 PGRST102, nothing written."""
    before = _snapshot(fuzz_admin, snapshot_sql, world)
    r = api.rpc("cast_vote", raw_body=raw)
    assert (r.status, r.body["code"]) == (400, "PGRST102"), r.body
    assert _snapshot(fuzz_admin, snapshot_sql, world).unchanged_since(before)


class _RawText:
    def __init__(self, data: bytes) -> None:
        self.data = data


class _RawTextDumper(psycopg.adapt.Dumper):
    oid = psycopg.adapters.types["text"].oid

    def dump(self, obj: _RawText) -> bytes:
        return obj.data


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8_reaching_postgresql_is_refused_before_the_function_runs(stack, fuzz_admin, snapshot_sql,
                                                                              world, raw) -> None:
    """Were such bytes passed on, PostgreSQL refuses them (22021, a 400 in PostgREST's table) before
    cast_vote runs: the body as PostgREST sends it (one text parameter read by json_to_record), as anon."""
    before = _snapshot(fuzz_admin, snapshot_sql, world)
    with psycopg.connect(stack.api_url, autocommit=True) as conn:
        conn.adapters.register_dumper(_RawText, _RawTextDumper)
        with pytest.raises(psycopg.Error) as failure, conn.transaction():
            conn.execute("set local role anon")
            conn.execute("""select api.cast_vote(poll_id => b.poll_id, option_ids => b.option_ids,
                                                 voter_fingerprint => b.voter_fingerprint)
                            from json_to_record(%s::json) as b(poll_id uuid, option_ids uuid[], voter_fingerprint text)""",
                         (_RawText(raw),), prepare=False)
    assert failure.value.sqlstate == "22021", failure.value
    assert _snapshot(fuzz_admin, snapshot_sql, world).unchanged_since(before)


# ---- schemathesis: PostgREST's own OpenAPI document, for each role ---------------------------------------------

OPENAPI_OPERATIONS = {
    "anon": {"GET /", "GET /rpc/cast_vote", "POST /rpc/cast_vote", "GET /rpc/poll_results",
             "POST /rpc/poll_results"},
    "authenticated": {"GET /", "GET /rpc/cast_vote", "POST /rpc/cast_vote", "GET /rpc/poll_results",
                      "POST /rpc/poll_results", "GET /rpc/create_poll", "POST /rpc/create_poll",
                      "GET /rpc/close_poll", "POST /rpc/close_poll"},
    "ingest": {"GET /", "GET /rpc/cast_votes", "POST /rpc/cast_votes"},
}
PREFER_PARAMS = "#/parameters/preferParams"
SCHEMATHESIS = settings(max_examples=max(20, PROFILE.fuzz_examples // 3), deadline=None, print_blob=True,
                        suppress_health_check=list(HealthCheck))


class OwnAddressPerRequest(requests.adapters.HTTPAdapter):
    """Each request on a new connection from its own loopback address, as ApiClient does: the per-address
    limits of nginx and the database then see many callers, not one hammering client."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.poolmanager.clear()
        self.init_poolmanager(1, 1, source_address=(random_loopback_address(), 0))
        return super().send(request, **kwargs)


def openapi_document(api: ApiClient, token: str | None) -> dict[str, Any]:
    """GET / as PostgREST serves it to the token's role (openapi-mode follow-privileges)."""
    headers = {"Accept": "application/openapi+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = api.request("GET", "/", None, headers)
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/openapi+json"), r.text[:300]
    return r.body


def fuzzable(document: dict[str, Any], world: World) -> dict[str, Any]:
    """The document narrowed to calls that reach the functions, with the world's real ids.

    - the world's ids are the only valid poll and option ids (negative cases still send others);
    - request bodies are application/json without keys the function does not take (an unknown key is a
      404 PGRST202): PostgREST lists its response media types and text/csv under `consumes` and offers
      `Prefer: params=single-object` (for functions of one json argument, which the api has none of);
      test_advertised_request_variants_get_a_4xx covers those, once each;
    - the ballots of cast_votes as api/README.md documents them (PostgREST knows them only as jsonb).
    """
    doc = json.loads(json.dumps(document))
    poll_id = {"type": "string", "format": "uuid", "enum": world.poll_ids}
    option_ids = {"type": "array", "maxItems": 4, "items": {"type": "string", "format": "uuid",
                                                             "enum": world.option_ids}}
    literals = [f"{{{','.join(p['option_ids'][:n])}}}" for p in world.polls.values() for n in (1, 2)]
    ballots = {"type": "array", "maxItems": 5, "items": {
        "type": "object", "required": ["poll_id", "option_ids"],
        "properties": {"poll_id": poll_id, "option_ids": option_ids, "voter_id": {"type": "string", "maxLength": 40},
                       "voter_fingerprint": {"type": "string", "maxLength": 40}}}}
    for operations in doc["paths"].values():
        for operation in operations.values():
            parameters = [p for p in operation.get("parameters", []) if p.get("$ref") != PREFER_PARAMS]
            operation["parameters"] = parameters
            for parameter in parameters:
                if parameter.get("in") == "query" and parameter["name"] == "poll_id":
                    parameter["enum"] = world.poll_ids
                elif parameter.get("in") == "query" and parameter["name"] == "option_ids":
                    parameter["enum"] = literals
                elif parameter.get("in") == "body":
                    operation["consumes"] = ["application/json"]
                    parameter["schema"]["additionalProperties"] = False
                    properties = parameter["schema"].get("properties", {})
                    for name, schema in (("poll_id", poll_id), ("option_ids", option_ids), ("ballots", ballots)):
                        if name in properties:
                            properties[name] = schema
    return doc


def role_token(api: ApiClient, role: str, sub: str | None = None) -> str | None:
    """A token for role (none for anon), with sub or a new one each time."""
    if role == "anon":
        return None
    return api.token({"role": role, "sub": sub or f"schemathesis-{uuid.uuid4()}"})


def error_code(status: int, text: str) -> str:
    """The code of an error answer, which is always JSON in the API's error shape (PostgREST's and nginx's)."""
    if status < 400:
        return ""
    body = json.loads(text)
    assert set(body) == {"code", "message", "details", "hint"} and STABLE_CODE.fullmatch(body["code"]), text
    return str(body["code"])


@pytest.mark.parametrize("role", sorted(OPENAPI_OPERATIONS))
def test_advertised_request_variants_get_a_4xx(api, world, role) -> None:
    """Every request media type and Prefer value the document offers for a POST: a 4xx at worst."""
    document = openapi_document(api, role_token(api, role))
    prefer = [None, *document["parameters"]["preferParams"]["enum"]]
    for path, operations in document["paths"].items():
        if "post" not in operations:
            continue
        for media_type in operations["post"].get("consumes", document["consumes"]):
            for preference in prefer:
                headers = {"Content-Type": media_type, **({"Prefer": preference} if preference else {})}
                body = json.dumps({"poll_id": world.polls["open"]["poll_id"]})
                bearer = role_token(api, role)
                r = api.request("POST", path, body.encode(), {**headers, "Accept": "application/json",
                                                             **({"Authorization": f"Bearer {bearer}"} if bearer else {})})
                code = error_code(r.status, r.text)
                assert r.status < 500, (path, headers, r.status, r.text)
                if media_type not in ("application/json", "text/csv"):
                    assert (r.status, code) == (400, "PGRST102"), (path, headers, r.text)


@pytest.mark.parametrize("role", sorted(OPENAPI_OPERATIONS))
def test_schemathesis_on_postgrest_openapi_never_a_server_error(api, stack, world, role) -> None:
    """Every operation of the role's document, positive and negative cases: not_a_server_error and
    response_schema_conformance (PostgREST documents only its 200s, without a body schema: conformance
    holds there and the 4xx answers are undocumented). Signed-in calls come from a new sub each time or
    from the world's creator (who may close its polls); some calls of the role reach a function (a 200)."""
    document = openapi_document(api, role_token(api, role))
    schema = schemathesis.openapi.from_dict(fuzzable(document, world))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == OPENAPI_OPERATIONS[role]
    session = requests.Session()
    session.mount("http://", OwnAddressPerRequest())
    answers: Counter[tuple[str, int, str]] = Counter()

    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @SCHEMATHESIS
        @given(case=cases, as_creator=st.booleans())
        def exercise(case: schemathesis.Case, as_creator: bool) -> None:
            bearer = role_token(api, role, world.creator["sub"] if as_creator and role == "authenticated" else None)
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            r = case.call(base_url=stack.http_url, session=session, headers=headers, timeout=60)
            answers[(case.operation.label, r.status_code, error_code(r.status_code, r.text))] += 1
            case.validate_response(r, checks=[not_a_server_error, response_schema_conformance])

        exercise()

    print(f"\nschemathesis as {role}: {sum(answers.values())} calls: "
          + ", ".join(f"{label} {status} {code}".strip() + f" x{n}" for (label, status, code), n in sorted(answers.items())))
    assert all(status < 500 for _, status, _ in answers)
    assert any(status == 200 and label.startswith(("GET /rpc/", "POST /rpc/")) for label, status, _ in answers), answers
