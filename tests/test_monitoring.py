"""Monitoring from PostgreSQL itself: the `monitoring` views under a small load, who may read them
(role ops, never the API roles), and `pgvote stats` (one sample as JSON, and the live dashboard)."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from pgvote import stats
from pgvote.http import ApiClient

from helpers import fingerprint, user

API_ROLES = ["anon", "authenticated", "ingest"]
VIEWS = ["vote_rate", "rollback_rate", "connections", "aggregation_backlog", "cache_hit_ratio",
         "rate_limits", "api_latency", "statement_latency"]
OPS_LOGIN = "pgvote_test_ops_login"


@pytest.fixture(scope="module")
def ops_url(stack) -> str:
    """A login that is a member of ops and nothing else, as a monitoring tier would use."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(f"""do $$ begin
                           if not exists (select from pg_roles where rolname = '{OPS_LOGIN}') then
                             create role {OPS_LOGIN} login in role ops;
                           end if; end $$""")
    return stack.admin_url.replace("postgres@", f"{OPS_LOGIN}@", 1)


@pytest.fixture(scope="module")
def small_load(api) -> Iterator[dict[str, int]]:
    """60 ballots, 20 revotes of signed-in voters and 10 rejected calls, over HTTP through nginx."""
    creator = user()
    poll = api.rpc("create_poll", {"question": "Load?", "options": ["a", "b", "c"]}, claims=creator).body
    options = poll["option_ids"]
    for i in range(40):
        r = api.rpc("cast_vote", {"poll_id": poll["poll_id"], "option_ids": [options[i % 3]],
                                  "voter_fingerprint": fingerprint()})
        assert r.status == 200, r.body
    for _ in range(20):
        voter = user()
        for option in (options[0], options[1]):  # recorded, then changed
            r = api.rpc("cast_vote", {"poll_id": poll["poll_id"], "option_ids": [option]}, claims=voter)
            assert r.status == 200, r.body
    for _ in range(10):
        r = api.rpc("cast_vote", {"poll_id": poll["poll_id"], "option_ids": [], "voter_fingerprint": fingerprint()})
        assert (r.status, r.body["code"]) == (400, "invalid_ballot"), r.body
    yield {"recorded": 60, "changed": 20, "rejected": 10, "finished_at": time.monotonic()}


def read(conn: psycopg.Connection, view: str) -> list[dict]:
    cur = conn.execute(f"select * from monitoring.{view}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def flushed_counters(ops: psycopg.Connection, small_load: dict[str, int]) -> tuple[dict, dict]:
    """vote_rate and rollback_rate once the load's statistics are visible: an idle backend flushes its
    counters at most once a second, else up to 10 s later (PostgreSQL's PGSTAT_IDLE_INTERVAL)."""
    deadline = time.monotonic() + 20
    while True:
        votes, tx = read(ops, "vote_rate")[0], read(ops, "rollback_rate")[0]
        if (votes["ballots_inserted_total"] >= small_load["recorded"]
                and votes["ballots_updated_total"] >= small_load["changed"]
                and tx["xact_rollback"] >= small_load["rejected"]) or time.monotonic() > deadline:
            return votes, tx
        time.sleep(0.5)


def test_views_return_sane_values_under_a_small_load(small_load, ops_url, stack) -> None:
    with psycopg.connect(ops_url, autocommit=True) as ops:
        votes = read(ops, "vote_rate")[0]
        assert votes["window_seconds"] == 10
        if time.monotonic() - small_load["finished_at"] < 8:  # the window reads the ballots: no lag
            assert votes["ballots_in_window"] >= small_load["recorded"]
            assert float(votes["votes_per_second"]) >= small_load["recorded"] / 10
        votes, tx = flushed_counters(ops, small_load)
        assert votes["ballots_inserted_total"] >= small_load["recorded"]
        assert votes["ballots_updated_total"] >= small_load["changed"]

        assert tx["xact_commit"] > small_load["recorded"] and tx["xact_rollback"] >= small_load["rejected"]
        assert 0 < tx["rollback_ratio"] < 1

        conns = read(ops, "connections")[0]
        assert conns["connections"] >= 1 and conns["active"] >= 1, "this very query is active"
        assert conns["max_connections"] == 300 and conns["waiting"] >= 0
        assert 0 < conns["usage_ratio"] < 1

        cache = read(ops, "cache_hit_ratio")[0]
        assert cache["blks_hit"] > 0 and 0 < cache["cache_hit_ratio"] <= 1

        latency = {r["function_name"]: r for r in read(ops, "api_latency")}
        assert latency["cast_vote"]["calls"] >= small_load["recorded"] + small_load["changed"]
        assert latency["cast_vote"]["mean_exec_ms"] > 0
        assert latency["cast_vote"]["max_exec_ms"] >= latency["cast_vote"]["mean_exec_ms"]
        assert "poll_results" not in latency or latency["poll_results"]["calls"] >= 1
        top = read(ops, "statement_latency")
        assert 1 <= len(top) <= 20 and all(r["calls"] >= 1 for r in top)

        limits = {r["limit_name"]: r for r in read(ops, "rate_limits")}
        assert set(limits) == {"request", "fingerprint"}


def test_aggregation_backlog_counts_slots_of_exited_backends(admin, make_poll) -> None:
    poll = make_poll()
    with admin.transaction():  # never committed: the pg_cron compaction cannot merge the row under us
        before = read(admin, "aggregation_backlog")[0]
        admin.execute("insert into voting.tally_slots (poll_id, slot, ballots, votes) values (%s, %s, 0, '{0,0,0}')",
                      (poll.poll_id, 2_000_000_000))  # no backend has this pid
        after = read(admin, "aggregation_backlog")[0]
        raise psycopg.Rollback()
    assert after["pending_slots"] == before["pending_slots"] + 1
    assert after["polls_pending"] >= 1 and after["slot_rows"] == before["slot_rows"] + 1


def test_vote_rate_window_is_a_bounded_index_scan(admin) -> None:
    """The 10-second window reads the ballots through the BRIN index on cast_at, not a full scan."""
    admin.execute("set enable_seqscan = off")  # a tiny test table would otherwise be seq-scanned anyway
    try:
        plan = "\n".join(r[0] for r in admin.execute(
            "explain select count(*) from voting.ballots where cast_at >= now() - interval '10 seconds'").fetchall())
    finally:
        admin.execute("reset enable_seqscan")
    assert "Bitmap Index Scan" in plan and "cast_at" in plan and "Seq Scan" not in plan, plan


@pytest.mark.parametrize("role", API_ROLES)
@pytest.mark.parametrize("view", VIEWS)
def test_monitoring_is_not_readable_by_api_roles(stack, role, view) -> None:
    with psycopg.connect(stack.direct_api_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("select set_config('role', %s, true)", (role,))
                conn.execute(f"select * from monitoring.{view}")


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_is_readable_by_ops(ops_url, view) -> None:
    with psycopg.connect(ops_url, autocommit=True) as ops:
        ops.execute(f"select * from monitoring.{view}").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ops.execute("select count(*) from voting.ballots")


def test_stats_once_json_from_the_cli(stack, small_load, ops_url) -> None:
    """`pgvote stats --once --json` with the stack's URLs, as a script would run it."""
    with psycopg.connect(ops_url, autocommit=True) as ops:
        flushed_counters(ops, small_load)  # PgBouncer's backends stay up: their statistics come when flushed
    pgvote = Path(sys.executable).parent / "pgvote"
    out = subprocess.run([str(pgvote), "stats", "--once", "--json", "--database-url", ops_url,
                          "--bouncer-admin-url", stack.bouncer_admin_url],
                         capture_output=True, text=True, check=True, timeout=60)
    sample = json.loads(out.stdout)
    assert sample["errors"] == {}
    db = sample["database"]
    assert set(db) == {"vote_rate", "rollback_rate", "connections", "aggregation_backlog", "cache_hit_ratio",
                       "api_latency", "rate_limits"}
    assert db["vote_rate"]["ballots_inserted_total"] >= small_load["recorded"]
    assert db["connections"]["max_connections"] == 300
    pools = {(p["database"], p["user"]): p for p in sample["pgbouncer"]["pools"]}
    # PostgREST's requests run on the session-mode alias (db/pgbouncer.ini); other clients use `pgvote`
    assert pools[("pgvote_session", "authenticator")]["pool_mode"] == "session"
    assert any(s["database"] == "pgvote_session" and s["total_xact_count"] > 0 for s in sample["pgbouncer"]["stats"])
    assert any(d["name"] == "pgvote" and d["pool_size"] == 40 for d in sample["pgbouncer"]["databases"])


def test_stats_without_bouncer_and_without_database_fails_in_one_line(tmp_path) -> None:
    pgvote = Path(sys.executable).parent / "pgvote"
    out = subprocess.run([str(pgvote), "--state-dir", str(tmp_path / "none"), "stats", "--once", "--json",
                          "--bouncer-admin-url", "none"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 1
    assert "error:" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_live_dashboard_renders_rates_between_samples(stack, small_load, api: ApiClient) -> None:
    console = Console(record=True, width=200, force_terminal=False)
    stats.live(stack.admin_url, stack.bouncer_admin_url, interval=0.3, console=console, max_samples=2)
    screen = console.export_text()
    for title in ("Votes", "Transactions", "Connections", "Aggregation / cache", "API latency", "PgBouncer pools"):
        assert title in screen
    assert "cast_vote" in screen and "authenticator" in screen


def test_collector_survives_its_database_connection_being_terminated(stack, admin) -> None:
    """The collector's backend terminated between two samples (as a server restart or an idle-session
    kill would): the next sample reports it instead of ending the dashboard, the one after has the views."""
    views = set(stats.SINGLE_ROW_VIEWS + stats.MULTI_ROW_VIEWS)
    with contextlib.closing(stats.Collector(stack.admin_url)) as collector:
        assert set(collector.sample()["database"]) == views
        backend = collector.conns["database"].info.backend_pid
        assert admin.execute("select pg_terminate_backend(%s, 10000)", (backend,)).fetchone() == (True,)
        lost = collector.sample()
        assert "database" in lost["errors"] and lost["database"] == {}, lost
        again = collector.sample()
        assert "database" not in again["errors"] and set(again["database"]) == views, again["errors"]
        assert collector.conns["database"].info.backend_pid != backend


def test_rates_are_deltas_per_second() -> None:
    before = {"database": {"rollback_rate": {"xact_commit": 100, "xact_rollback": 10},
                           "vote_rate": {"ballots_inserted_total": 1000, "ballots_updated_total": 5}},
              "pgbouncer": {"stats": [{"database": "pgvote", "total_xact_count": 50}]}}
    after = {"database": {"rollback_rate": {"xact_commit": 190, "xact_rollback": 20},
                          "vote_rate": {"ballots_inserted_total": 1400, "ballots_updated_total": 5}},
             "pgbouncer": {"stats": [{"database": "pgvote", "total_xact_count": 250}]}}
    r = stats.rates(before, after, 2.0)
    assert r["commits_per_s"] == 45 and r["rollbacks_per_s"] == 5 and r["rollback_ratio"] == 0.1
    assert r["ballots_inserted_per_s"] == 200 and r["ballots_updated_per_s"] == 0
    assert r["pgbouncer_pgvote_xact_per_s"] == 100
    assert stats.rates(None, after, 1.0)["commits_per_s"] is None
