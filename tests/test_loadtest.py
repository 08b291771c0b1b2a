"""The 50,000-vote spike machinery, reduced to test size: burst, bulk ingestion, overload.

- over HTTP: 2,000 distinct voters from 200 k6 VUs released together through the stack's nginx ->
  PostgREST -> PgBouncer, each VU from its own loopback address within the production rate
  limits, verified exactly once; how k6's per-request output becomes one outcome per voter
  (identical retries after 502/503/504 or a reset counted, a 429 a failure);
- a burst of 5,000 distinct voters from 500 connections released together through PgBouncer
  (PostgREST's exact statements), verified exactly once against the stored ballots;
- bulk ingestion (``api.cast_votes`` as role ingest): one batch mixing new, invalid and duplicate
  ballots answers one outcome per ballot in input order, and re-sending it adds nothing;
- overload: on a private stack with a two-connection pool, clients queue in PgBouncer, are served
  when the pool frees within the wait bound, and otherwise get PgBouncer's clean, retryable
  ``query_wait_timeout`` error (connection closed, class 08, PostgREST's 503); nothing
  acknowledged is lost and the identical retry succeeds once the pool is free.

No assertion is on wall-clock time: the machines are shared and noisy.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from rich.console import Console

from helpers import Poll, counts_from_ballots, fingerprint, results_counts, stored_ballots
from pgvote.loadtest import LoadtestConfig, run_loadtest
from pgvote.loadtest.ballots import BallotSpec
from pgvote.loadtest.callers import Answer, DbCaller, DbTarget, retryable
from pgvote.loadtest.http_scenarios import HttpTarget, request_limit, run_burst
from pgvote.loadtest.k6 import K6Output, voter_records
from pgvote.loadtest.scenarios import create_poll
from pgvote.http import ApiClient, Response
from pgvote.stack import LocalStack

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
    """Each (vu, iter) is one voter: its attempts in time order, the last deciding. A 503 then a 200 is
    acknowledged after one identical retry; a reset (status 0) then 504 to the last attempt gave up;
    a 429 is a final failure; other metrics are ignored."""
    t = 1_800_000_000.0
    lines = [
        k6_point("http_req_duration", 1, 0, t + 1.0, 100.0, status="503"),
        k6_point("http_req_blocked", 1, 0, t + 1.0, 1.0, status="503"),
        k6_point("http_req_duration", 1, 0, t + 2.0, 50.0, status="200"),
        k6_point("vote_answers", 1, 0, t + 2.0, 1.0, answer="unchanged"),
        k6_point("http_req_duration", 1, 1, t + 3.0, 10.0, status="429"),
        k6_point("http_req_duration", 2, 0, t + 1.5, 5.0, status="0", error_code="1210"),
        k6_point("http_req_duration", 2, 0, t + 2.5, 30_000.0, status="504"),
    ]
    out = tmp_path / "k6.json"
    out.write_text("\n".join(lines) + "\n")
    output = K6Output(out)
    output.read()
    records = {r[0]: r for r in voter_records(output, lambda vu, it: f"v{vu}-{it}")}
    assert records["v1-0"][1:4] == ("ack", 200, "unchanged") and records["v1-0"][6:] == (2, False)
    assert abs(records["v1-0"][4] - (t + 0.9)) < 1e-3 and abs(records["v1-0"][5] - (t + 2.0)) < 1e-3
    assert records["v1-1"][1:3] == ("rejected", 429) and records["v1-1"][6] == 1
    assert records["v2-0"][1:3] == ("gave_up", 504) and records["v2-0"][6] == 2
    assert output.errors == Counter({"503": 1, "429": 1, "0 1210": 1, "504": 1})


# --------------------------------------------------------------------------------------------------
# the burst at the SQL level


def test_burst_of_5000_voters_from_500_connections_is_stored_exactly_once(stack: LocalStack) -> None:
    """5,000 voters, 500 client connections in two processes, all released at one barrier: every
    voter is acknowledged, and the stored ballots are exactly the acknowledged ones (same options,
    one per voter), with poll_results equal to them."""
    cfg = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                         bouncer_admin_url=stack.bouncer_admin_url, voters=5_000, clients=500, workers=2,
                         baseline=False)
    report = run_loadtest(cfg, quiet_console(), quiet=True)

    (burst,) = report["scenarios"]
    f, v = burst["figures"], burst["verification"]
    assert burst["connected"] == 500
    assert f["accepted"] == f["voters"] == 5_000, (f["rejected"], f["retried_errors"])
    assert f["rejected"] == {} and f["gave_up"] == 0
    assert set(f["answers"]) <= {"recorded", "unchanged"}  # unchanged: an identical re-cast after a lost answer
    assert v["exactly_once"], v["problems"]
    assert (v["stored"], v["lost"], v["duplicated"], v["mismatched"]) == (5_000, 0, 0, 0)
    assert v["results_total"] == 5_000 and v["tallies_match"]
    assert burst["pool"].get("clients", 0) > 0  # PgBouncer saw the clients (SHOW POOLS sampled)


def test_bulk_run_of_5000_ballots_is_stored_exactly_once(stack: LocalStack) -> None:
    """The bulk runner: 10 batches of 500 through cast_votes, half voter_id, half fingerprints."""
    cfg = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                         bouncer_admin_url=stack.bouncer_admin_url, voters=5_000, clients=4, bulk=True, batch=500)
    (bulk,) = run_loadtest(cfg, quiet_console(), quiet=True)["scenarios"]
    assert bulk["answers"] == {"recorded": 5_000}, bulk
    assert bulk["batch_errors"] == [] and bulk["success_rate"] == 1.0
    assert bulk["verification"]["exactly_once"], bulk["verification"]["problems"]


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


def cast_each(url: str, poll: BallotSpec, voters: list[str]) -> list[tuple[str, Answer]]:
    """Each voter casts on its own connection, all at once, with the load test's SQL-level caller
    (PostgREST's statements through PgBouncer): (voter, answer)."""

    async def one(voter: str) -> tuple[str, Answer]:
        caller = DbCaller(DbTarget(url))
        try:
            return voter, await caller.call({"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]],
                                             "voter_fingerprint": voter}, timeout=60)
        finally:
            await caller.close()

    async def every() -> list[tuple[str, Answer]]:
        return list(await asyncio.gather(*(one(v) for v in voters)))

    return asyncio.run(every())


def overload_wave(stack: LocalStack, poll: BallotSpec, voters: list[str],
                  hold_seconds: float) -> tuple[list[tuple[str, Answer]], int]:
    """Fill the pool with sleepers, then cast: returns the answers and the peak of queued clients."""
    started = threading.Barrier(POOL + 1)
    holders = [threading.Thread(target=hold_pool, args=(stack.api_url, hold_seconds, started)) for _ in range(POOL)]
    for h in holders:
        h.start()
    started.wait(timeout=30)
    peak = 0
    with ThreadPoolExecutor(max_workers=1) as ex:
        future = ex.submit(cast_each, stack.api_url, poll, voters)
        while not future.done():
            peak = max(peak, pool_waiting(stack.bouncer_admin_url))
            time.sleep(0.05)
        answers = future.result()
    for h in holders:
        h.join(timeout=60)
    return answers, peak


def test_overload_queues_then_answers_a_clean_retryable_error(tiny_pool: LocalStack) -> None:
    """Interleaving: two transactions hold both server connections while 12 clients cast.
    (a) The holders finish within the bound: the queued clients are served, all acknowledged.
    (b) The holders outlast the bound: every queued client gets PgBouncer's query_wait_timeout
        (SQLSTATE class 08: PostgREST's 503, retryable) and its connection is closed; nothing was
        written; the identical re-cast after the pool frees is recorded, a second one unchanged."""
    poll = create_poll(tiny_pool.admin_url, uuid.uuid4().hex[:10])

    served, peak = overload_wave(tiny_pool, poll, [fingerprint() for _ in range(12)], hold_seconds=0.3)
    assert peak > 0  # they did queue in PgBouncer
    assert [r.status for _, r in served] == [200] * 12
    with psycopg.connect(tiny_pool.admin_url, autocommit=True) as admin:
        assert stored_ballots(admin, poll.poll_id) == 12

    voters = [fingerprint() for _ in range(12)]
    refused, peak = overload_wave(tiny_pool, poll, voters, hold_seconds=WAIT_BOUND + 4)
    assert peak > 0
    for _voter, r in refused:
        assert r.status == 503 and retryable(r), r.body  # a lost connection / class 08 -> 503, never a hang
        assert r.code == "PGRST001" and "query_wait_timeout" in r.body["details"]
        assert not r.usable  # PgBouncer closed the client connection
    with psycopg.connect(tiny_pool.admin_url, autocommit=True) as admin:
        assert stored_ballots(admin, poll.poll_id) == 12  # nothing of the refused wave was written

        retried = cast_each(tiny_pool.api_url, poll, voters)  # the pool is free again
        assert Counter(r.body["status"] for _, r in retried) == {"recorded": 12}
        again = cast_each(tiny_pool.api_url, poll, voters)
        assert Counter(r.body["status"] for _, r in again) == {"unchanged": 12}
        assert stored_ballots(admin, poll.poll_id) == 24
