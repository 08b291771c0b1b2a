"""The 50,000-vote spike machinery, reduced to test size: burst, bulk ingestion, overload.

- over HTTP: 2,000 distinct voters from 200 k6 VUs released together through the stack's nginx ->
  PostgREST -> PgBouncer, each VU from its own loopback address within the production rate
  limits, verified exactly once; how k6's per-request output becomes one outcome per voter
  (identical retries after 502/503/504 or a reset counted, a 429 a failure);
- at the SQL level, pgbench with PostgREST's exact statements through PgBouncer: a burst of 5,000
  distinct voters from 500 connections released together, verified exactly once against the stored
  ballots (acknowledged = pgbench's committed transactions); the bare-insert reference on the same
  envelope; the bulk path in batches;
- bulk ingestion (``api.cast_votes`` as role ingest): one batch mixing new, invalid and duplicate
  ballots answers one outcome per ballot in input order, and re-sending it adds nothing;
- overload: on a private stack with a two-connection pool, pgbench's clients queue in PgBouncer,
  are served when the pool frees within the wait bound, and otherwise get PgBouncer's clean
  ``query_wait_timeout`` error (connection closed, class 08: PostgREST's retryable 503); nothing
  acknowledged is lost and the identical re-cast succeeds once the pool is free.

No assertion is on wall-clock time: the machines are shared and noisy.
"""
from __future__ import annotations

import ipaddress
import json
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from rich.console import Console

from pgvote.bench.pgbench import POSTGREST_RPC, SCRIPTS, Outcome, Run, execute, postgrest_variables
from pgvote.http import ApiClient, Response
from pgvote.loadtest import LoadtestConfig, run_loadtest
from pgvote.loadtest.k6 import HttpTarget, K6Output, request_limit, run_burst
from pgvote.loadtest.scenarios import BallotSpec, bare_script, create_poll, run_bare, verify_poll
from pgvote.stack import LocalStack

from helpers import Poll, counts_from_ballots, fingerprint, results_counts, stored_ballots

INGEST = {"role": "ingest"}


def quiet_console() -> Console:
    return Console(quiet=True)


# --------------------------------------------------------------------------------------------------
# the burst over HTTP, with k6


def addresses(local_ips: str) -> list[str]:
    first, last = (ipaddress.IPv4Address(a) for a in local_ips.split("-"))
    return [str(first + i) for i in range(int(last) - int(first) + 1)]


def test_k6_burst_of_2000_voters_over_nginx_is_stored_exactly_once(stack: LocalStack,
                                                                    admin: psycopg.Connection) -> None:
    """k6's burst script, 200 VUs released together, 10 voters each, through nginx with the production
    rate limits on: every voter is acknowledged (no 429: each VU is its own caller and stays within its
    address's burst), the stored ballots are exactly the acknowledged ones, poll_results equals them,
    and the database's limiter holds one bucket per VU address, each short of the tokens it spent."""
    burst = run_burst(HttpTarget.for_stack(stack), voters=2_000, vus=200, console=quiet_console(), quiet=True)

    f, v = burst["figures"], burst["verification"]
    assert f["accepted"] == f["voters"] == 2_000, (f["rejected"], f["retried_errors"])
    assert f["rejected"] == {} and f["gave_up"] == 0
    assert burst["k6"]["requests"] == 2_000 + burst["k6"]["retries"]
    assert set(f["answers"]) <= {"recorded", "unchanged"}  # unchanged: an identical re-cast after a lost answer
    assert v["exactly_once"], v["problems"]
    assert (v["stored"], v["lost"], v["duplicated"], v["mismatched"]) == (2_000, 0, 0, 0)
    assert v["results_total"] == 2_000 and v["tallies_match"]

    vu_addresses = addresses(burst["local_ips"])
    assert len(vu_addresses) == 200 and "127.0.0.1" not in vu_addresses
    limit = request_limit(stack.admin_url)
    count, most = admin.execute(
        "select count(*), max(tokens) from rate_limit.buckets where limit_name = 'request' and bucket_key = "
        "any(array(select internal.voter_key('ip:' || a) from unnest(%s::text[]) as a))", (vu_addresses,)).fetchone()
    assert count == 200  # nginx passed each VU's own address as X-Real-IP
    # each bucket is short of the 10 calls its address made, give or take the refill while they ran
    assert most <= limit.burst - 10 + f["drain_seconds"] * limit.per_minute / 60
    assert {"k6", "nginx", "pgbouncer", "postgres"} <= set(burst["cpu_seconds"])
    assert any(name.startswith("postgrest") for name in burst["cpu_seconds"])


def k6_point(metric: str, vu: int, it: int, t: float, value: float, **tags: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    return json.dumps({"metric": metric, "type": "Point",
                       "data": {"time": stamp, "value": value, "tags": tags,
                                "metadata": {"vu": str(vu), "iter": str(it)}}}, separators=(",", ":"))


def test_k6_output_becomes_one_outcome_per_voter(tmp_path: Any) -> None:
    """vote.js's one point per voter (``vote_outcomes``, by vu and iter) becomes its record: outcome, last
    status and answer, first send (end - the value in ms) and last answer, attempts; every answer other
    than 200 (``vote_errors``) is counted by status and k6 error code; other metrics are ignored."""
    t = 1_800_000_000.0
    lines = [
        k6_point("vote_errors", 1, 0, t + 1.0, 1.0, status="503", error_code=""),
        k6_point("http_req_duration", 1, 0, t + 2.0, 50.0, status="200"),
        k6_point("vote_outcomes", 1, 0, t + 2.0, 1100.0, outcome="ack", status="200", answer="unchanged",
                 attempts="2"),
        k6_point("vote_errors", 1, 1, t + 3.0, 1.0, status="429", error_code=""),
        k6_point("vote_outcomes", 1, 1, t + 3.0, 10.0, outcome="rejected", status="429", answer="rate_limited",
                 attempts="1"),
        k6_point("vote_errors", 2, 0, t + 1.5, 1.0, status="0", error_code="1210"),
        k6_point("vote_outcomes", 2, 0, t + 2.5, 1000.0, outcome="gave_up", status="504", answer="504",
                 attempts="2"),
        k6_point("vote_outcomes", 2, 1, t + 2.5, 5.0, outcome="ack", status="200", answer="recorded",
                 attempts="1"),
    ]
    out = tmp_path / "k6.json"
    out.write_text("\n".join(lines) + "\n")
    output = K6Output(out, lambda vu, it: f"v{vu}-{it}")
    assert output.poll()[:2] == (4, 2)
    records = {r[0]: r for r in output.records}
    assert records["v1-0"][1:4] == ("ack", 200, "unchanged") and records["v1-0"][6:] == (2, False)
    assert abs(records["v1-0"][4] - (t + 0.9)) < 1e-3 and abs(records["v1-0"][5] - (t + 2.0)) < 1e-3
    assert records["v1-1"][1:3] == ("rejected", 429) and records["v1-1"][6] == 1
    assert records["v2-0"][1:3] == ("gave_up", 504) and records["v2-0"][6] == 2
    assert records["v2-1"][6:] == (1, True)
    assert output.errors == Counter({"503": 1, "429": 1, "0 1210": 1})


# --------------------------------------------------------------------------------------------------
# the burst at the SQL level


def test_burst_of_5000_voters_from_500_connections_is_stored_exactly_once(stack: LocalStack) -> None:
    """5,000 voters from 500 pgbench clients, all connected before any casts (PgBouncer holds the 500 at
    once, most of them queued for its 40 server connections): every voter's transaction commits, and
    the stored ballots are exactly the acknowledged ones (same options, one per voter), with
    poll_results equal to them."""
    cfg = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                         bouncer_admin_url=stack.bouncer_admin_url, voters=5_000, clients=500, baseline=False)
    report = run_loadtest(cfg, quiet_console(), quiet=True)

    (burst,) = report["scenarios"]
    f, v = burst["figures"], burst["verification"]
    pgbench = burst["pgbench"]
    assert burst["clients"] == 500 and (pgbench["exit_code"], pgbench["transactions"], pgbench["aborted_clients"]) \
        == (0, 5_000, 0)
    assert f["accepted"] == f["voters"] == 5_000, (f["rejected"], f["retried_errors"])
    assert f["rejected"] == {} and f["answers"] == {"committed": 5_000}
    assert v["exactly_once"], v["problems"]
    assert (v["stored"], v["lost"], v["duplicated"], v["unexpected"], v["mismatched"]) == (5_000, 0, 0, 0, 0)
    assert v["results_total"] == 5_000 and v["tallies_match"]
    assert burst["pool"]["clients"] >= 500  # SHOW POOLS saw every client connected at once


def test_bare_insert_reference_runs_the_same_envelope_and_leaves_nothing(stack: LocalStack,
                                                                          admin: psycopg.Connection) -> None:
    """The drain ratio's denominator: the PostgREST script with only its call pointed at a bare insert,
    the same clients and transactions through PgBouncer, every acknowledged row stored once; the
    scratch schema is gone afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        bare = bare_script(Path(tmp)).read_text().splitlines()
    real = (SCRIPTS / POSTGREST_RPC).read_text().splitlines()
    assert [(a, b) for a, b in zip(real, bare, strict=True) if a != b] == [
        (line, line.replace('"api"."cast_vote"(', '"pgvote_loadtest"."cast_vote"(')) for line in real
        if '"api"."cast_vote"(' in line]
    cfg = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                         bouncer_admin_url=stack.bouncer_admin_url, voters=1_000, clients=100)
    result = run_bare(cfg, quiet_console(), quiet=True)
    assert result["figures"]["accepted"] == 1_000 and result["pgbench"]["aborted_clients"] == 0
    assert result["verification"] == {"accepted": 1_000, "stored": 1_000, "lost": 0, "duplicated": 0,
                                      "exactly_once": True}
    assert admin.execute("select to_regnamespace('pgvote_loadtest')").fetchone() == (None,)


def test_bulk_run_of_5000_ballots_is_stored_exactly_once(stack: LocalStack) -> None:
    """The bulk path by pgbench: 5,000 ballots, half voter_id, half fingerprints, through cast_votes as role
    ingest from 4 clients; batches of at most 500, split evenly (12 of 416-417: 3 per client)."""
    cfg = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                         bouncer_admin_url=stack.bouncer_admin_url, voters=5_000, clients=4, bulk=True, batch=500)
    (bulk,) = run_loadtest(cfg, quiet_console(), quiet=True)["scenarios"]
    assert (bulk["batches"], bulk["batch"], bulk["committed_batches"]) == (12, 417, 12), bulk
    f = bulk["figures"]
    assert f["accepted"] == f["voters"] == 5_000 and f["retried_errors"] == {} and f["success_rate"] == 1.0
    assert bulk["verification"]["exactly_once"], bulk["verification"]["problems"]
    assert bulk["verification"]["stored"] == 5_000


# --------------------------------------------------------------------------------------------------
# bulk ingestion: one batch with new, invalid and duplicate ballots


def cast_votes(api: ApiClient, ballots: Any) -> Response:
    return api.rpc("cast_votes", {"ballots": ballots}, claims=INGEST)


def voter_key_count(admin: psycopg.Connection, poll_id: str, identity: str) -> int:
    row = admin.execute("select count(*) from voting.ballots where poll_id = %s "
                        "and voter_key = internal.voter_key(%s)", (poll_id, identity)).fetchone()
    return int(row[0])


def test_bulk_batch_mixing_new_invalid_and_duplicate_ballots(api: ApiClient, make_poll: Any,
                                                             admin: psycopg.Connection) -> None:
    """One outcome per ballot, in input order, with the code cast_vote would give; a duplicate in
    the batch is unchanged (identical) or already_voted (different, no revotes); re-sending the
    whole batch records nothing twice."""
    poll: Poll = make_poll(options=3, max_choices=2, allow_revote=False)
    a, b, c = poll.option_ids
    sub, fp = f"edge-user-{uuid.uuid4()}", fingerprint()
    twin, rival = fingerprint(), fingerprint()
    batch = [
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_id": sub},  # 0 new (signed-in identity)
        {"poll_id": poll.poll_id, "option_ids": [b, a], "voter_fingerprint": fp},  # 1 new (anonymous), a set
        {"poll_id": poll.poll_id, "option_ids": [a, b], "voter_fingerprint": fp},  # 2 same set again: unchanged
        {"poll_id": poll.poll_id, "option_ids": [c], "voter_fingerprint": twin},  # 3 new
        {"poll_id": poll.poll_id, "option_ids": [b], "voter_fingerprint": twin},  # 4 different, no revote: 409
        {"poll_id": poll.poll_id, "option_ids": [str(uuid.uuid4())], "voter_fingerprint": rival},  # 5 not an option
        {"poll_id": str(uuid.uuid4()), "option_ids": [a], "voter_fingerprint": rival},  # 6 unknown poll
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_fingerprint": ""},  # 7 empty fingerprint
        {"poll_id": poll.poll_id, "option_ids": [a, b, c], "voter_fingerprint": rival},  # 8 over max_choices
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_fingerprint": rival, "sub": "x"},  # 9 unknown key
        {"poll_id": poll.poll_id, "option_ids": [a], "voter_fingerprint": rival},  # 10 new, after the rejects
    ]
    r = cast_votes(api, batch)
    assert r.status == 200, r.body
    results = r.body["results"]
    assert len(results) == len(batch)
    statuses = [x["status"] for x in results]
    assert statuses == ["recorded", "recorded", "unchanged", "recorded", "rejected", "rejected", "rejected",
                        "rejected", "rejected", "rejected", "recorded"]
    codes = {i: x["code"] for i, x in enumerate(results) if x["status"] == "rejected"}
    assert codes == {4: "already_voted", 5: "invalid_ballot", 6: "poll_not_found", 7: "invalid_fingerprint",
                     8: "invalid_ballot", 9: "invalid_ballot"}
    assert all(x["message"] for x in results if x["status"] == "rejected")
    assert results[1]["option_ids"] == results[2]["option_ids"] == [a, b]  # the poll's option order
    assert (r.body["recorded"], r.body["changed"], r.body["unchanged"], r.body["rejected"]) == (4, 0, 1, 6)

    # The codes are cast_vote's: the same ballots one by one (as the anonymous caller) answer the same.
    for i in (5, 6, 7, 8):
        single = api.rpc("cast_vote", {k: v for k, v in batch[i].items() if k != "sub"})
        assert single.status >= 400 and single.body["code"] == codes[i], (i, single.body)

    assert stored_ballots(admin, poll.poll_id) == 4
    for identity in (f"sub:{sub}", f"fp:{fp}", f"fp:{twin}", f"fp:{rival}"):
        assert voter_key_count(admin, poll.poll_id, identity) == 1
    stored_twin = admin.execute("select option_ids::text[] from voting.ballots where poll_id = %s and "
                                "voter_key = internal.voter_key(%s)", (poll.poll_id, f"fp:{twin}")).fetchone()
    assert stored_twin == ([c],)  # the rejected revote changed nothing

    again = cast_votes(api, batch)  # an identical retry of the whole batch
    assert again.status == 200
    assert [x["status"] for x in again.body["results"]] == ["unchanged", "unchanged", "unchanged", "unchanged",
                                                            "rejected", "rejected", "rejected", "rejected",
                                                            "rejected", "rejected", "unchanged"]
    assert stored_ballots(admin, poll.poll_id) == 4
    results_now = api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET")
    assert results_now.body["total_ballots"] == 4
    assert results_counts(results_now) == counts_from_ballots(admin, poll.poll_id) == {a: 3, b: 1, c: 1}


def test_bulk_batch_over_1000_ballots_or_not_an_array_writes_nothing(api: ApiClient, make_poll: Any,
                                                                     admin: psycopg.Connection) -> None:
    poll: Poll = make_poll()
    too_many = [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_fingerprint": f"many-{i}"}
                for i in range(1_001)]
    r = cast_votes(api, too_many)
    assert r.status == 400 and r.body["code"] == "invalid_ballot"
    r = cast_votes(api, {"poll_id": poll.poll_id})
    assert r.status == 400 and r.body["code"] == "invalid_ballot"
    assert stored_ballots(admin, poll.poll_id) == 0
    assert cast_votes(api, too_many[:1_000]).body["recorded"] == 1_000  # the limit itself is accepted


# --------------------------------------------------------------------------------------------------
# overload: queue in PgBouncer for a bounded time, then a clean, retryable error

WAIT_BOUND = 2  # query_wait_timeout of the private stack, seconds
POOL = 2


@pytest.fixture(scope="module")
def tiny_pool() -> Iterator[LocalStack]:
    """A private stack whose PgBouncer lends at most two server connections and queues for 2 s."""
    local = LocalStack.ephemeral(prefix="pgvote-overload-", bouncer_settings={
        "default_pool_size": str(POOL), "reserve_pool_size": "0", "query_wait_timeout": str(WAIT_BOUND)})
    try:
        local.up()
        yield local
    finally:
        local.destroy()


def hold_pool(url: str, seconds: float, started: threading.Barrier) -> None:
    """Occupy one server connection: a transaction that sleeps (as the authenticator, via PgBouncer)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("select 1")  # now this client owns a server connection until COMMIT
        started.wait(timeout=30)
        conn.execute("select pg_sleep(%s)", (seconds,))
        conn.execute("commit")


def pool_waiting(bouncer_admin_url: str) -> int:
    with psycopg.connect(bouncer_admin_url, autocommit=True) as conn:
        cur = conn.execute("SHOW POOLS")
        names = [d.name for d in cur.description or []]
        return sum(int(row[names.index("cl_waiting")]) for row in cur.fetchall()
                   if row[names.index("database")] == "pgvote")


def cast_with_pgbench(url: str, poll: BallotSpec, prefix: str, voters: int) -> Outcome:
    """``voters`` pgbench clients, one cast each (voter ``prefix`` + client number), all at once, with the
    load test's script: PostgREST's statements through PgBouncer. The same prefix re-casts identically."""
    variables = postgrest_variables(poll_id=poll.poll_id, patterns=[[poll.option_ids[0]]], prefix=prefix,
                                    per_client=1)
    return execute(Run(POSTGREST_RPC, url, voters, transactions=1, protocol="extended", variables=variables))


def first_query_error(url: str) -> tuple[psycopg.Error | None, bool]:
    """One plain connection's first query: the error it got (None: served) and whether it is closed."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute("select 1")
        return None, conn.closed
    except psycopg.Error as exc:
        return exc, conn.closed
    finally:
        conn.close()


T = TypeVar("T")


def overload_wave(stack: LocalStack, work: Callable[[], T], hold_seconds: float) -> tuple[T, int]:
    """Fill the pool with sleepers, then run ``work``: its result and the peak of queued clients."""
    started = threading.Barrier(POOL + 1)
    holders = [threading.Thread(target=hold_pool, args=(stack.api_url, hold_seconds, started)) for _ in range(POOL)]
    for h in holders:
        h.start()
    started.wait(timeout=30)
    peak = 0
    with ThreadPoolExecutor(max_workers=1) as ex:
        future = ex.submit(work)
        while not future.done():
            peak = max(peak, pool_waiting(stack.bouncer_admin_url))
            time.sleep(0.05)
        result = future.result()
    for h in holders:
        h.join(timeout=60)
    return result, peak


def test_overload_queues_then_answers_a_clean_retryable_error(tiny_pool: LocalStack) -> None:
    """Interleaving: two transactions hold both server connections while 12 pgbench clients cast.
    (a) The holders finish within the bound: the queued clients are served, all committed.
    (b) The holders outlast the bound: every queued client gets PgBouncer's query_wait_timeout and its
        connection is closed (pgbench aborts each); nothing was written; the identical re-casts after
        the pool frees are recorded, and once more change nothing.
    pgbench prints an error's message, not its SQLSTATE: one plain psycopg connection queued beside
    its clients reads that (class 08, what PostgREST answers with a retryable 503 PGRST001)."""
    poll = create_poll(tiny_pool.admin_url, uuid.uuid4().hex[:10])
    served_prefix, refused_prefix = f"served-{uuid.uuid4()}-", f"refused-{uuid.uuid4()}-"

    served, peak = overload_wave(tiny_pool, lambda: cast_with_pgbench(tiny_pool.api_url, poll, served_prefix, 12),
                                 hold_seconds=0.3)
    assert peak > 0  # they did queue in PgBouncer
    assert served.exit_code == 0 and served.aborted == {} and len(served.committed) == 12
    with psycopg.connect(tiny_pool.admin_url, autocommit=True) as admin:
        assert stored_ballots(admin, poll.poll_id) == 12

    def refused_wave() -> tuple[Outcome, tuple[psycopg.Error | None, bool]]:
        with ThreadPoolExecutor(max_workers=1) as ex:
            probe = ex.submit(first_query_error, tiny_pool.api_url)
            return cast_with_pgbench(tiny_pool.api_url, poll, refused_prefix, 12), probe.result()

    (refused, (probe_error, probe_closed)), peak = overload_wave(tiny_pool, refused_wave, hold_seconds=WAIT_BOUND + 4)
    assert peak > 0
    assert refused.committed == [] and sorted(refused.aborted) == list(range(12)), refused.aborted
    assert all("query_wait_timeout" in error for error in refused.aborted.values()), refused.aborted
    assert isinstance(probe_error, psycopg.OperationalError) and "query_wait_timeout" in str(probe_error)
    assert probe_error.sqlstate is not None and probe_error.sqlstate.startswith("08")  # PostgREST: 503, retryable
    assert probe_closed  # PgBouncer closed the client connection: never a hang
    with psycopg.connect(tiny_pool.admin_url, autocommit=True) as admin:
        assert stored_ballots(admin, poll.poll_id) == 12  # nothing of the refused wave was written

        retried = cast_with_pgbench(tiny_pool.api_url, poll, refused_prefix, 12)  # the pool is free again
        assert len(retried.committed) == 12 and stored_ballots(admin, poll.poll_id) == 24
        again = cast_with_pgbench(tiny_pool.api_url, poll, refused_prefix, 12)
        assert len(again.committed) == 12 and stored_ballots(admin, poll.poll_id) == 24
    option = [poll.option_ids[0]]
    acknowledged = {f"fp:{prefix}{n}": option for prefix in (served_prefix, refused_prefix) for n in range(12)}
    check = verify_poll(tiny_pool.admin_url, poll.poll_id, acknowledged)
    assert check["exactly_once"], check["problems"]


def hold_pool_until(url: str, started: threading.Barrier, release: threading.Event) -> None:
    """Occupy one server connection until ``release``: a transaction left open (as the authenticator, via
    PgBouncer, which lends the connection until COMMIT)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("select 1")
        started.wait(timeout=30)
        release.wait(timeout=120)
        conn.execute("commit")


def test_burst_recasts_what_the_pool_refused_until_every_voter_is_recorded_once(tiny_pool: LocalStack) -> None:
    """The load test's own retry: the pool stays held until all 12 pgbench clients of the first pass have
    queued and then waited past the bound, so that pass ends in query_wait_timeout for every one; the next
    passes re-cast those voters identically (and cast the ones their clients never reached) once the pool
    is free: every voter acknowledged, some after more than one attempt, each stored exactly once."""
    cfg = LoadtestConfig(database_url=tiny_pool.api_url, admin_url=tiny_pool.admin_url,
                         bouncer_admin_url=tiny_pool.bouncer_admin_url, voters=24, clients=12, baseline=False)
    started, release = threading.Barrier(POOL + 1), threading.Event()
    holders = [threading.Thread(target=hold_pool_until, args=(tiny_pool.api_url, started, release))
               for _ in range(POOL)]
    for h in holders:
        h.start()
    started.wait(timeout=30)
    with ThreadPoolExecutor(max_workers=1) as ex:
        future = ex.submit(run_loadtest, cfg, quiet_console(), True)
        deadline = time.monotonic() + 120
        while pool_waiting(tiny_pool.bouncer_admin_url) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(WAIT_BOUND + 1)  # every queued client has now passed the bound
        release.set()
        report = future.result()
    for h in holders:
        h.join(timeout=30)

    (burst,) = report["scenarios"]
    f, v, pgbench = burst["figures"], burst["verification"], burst["pgbench"]
    assert (pgbench["aborted_clients"], pgbench["transactions"]) == (12, 0)  # the first pass: all refused
    assert pgbench["recast_passes"] >= 1
    assert f["accepted"] == f["voters"] == 24 and f["rejected"] == {} and f["gave_up"] == 0
    assert all("query_wait_timeout" in error for error in f["retried_errors"]), f["retried_errors"]
    assert f["requests"] >= 24 + 12  # the 12 voters in flight when refused were cast again
    assert v["exactly_once"], v["problems"]
    assert (v["stored"], v["lost"], v["duplicated"], v["unacknowledged"]) == (24, 0, 0, 0)
