"""The sharded profile on a real 2-shard stack: the launcher's router (PL/Proxy) and two shard clusters
behind the single node's nginx, PostgREST and PgBouncer (tests/fixtures/shards.py).

Placement (every poll on the shard its id hashes to, polls on both), the router's API against the single
node's, who may call the shard entry points, identity and rate limits across the hop, cast_votes split by
shard in input order, a dead shard (shard_unavailable, other polls unaffected, exact results once it is
back), and exactly-once under k6 load through nginx across both shards while one of them is stopped and
started again. The single node's HTTP contract on this stack is tests/test_shards_contract.py.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
import pytest
from reliability.checks import VotePolls, make_votes, verify
from reliability.k6round import Live, run_round
from test_cast_vote import assert_error

from pgvote.backends import make_stack
from pgvote.http import ApiClient, Response, random_loopback_address
from pgvote.paths import PROCEDURES_DIR, PROJECT_ROOT
from pgvote.shards import ShardedStack

from fixtures.shards import sharded_fixtures
from helpers import Poll, PollFactory, fingerprint, stored_ballots, user

stack, api, admin_url, admin = sharded_fixtures()


def shard_of(stack: ShardedStack, poll_id: str) -> int:
    """The shard that holds the poll (asserting it is exactly one)."""
    found = []
    for shard in stack.shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            if conn.execute("select from voting.polls where poll_id = %s", (poll_id,)).fetchone() is not None:
                found.append(shard.index)
    assert len(found) == 1, f"poll {poll_id} is on shards {found}"
    return found[0]


def polls_on_each_shard(stack: ShardedStack, make_poll: PollFactory, **body: Any) -> dict[int, Poll]:
    """One new poll per shard (new polls land at random: a few tries reach every shard)."""
    found: dict[int, Poll] = {}
    for _ in range(64):
        poll = make_poll(**body)
        found.setdefault(shard_of(stack, poll.poll_id), poll)
        if len(found) == len(stack.shards):
            return found
    raise AssertionError(f"64 new polls reached only shards {sorted(found)}")


# ---- the profile ------------------------------------------------------------------------------------

def test_status_json_lists_the_shards_and_the_state_dir_remembers_the_profile(stack: ShardedStack) -> None:
    env = {**os.environ, "PGVOTE_ROOT": str(PROJECT_ROOT), "PGVOTE_BACKEND": "local"}
    out = subprocess.run([sys.executable, "-m", "pgvote.cli", "--state-dir", str(stack.requested_state_dir),
                          "status", "--json"], capture_output=True, text=True, env=env, check=True, timeout=60)
    status = json.loads(out.stdout)
    assert [s["name"] for s in status["shards"]] == ["shard-0", "shard-1"]
    assert [s["url"] for s in status["shards"]] == [s.admin_url for s in stack.shards]
    assert all(s["running"] for s in status["shards"])
    # the same state dir opened without --shards is the sharded stack again (status, down, up)
    again = make_stack(stack.requested_state_dir)
    assert isinstance(again, ShardedStack) and len(again.shards) == 2
    heads = set()
    for url in [stack.admin_url] + [s["url"] for s in status["shards"]]:
        with psycopg.connect(url, autocommit=True) as conn:  # database pgvote, full schema, same head
            heads.add(conn.execute("select version_num from alembic_version").fetchone()[0])
            assert conn.execute("select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                                "where n.nspname = 'shard'").fetchone()[0] >= 5
    assert len(heads) == 1


def test_polls_spread_over_both_shards_each_on_the_shard_its_id_hashes_to(stack, make_poll, admin) -> None:
    polls = [make_poll() for _ in range(16)]
    placed = {p.poll_id: shard_of(stack, p.poll_id) for p in polls}
    assert set(placed.values()) == {0, 1}, "16 random ids never all hash to one of two shards (p = 2^-15)"
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        for poll_id, shard in placed.items():
            hashed = router.execute("select router.poll_shard(%s) & 1", (poll_id,)).fetchone()[0]
            assert hashed == shard, "PL/Proxy's partition is hash & (N - 1): no lookup table"
    assert router_polls(stack) == 0, "the router stores no poll"


def router_polls(stack: ShardedStack) -> int:
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        return int(router.execute("select count(*) from voting.polls").fetchone()[0])


# ---- the router's API is the single node's --------------------------------------------------------

API_CATALOG = """
    select p.proname, p.prokind, p.provolatile, p.proargnames, p.proargtypes::regtype[]::text, p.pronargdefaults,
           p.prorettype::regtype::text, p.prosecdef,
           array(select r from unnest(array['anon', 'authenticated', 'ingest', 'authenticator', 'pgvote_router']) as r
                 where has_function_privilege(r, p.oid, 'execute'))
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'api' order by 1"""


def test_router_api_is_the_single_node_api(stack: ShardedStack) -> None:
    """Same functions, argument names and types, defaults, volatility (GET works on the same ones) and
    grants: PostgREST serves the router exactly as a single node. Only the bodies differ."""
    catalogs = []
    for url in (stack.admin_url, stack.shards[0].admin_url):
        with psycopg.connect(url, autocommit=True) as conn:
            catalogs.append(conn.execute(API_CATALOG).fetchall())
    assert catalogs[0] == catalogs[1]
    assert [row[0] for row in catalogs[0]] == ["cast_vote", "cast_votes", "close_poll", "create_poll", "poll_results"]
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        language = dict(router.execute(
            """select p.proname, l.lanname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
               join pg_language l on l.oid = p.prolang where n.nspname = 'router'""").fetchall())
    assert language["cast_vote"] == language["cast_votes"] == "plproxy"


def test_only_the_router_login_may_call_the_shard_entry_points(stack: ShardedStack) -> None:
    for shard in stack.shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                """select p.oid::regprocedure::text,
                          array(select r from unnest(array['public', 'anon', 'authenticated', 'ingest',
                                                           'authenticator', 'pgvote_router']) as r
                                where case when r = 'public'
                                           then exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                                                        where a.grantee = 0 and a.privilege_type = 'EXECUTE')
                                           else has_function_privilege(r, p.oid, 'execute') end)
                   from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'shard'""").fetchall()
        assert len(rows) == 5 and all(who == ["pgvote_router"] for _, who in rows), rows
        # the router's login reaches nothing else of a shard: not the api functions, not the tables
        with psycopg.connect(shard.admin_url.replace("postgres@", "pgvote_router@"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select api.poll_results(gen_random_uuid())")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select count(*) from voting.ballots")
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        callable_router = router.execute(
            """select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
               cross join unnest(array['anon', 'authenticated', 'ingest', 'authenticator']) as r
               where n.nspname = 'router' and has_function_privilege(r, p.oid, 'execute')""").fetchall()
    assert callable_router == [], "the API roles reach the shards only through the api functions"


def test_router_sources_raise_pgrst_only_to_forward_a_shard_error_and_never_503() -> None:
    sources = {p.name: p.read_text() for p in (PROCEDURES_DIR / "router").glob("*.sql")}
    raising = [name for name, text in sources.items() if re.search(r"raise\s+sqlstate\s+'PGRST'", text, re.I)]
    assert raising == ["router.forward_error.sql"]
    assert not any(re.search(r"sqlstate\s+'(08|53|57P01|PT503)", t, re.I) for t in sources.values())
    assert all("set_config" not in t or ", true)" in t for t in sources.values())


def test_router_functions_pass_plpgsql_check(stack: ShardedStack) -> None:
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        router.execute("create extension if not exists plpgsql_check")
        functions = router.execute(
            """select p.oid, p.oid::regprocedure::text from pg_proc p
               join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
               where n.nspname in ('api', 'router') and l.lanname = 'plpgsql'""").fetchall()
        assert len(functions) >= 8
        findings = [(name, level, message) for oid, name in functions
                    for level, message in router.execute(
                        "select level, message from plpgsql_check_function_tb(%s, fatal_errors => false, "
                        "extra_warnings => true, other_warnings => true)", (oid,)).fetchall()]
    assert findings == []


def test_each_sync_drops_only_what_its_own_folder_no_longer_defines(stack: ShardedStack) -> None:
    """`up` again (idempotent) runs the sync of procedures/ on every database and the router's sync of
    procedures/router/ on the router: what neither folder defines is dropped, each folder's functions stay,
    and the router's api functions stay the router's (the sync of procedures/ does not put the single
    node's back)."""
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        router.execute("create function router.retired_helper() returns integer language sql as 'select 1'")
        router.execute("create function api.close_poll(poll_id uuid, reason text) returns jsonb language sql "
                       "as 'select null::jsonb'")
    with psycopg.connect(stack.shards[0].admin_url, autocommit=True) as shard:
        shard.execute("create function shard.retired_entry() returns integer language sql as 'select 1'")
    stack.up()
    router_files = sorted(p.name.removesuffix(".sql") for p in (PROCEDURES_DIR / "router").glob("*.sql"))
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        defined = sorted(r[0] for r in router.execute(
            """select n.nspname || '.' || p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
               where n.nspname in ('api', 'router')""").fetchall())
        body = router.execute("select prosrc from pg_proc where oid = 'api.cast_vote(uuid,uuid[],text,uuid)'::regprocedure"
                              ).fetchone()[0]
    assert defined == router_files, "exactly procedures/router/: the stale helper and the overload are gone"
    assert "router.cast_vote(" in body, "the router's api.cast_vote, not the single node's"
    with psycopg.connect(stack.shards[0].admin_url, autocommit=True) as shard:
        entries = sorted(r[0] for r in shard.execute(
            "select proname from pg_proc where pronamespace = 'shard'::regnamespace").fetchall())
        assert shard.execute("select to_regnamespace('router')").fetchone()[0] is None, "no router on a shard"
    assert entries == sorted(p.name.split(".")[1] for p in PROCEDURES_DIR.glob("shard.*.sql"))


# ---- identity and limits across the hop ---------------------------------------------------------------

def test_the_voter_is_the_same_key_on_every_shard_and_for_both_vote_paths(stack, api, make_poll, admin) -> None:
    """The router passes the verified sub (a fingerprint in the body of a JWT caller is ignored); every shard
    has the router's voter-key secret, so a voter is one key everywhere, and cast_votes' voter_id is the
    same voter as a JWT sub."""
    secrets = {bytes(row[0]) for row in admin.execute("select inner_pad from internal.voter_key_secret").fetchall()}
    assert len(secrets) == 1, "router and shards share one voter-key secret"
    for poll in polls_on_each_shard(stack, make_poll, allow_revote=False).values():
        voter, fp = user(), fingerprint()
        r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1],
                                  "voter_fingerprint": fingerprint()}, claims=voter)
        assert r.status == 200 and r.body["status"] == "recorded", r.body
        assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1],
                                     "voter_fingerprint": fp}).status == 200
        keys = {bytes(k) for (k,) in admin.execute("select voter_key from voting.ballots where poll_id = %s",
                                                   (poll.poll_id,)).fetchall()}
        expected = {bytes(admin.execute("select internal.voter_key(%s)", (i,)).fetchone()[0])
                    for i in ("sub:" + voter["sub"], "fp:" + fp)}
        assert keys == expected
        bulk = api.rpc("cast_votes", {"ballots": [{"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1],
                                                   "voter_id": voter["sub"]}]},
                       claims={"role": "ingest", "sub": "edge"})
        assert bulk.status == 200 and bulk.body["results"][0]["status"] == "unchanged", bulk.body
        assert_error(api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=voter), 403, "not_poll_creator")
        assert api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator).status == 200


def test_the_per_caller_limit_is_the_routers_hook_and_the_shards_keep_no_caller_bucket(stack, api, make_poll,
                                                                                        admin) -> None:
    poll = make_poll(allow_multiple_votes=True)
    voter = user()
    burst = admin.execute("select burst from rate_limit.limits where name = 'request'").fetchone()[0]
    body = {"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1]}
    assert [api.rpc("cast_vote", body, claims=voter).status for _ in range(burst)] == [200] * burst
    limited = api.rpc("cast_vote", body, claims=voter)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert stored_ballots(admin, poll.poll_id) == burst, "the refused call wrote nothing on the shard"
    key = admin.execute("select internal.voter_key(%s)", ("sub:" + voter["sub"],)).fetchone()[0]
    for shard in stack.shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            assert conn.execute("select count(*) from rate_limit.buckets where limit_name = 'request'").fetchone()[0] == 0
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        assert router.execute("select tokens < 1 from rate_limit.buckets where limit_name = 'request' and bucket_key = %s",
                              (key,)).fetchone() == (True,)


# ---- cast_votes across shards ---------------------------------------------------------------------------

def test_cast_votes_splits_the_batch_by_shard_and_answers_in_input_order(stack, api, make_poll, admin) -> None:
    on = polls_on_each_shard(stack, make_poll)
    a, b = on[0], on[1]
    voters = [f"bulk-{uuid.uuid4()}" for _ in range(4)]
    ballots: list[Any] = [
        {"poll_id": a.poll_id, "option_ids": a.option_ids[:1], "voter_id": voters[0]},
        {"poll_id": b.poll_id, "option_ids": b.option_ids[1:2], "voter_id": voters[0]},
        12,
        {"poll_id": a.poll_id, "option_ids": a.option_ids[:1], "voter_id": voters[0]},
        {"poll_id": b.poll_id, "option_ids": [str(uuid.uuid4())], "voter_id": voters[1]},
        {"poll_id": str(uuid.uuid4()), "option_ids": a.option_ids[:1], "voter_id": voters[2]},
        {"poll_id": b.poll_id, "option_ids": b.option_ids[:2], "voter_fingerprint": "fp-" + voters[3]},
        {"poll_id": "not a uuid", "option_ids": a.option_ids[:1], "voter_id": voters[3]},
        {"poll_id": a.poll_id, "option_ids": a.option_ids[2:3], "voter_id": voters[3]},
    ]
    r = api.rpc("cast_votes", {"ballots": ballots}, claims={"role": "ingest", "sub": "edge"})
    assert r.status == 200, r.body
    got = [(x["status"], x.get("code"), x.get("poll_id")) for x in r.body["results"]]
    assert got == [("recorded", None, a.poll_id), ("recorded", None, b.poll_id), ("rejected", "invalid_ballot", None),
                   ("unchanged", None, a.poll_id), ("rejected", "invalid_ballot", None),
                   ("rejected", "poll_not_found", None), ("rejected", "invalid_ballot", None),
                   ("rejected", "invalid_ballot", None), ("recorded", None, a.poll_id)]
    assert {k: r.body[k] for k in ("recorded", "changed", "unchanged", "rejected")} == \
        {"recorded": 3, "changed": 0, "unchanged": 1, "rejected": 5}
    assert stored_ballots(admin, a.poll_id) == 2 and stored_ballots(admin, b.poll_id) == 1
    empty = api.rpc("cast_votes", {"ballots": []}, claims={"role": "ingest", "sub": "edge"})
    assert empty.status == 200 and empty.body == {"recorded": 0, "changed": 0, "unchanged": 0, "rejected": 0,
                                                  "results": []}
    too_many = api.rpc("cast_votes", {"ballots": [ballots[0]] * 1001}, claims={"role": "ingest", "sub": "edge"})
    assert_error(too_many, 400, "invalid_ballot")
    assert too_many.body["message"] == "A batch holds at most 1000 ballots; got 1001."


# ---- a shard down ------------------------------------------------------------------------------------

def raw_call(stack: ShardedStack, fn: str, body: Any, claims: dict[str, Any] | None = None) -> tuple[Response, list[str]]:
    """An HTTP call through nginx, and every Retry-After header of the answer (ApiClient keeps one per name)."""
    client = ApiClient(stack.http_url, stack.jwt_secret)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if claims is not None:
        headers["Authorization"] = f"Bearer {client.token(claims)}"
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=30,
                                      source_address=(random_loopback_address(), 0))
    try:
        conn.request("POST", f"/rpc/{fn}", body=json.dumps(body), headers=headers)
        answer = conn.getresponse()
        text = answer.read().decode()
        retry_after = [v for k, v in answer.getheaders() if k.lower() == "retry-after"]
        return Response(answer.status, answer.headers,
                        json.loads(text) if text else None, text), retry_after
    finally:
        conn.close()


def test_a_dead_shard_answers_shard_unavailable_while_the_other_shards_polls_answer_200(stack, api, make_poll,
                                                                                       admin) -> None:
    on = polls_on_each_shard(stack, make_poll)
    up, down = on[0], on[1]
    vote = {"option_ids": down.option_ids[:1], "voter_fingerprint": fingerprint()}
    assert api.rpc("cast_vote", {"poll_id": down.poll_id, **vote}).status == 200
    stack.stop_shard(1)
    try:
        calls = [("cast_vote", {"poll_id": down.poll_id, "option_ids": down.option_ids[:1],
                                "voter_fingerprint": fingerprint()}, None),
                 ("poll_results", {"poll_id": down.poll_id}, None),
                 ("close_poll", {"poll_id": down.poll_id}, down.creator),
                 ("cast_votes", {"ballots": [{"poll_id": up.poll_id, "option_ids": up.option_ids[:1],
                                              "voter_id": "bulk-" + str(uuid.uuid4())},
                                             {"poll_id": down.poll_id, "option_ids": down.option_ids[:1],
                                              "voter_id": "bulk-" + str(uuid.uuid4())}]},
                  {"role": "ingest", "sub": "edge"})]
        for fn, body, claims in calls:
            r, retry_after = raw_call(stack, fn, body, claims)
            assert_error(r, 502, "shard_unavailable")
            assert retry_after == ["1"], f"{fn}: one Retry-After, ours (PostgREST adds its own 0 to a 503)"
        # the other shard's polls are served as usual, and PostgREST stays ready on its healthy router
        ok = api.rpc("cast_vote", {"poll_id": up.poll_id, "option_ids": up.option_ids[:1],
                                   "voter_fingerprint": fingerprint()})
        assert ok.status == 200 and ok.body["status"] == "recorded"
        assert api.rpc("poll_results", {"poll_id": up.poll_id}, method="GET").status == 200
        created = [api.rpc("create_poll", {"question": "q", "options": ["a", "b"]}, claims=user()) for _ in range(8)]
        assert {c.status for c in created} <= {200, 502}
        with psycopg.connect(stack.shards[0].admin_url, autocommit=True) as conn:
            assert all(conn.execute("select from voting.polls where poll_id = %s", (c.body["poll_id"],)).fetchone()
                       is not None for c in created if c.status == 200), "the polls created meanwhile are on shard 0"
        assert all(c.body["code"] == "shard_unavailable" for c in created if c.status == 502)
        for replica in stack.live_replicas():
            assert stack.component_ready(replica.name)
    finally:
        stack.start_shard(1)
    results = api.rpc("poll_results", {"poll_id": down.poll_id})
    assert results.status == 200 and results.body["total_ballots"] == 1, "the refused vote was not stored"
    assert stored_ballots(admin, down.poll_id) == 1
    # a batch is atomic per shard, not across shards: the live shard's part may have committed before
    # PL/Proxy met the dead one, or not; the identical batch, sent again, stores exactly the rest
    assert stored_ballots(admin, up.poll_id) in (1, 2)
    fn, batch, ingest = calls[3]
    again = api.rpc(fn, batch, claims=ingest)
    assert again.status == 200 and {b["status"] for b in again.body["results"]} <= {"recorded", "unchanged"}
    assert stored_ballots(admin, up.poll_id) == 2 and stored_ballots(admin, down.poll_id) == 2
    retried = api.rpc("cast_vote", {"poll_id": down.poll_id, "option_ids": down.option_ids[:1],
                                    "voter_fingerprint": fingerprint()})
    assert retried.status == 200, "the first call after the restart is served (PL/Proxy reconnects)"


# ---- exactly once under load, across shards ----------------------------------------------------------

def test_exactly_once_under_k6_load_across_shards_while_a_shard_restarts(stack: ShardedStack, api, admin,
                                                                        make_poll) -> None:
    """k6 through nginx casts 400 distinct ballots over two polls on different shards (anonymous single-ballot
    voters on one, signed-in voters with ballot ids on a multiple-vote poll on the other); after 100
    acknowledgments shard 1 is stopped for 2 s. k6 re-sends a ballot identically after a 502
    (shard_unavailable), so every ballot ends acknowledged: stored ballots per shard = acknowledged
    ballots of its poll, none twice, and each poll's results equal its stored ballots."""
    single = polls_on_each_shard(stack, make_poll, options=["a", "b", "c", "d"], max_choices=2,
                                 allow_revote=False)[0]
    multiple = polls_on_each_shard(stack, make_poll, options=["x", "y", "z"], allow_multiple_votes=True)[1]
    polls = VotePolls({"poll_id": single.poll_id, "option_ids": single.option_ids},
                      {"poll_id": multiple.poll_id, "option_ids": multiple.option_ids})
    votes = make_votes(polls, 400, f"shards-{uuid.uuid4().hex[:8]}")

    def restart_shard(live: Live) -> None:
        live.after_acks(100)
        live.mark("stopped")
        stack.stop_shard(1)
        time.sleep(2)
        stack.start_shard(1)
        live.mark("started")

    result = run_round(stack, votes, vus=25, fault=restart_shard, timeout=120)
    verdict = verify(stack, admin, polls, result)
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
    acked = {p: sum(1 for v in votes if v.poll_id == p) for p in (single.poll_id, multiple.poll_id)}
    for poll_id, shard in ((single.poll_id, 0), (multiple.poll_id, 1)):
        with psycopg.connect(stack.shards[shard].admin_url, autocommit=True) as conn:
            stored = conn.execute("select count(*) from voting.ballots where poll_id = %s", (poll_id,)).fetchone()[0]
        assert stored == acked[poll_id], f"shard {shard}: stored ballots = acknowledged ballots"
    errors = result.errors_by_kind()
    assert set(errors) <= {"502 shard_unavailable"}, errors
    print(f"\nk6 across 2 shards, shard-1 stopped 2 s: {verdict.as_dict()}; errors {errors}")


# ---- last: the CLI stops and starts the whole profile it remembers -----------------------------------

def test_pgvote_down_and_up_without_shards_drive_every_cluster_the_state_dir_remembers(stack: ShardedStack,
                                                                                    api, make_poll) -> None:
    poll = make_poll()
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1],
                                 "voter_fingerprint": fingerprint()}).status == 200
    env = {**os.environ, "PGVOTE_ROOT": str(PROJECT_ROOT), "PGVOTE_BACKEND": "local"}
    cli = [sys.executable, "-m", "pgvote.cli", "--state-dir", str(stack.requested_state_dir)]
    subprocess.run([*cli, "down"], env=env, check=True, capture_output=True, timeout=120)
    status = stack.status()
    assert not status["components"]["postgres"]["running"] and not status["components"]["supervisor"]["running"]
    assert not any(s["running"] for s in status["shards"]), "down stops the shard clusters too"
    subprocess.run([*cli, "up"], env=env, check=True, capture_output=True, timeout=300)
    assert all(s["running"] for s in stack.status()["shards"])
    results = api.rpc("poll_results", {"poll_id": poll.poll_id})
    assert results.status == 200 and results.body["total_ballots"] == 1
