"""The partition manager: status, create, verify and the online split of hash partitions.

Destructive tests run on scratch databases of the test cluster (migrated with
pgvote.migrate.upgrade); the shared database only sees a split of the partition that this
file's own polls live in, and is left with `verify` healthy.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from partitions.cli import call
from pgvote import migrate

from helpers import Poll, counts_from_ballots, fingerprint, results_counts
from parallel_clients import cast, fresh_results

PGVOTE = str(Path(sys.executable).parent / "pgvote")
VOTERS = 20  # parallel HTTP clients (nginx -> PostgREST -> PgBouncer) during the split


# --------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------


def pgvote(url: str, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a DBA runs it, on DATABASE_URL=url; crash_at makes the split's backend terminate
    itself at that point (partman.crash_point)."""
    env = {**os.environ, "DATABASE_URL": url, "COLUMNS": "200"}
    env.pop("PGOPTIONS", None)
    if crash_at:
        env["PGOPTIONS"] = f"-c partman.crash_at={crash_at}"
    return subprocess.run([PGVOTE, "partitions", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def scratch(stack) -> Iterator[str]:
    """A freshly migrated database of the test cluster, dropped afterwards."""
    name = f"partitions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = stack.admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def seed_ballots(url: str, n: int = 16_000) -> None:
    """n ballots spread over every partition (bulk, as superuser: scratch databases only)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
                        select gen_random_uuid(), sha256(g::text::bytea), '00000000-0000-0000-0000-000000000000',
                               array[gen_random_uuid()]
                        from generate_series(1, %s) g""", (n,))


def digest(url: str, table: str = "voting.ballots") -> tuple[int, str]:
    """Row count and a digest of every row: equal means nothing was lost, duplicated or changed."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("select count(*), coalesce(md5(string_agg(b::text, ',' order by b::text)), '') "
                                   "from {} b").format(sql.SQL(table))).fetchone()
    return int(row[0]), str(row[1])


def catalog_fingerprint(url: str) -> list[tuple]:
    """Relations, bounds, triggers and functions of schema voting: equal means no DDL ran."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            """select 'rel', c.relname, c.relkind::text, c.relispartition::text, coalesce(pg_get_expr(c.relpartbound, c.oid), '')
               from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'voting'
               union all select 'trigger', tgname, tgrelid::regclass::text, '', '' from pg_trigger where not tgisinternal
               union all select 'function', p.proname, '', '', '' from pg_proc p
                         join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'voting'
               order by 1, 2, 3""").fetchall()


def partitions(url: str, table: str = "voting.ballots") -> list[tuple[str, int, int]]:
    """(name, modulus, remainder) of the attached partitions, by partman.partitions."""
    with psycopg.connect(url) as conn:
        return conn.execute("select split_part(name, '.', 2), modulus, remainder from partman.partitions(%s) "
                            "where not pending", (table,)).fetchall()


def healthy(conn: psycopg.Connection) -> bool:
    return not conn.execute("select count(*) from partman.verify('voting') where severity = 'problem'").fetchone()[0]


def partition_of(admin: psycopg.Connection, poll_id: str) -> str:
    """The partition a poll's ballots go to, computed from the bounds."""
    found = admin.execute("""select name from partman.partitions('voting.ballots') where not pending
                             and satisfies_hash_partition('voting.ballots'::regclass, modulus, remainder, %s::uuid)""",
                          (poll_id,)).fetchone()
    assert found, f"no partition for {poll_id}"
    return str(found[0])


def wait_for_split_sessions_to_end(url: str) -> None:
    """After a SIGKILL the backend ends once it notices its client is gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(200):
            if not conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                                "and application_name like 'pgvote split%'").fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the killed split's backend is still there")


def mirror_functions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("select proname from pg_proc where proname like '%split_mirror'")]


# --------------------------------------------------------------------------------------------------
# coverage arithmetic (overlaps cannot be made in PostgreSQL: it refuses overlapping bounds)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds, gaps, overlaps", [
    ([("a", 2, 0), ("b", 4, 1), ("c", 4, 3)], [], []),
    ([("a", 16, r) for r in range(16)], [], []),
    ([("a", 2, 0), ("b", 4, 1)], [(4, 3)], []),
    ([], [(1, 0)], []),
    ([("a", 4, 0), ("b", 4, 2)], [(2, 1)], []),  # two missing quarters are one missing half
    ([("a", 2, 0), ("b", 4, 0), ("c", 2, 1)], [], [("a", "b", [(4, 0)])]),
    ([("a", 1, 0), ("b", 1, 0)], [], [("a", "b", [(1, 0)])]),
    ([("a", 3, 0), ("b", 3, 1), ("c", 2, 0), ("d", 6, 5)], [], [("a", "c", [(6, 0)]), ("b", "c", [(6, 4)])]),
])
def test_coverage_finds_gaps_and_overlaps_in_bound_lists(admin, bounds, gaps, overlaps) -> None:
    found = admin.execute("select kind, first, second, modulus, remainder from partman.coverage(%s, %s, %s)",
                          ([b[0] for b in bounds], [b[1] for b in bounds], [b[2] for b in bounds])).fetchall()
    assert [(m, r) for kind, _, _, m, r in found if kind == "gap"] == gaps
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kind, a, b, m, r in found:
        if kind == "overlap":
            pairs.setdefault((a, b), []).append((m, r))
    assert [(a, b, s) for (a, b), s in pairs.items()] == overlaps


def test_coverage_rejects_impossible_bounds(admin) -> None:
    found = admin.execute("select kind, first from partman.coverage(array['a', 'b'], array[4, 1], array[4, 0])")
    assert found.fetchall() == [("invalid", "a: modulus 4, remainder 4")]


def test_compress_describes_gap_slots_coarsest_first(admin) -> None:
    def compress(slots: set[int], total: int) -> list[tuple[int, int]]:
        return admin.execute("select * from partman.compress(%s, %s)", (sorted(slots), total)).fetchall()
    assert compress({3, 19}, 32) == [(16, 3)]
    assert compress({3}, 32) == [(32, 3)]
    assert compress(set(range(8)), 8) == [(1, 0)]


def test_partition_bounds_are_parsed_as_postgres_prints_them(scratch) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("create table voting.kinds (k int not null) partition by list (k)")
        conn.execute("create table voting.kinds_in partition of voting.kinds for values in (1, 2)")
        conn.execute("create table voting.kinds_d partition of voting.kinds default")
        conn.execute("create table voting.ranged (k int not null) partition by range (k)")
        conn.execute("create table voting.ranged_r partition of voting.ranged for values from (1) to (5)")
        found = conn.execute("select name, kind, modulus, remainder from partman.partitions('voting.kinds') union all "
                             "select name, kind, modulus, remainder from partman.partitions('voting.ranged') union all "
                             "(select name, kind, modulus, remainder from partman.partitions('voting.ballots') "
                             "where remainder = 3)").fetchall()
    assert sorted(found) == [("voting.ballots_m16_r3", "hash", 16, 3), ("voting.kinds_d", "default", None, None),
                             ("voting.kinds_in", "list", None, None), ("voting.ranged_r", "range", None, None)]


# --------------------------------------------------------------------------------------------------
# status / verify / create
# --------------------------------------------------------------------------------------------------


def test_status_exact_counts_match_count_star(stack, admin, api, make_poll) -> None:
    for size in (5, 12, 20):
        poll = make_poll()
        for _ in range(size):
            r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]],
                                      "voter_fingerprint": fingerprint()})
            assert r.status == 200
    done = pgvote(stack.admin_url, "status", "--exact", "--json")
    assert done.returncode == 0, done.stderr
    [table] = [t for t in json.loads(done.stdout)["tables"] if t["table"] == "voting.ballots"]
    for p in table["partitions"]:
        count = admin.execute(sql.SQL("select count(*) from {}").format(sql.SQL(p["name"]))).fetchone()[0]
        assert (p["rows"], p["exact"]) == (count, True), p["name"]
        assert p["modulus"] and p["remainder"] is not None and p["bytes"] > 0
    assert table["total_rows"] == admin.execute("select count(*) from voting.ballots").fetchone()[0]
    busiest = max(table["partitions"], key=lambda p: p["rows"])
    poll, rows = busiest["largest"][0]["value"], busiest["largest"][0]["rows"]
    assert rows == admin.execute("select count(*) from voting.ballots where poll_id = %s", (poll,)).fetchone()[0]
    assert table["skew"] == pytest.approx(busiest["rows"] / (table["total_rows"] / len(table["partitions"])))


def test_status_table_renders_for_people(stack) -> None:
    done = pgvote(stack.admin_url, "status")
    assert done.returncode == 0, done.stderr
    assert "voting.ballots: hash on (poll_id)" in done.stdout and "skew" in done.stdout


def test_verify_is_healthy_on_the_migrated_database(stack) -> None:
    done = pgvote(stack.admin_url, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cover the hash space exactly once" in done.stdout


def test_verify_detects_a_detached_partition_as_a_gap_and_resume_closes_it(scratch) -> None:
    seed_ballots(scratch)
    before = digest(scratch)
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("alter table voting.ballots detach partition voting.ballots_m16_r5")
        findings = [m for m, in conn.execute("select message from partman.verify('voting')")]
        assert not healthy(conn)
    assert any("gap: no partition covers (modulus 16, remainder 5)" in m for m in findings), findings
    done = pgvote(scratch, "verify")
    assert done.returncode == 1 and "(modulus 16, remainder 5)" in done.stdout

    done = pgvote(scratch, "split", "--resume")
    assert done.returncode == 0, done.stderr
    assert pgvote(scratch, "verify").returncode == 0
    assert digest(scratch) == before
    assert {"ballots_m32_r5", "ballots_m32_r21"} <= {name for name, _, _ in partitions(scratch)}


def test_verify_detects_a_default_partition(scratch) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("create table voting.audit (k int not null) partition by list (k)")
        conn.execute("create table voting.audit_1 partition of voting.audit for values in (1)")
        conn.execute("create table voting.audit_default partition of voting.audit default")
        conn.execute("insert into voting.audit values (1), (2), (3)")
    done = pgvote(scratch, "verify", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["healthy"]
    problems = [f["message"] for f in report["findings"] if f["severity"] == "problem"]
    assert problems == [next(m for m in problems if "default partition voting.audit_default" in m)]
    status = json.loads(pgvote(scratch, "status", "--exact", "--json").stdout)
    audit = next(t for t in status["tables"] if t["table"] == "voting.audit")
    assert {p["name"]: p["rows"] for p in audit["partitions"]} == {"voting.audit_1": 1, "voting.audit_default": 2}


def test_verify_reports_a_pending_detach_and_resume_finishes_it(scratch) -> None:
    """A hand-run DETACH CONCURRENTLY cancelled in its second phase leaves the partition DETACH
    PENDING: PostgreSQL no longer routes inserts to it. verify says so; --resume finishes it."""
    seed_ballots(scratch)
    before = digest(scratch)
    with psycopg.connect(scratch) as reader, psycopg.connect(scratch, autocommit=True) as dba, \
            psycopg.connect(scratch, autocommit=True) as watcher:
        reader.execute("select count(*) from voting.ballots")  # an open transaction the detach must wait for
        pid = dba.info.backend_pid
        outcome: list[BaseException] = []

        def run_detach() -> None:
            try:
                dba.execute("alter table voting.ballots detach partition voting.ballots_m16_r7 concurrently")
            except psycopg.Error as exc:
                outcome.append(exc)

        detach = threading.Thread(target=run_detach)
        detach.start()
        for _ in range(200):
            if watcher.execute("select wait_event_type = 'Lock' from pg_stat_activity where pid = %s",
                               (pid,)).fetchone()[0]:
                break
            time.sleep(0.05)
        watcher.execute("select pg_cancel_backend(%s)", (pid,))
        detach.join()
        assert [type(e) for e in outcome] == [psycopg.errors.QueryCanceled]
        reader.rollback()
        assert watcher.execute("select inhdetachpending from pg_inherits "
                               "where inhrelid = 'voting.ballots_m16_r7'::regclass").fetchone()[0]
    done = pgvote(scratch, "verify")
    assert done.returncode == 1
    assert "DETACH PENDING" in done.stdout and "(modulus 16, remainder 7)" in done.stdout
    assert "ballots_m16_r7*" in pgvote(scratch, "status").stdout

    assert pgvote(scratch, "split", "--resume").returncode == 0
    assert pgvote(scratch, "verify").returncode == 0
    assert digest(scratch) == before


def test_create_builds_the_initial_set_once(scratch) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("create table voting.events (id uuid primary key, n int) partition by hash (id)")
    assert "gap" in pgvote(scratch, "verify").stdout

    dry = pgvote(scratch, "create", "--table", "voting.events", "--modulus", "8", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("create table if not exists") == 8
    assert len(partitions(scratch)) == 16
    assert not partitions(scratch, "voting.events"), "--dry-run created nothing"

    assert pgvote(scratch, "create", "--table", "voting.events", "--modulus", "8").returncode == 0
    again = pgvote(scratch, "create", "--table", "voting.events", "--modulus", "8")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert pgvote(scratch, "verify").returncode == 0
    for modulus, why in (("12", "power of two"), ("4", "another layout")):
        refused = pgvote(scratch, "create", "--table", "voting.events", "--modulus", modulus)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_split_all_doubles_every_partition_of_a_table(scratch) -> None:
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("create table voting.events (id uuid primary key, n int) partition by hash (id)")
        assert [r for r, in conn.execute("select partition from partman.create_partitions('voting.events', 4)")] == \
            [f"voting.events_m4_r{r}" for r in range(4)]
        conn.execute("insert into voting.events select gen_random_uuid(), g from generate_series(1, 4000) g")
    before = digest(scratch, "voting.events")
    done = pgvote(scratch, "-v", "split", "--all", "--table", "voting.events", "--batch-size", "300")
    assert done.returncode == 0, done.stderr
    assert "alter table voting.events attach partition voting.events_m8_r4" in done.stderr, "-v logs the statements"
    assert sorted((m, r) for _, m, r in partitions(scratch, "voting.events")) == [(8, r) for r in range(8)]
    assert digest(scratch, "voting.events") == before
    assert pgvote(scratch, "verify").returncode == 0


def test_a_refused_split_keeps_the_session_lock_until_the_next_split_of_that_session_releases_it(scratch) -> None:
    """A refusal raised after the split session lock was taken leaves it held by that session (a procedure
    cannot clean up around its COMMITs); the session's next split takes it once, not twice, and releases it."""
    with psycopg.connect(scratch, autocommit=True) as conn, psycopg.connect(scratch, autocommit=True) as other:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("call partman.split('voting.ballots')")
        assert refused.value.sqlstate == "PM001" and "not a partition" in str(refused.value)
        assert other.execute("select pid from partman.split_holder()").fetchone()[0] == conn.info.backend_pid
        assert call(conn, "split", "voting.ballots_m16_r1", 100, 0.0, 500, True) == [], "a dry run reports no result"
        assert other.execute("select count(*) from partman.split_holder()").fetchone()[0] == 0


def test_split_called_in_a_transaction_block_fails_and_changes_nothing(stack) -> None:
    """The procedures commit between their steps: inside a transaction block the first COMMIT fails and
    the whole block rolls back (from a migration, call them inside autocommit_block())."""
    before = catalog_fingerprint(stack.admin_url)
    with psycopg.connect(stack.admin_url) as conn, pytest.raises(psycopg.errors.InvalidTransactionTermination):
        conn.execute("call partman.split('voting.ballots_m16_r0')")
    assert catalog_fingerprint(stack.admin_url) == before


# --------------------------------------------------------------------------------------------------
# split: dry run, refusals, interruptions
# --------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_sql_and_changes_nothing(stack) -> None:
    before = catalog_fingerprint(stack.admin_url)
    source = "voting." + partitions(stack.admin_url)[0][0]
    one = pgvote(stack.admin_url, "split", source, "--dry-run")
    assert one.returncode == 0, one.stderr
    for expected in ("create trigger", "with batch as materialized", "lock table voting.ballots in access exclusive mode",
                     "detach partition", "attach partition", "drop table", "dry run"):
        assert expected in one.stdout
    every = pgvote(stack.admin_url, "split", "--all", "--dry-run")
    assert every.returncode == 0 and every.stdout.count("detach partition") == len(partitions(stack.admin_url))
    assert pgvote(stack.admin_url, "create", "--modulus", "16", "--dry-run").returncode in (0, 2)
    assert catalog_fingerprint(stack.admin_url) == before


@pytest.mark.parametrize("request_, why", [
    (("split", "voting.ballots"), "not a partition"),
    (("split", "voting.nope_m16_r0"), "not a partition"),
    (("split",), "say what to split"),
    (("split", "voting.ballots_m16_r0", "--all"), "say what to split"),
])
def test_split_refuses_unclear_requests_in_one_line(stack, request_, why) -> None:
    done = pgvote(stack.admin_url, *request_)
    assert done.returncode == 2 and why in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_killed_mid_copy_ends_its_backend_and_resume_completes_the_split(scratch) -> None:
    """SIGKILL of the CLI itself while the procedure copies: the backend notices the lost client at its next
    NOTICE and ends, leaving a split that status reports and --resume finishes with nothing lost."""
    seed_ballots(scratch)
    before = digest(scratch)
    env = {**os.environ, "DATABASE_URL": scratch}
    env.pop("PGOPTIONS", None)
    cli = subprocess.Popen([PGVOTE, "partitions", "split", "voting.ballots_m16_r4", "--batch-size", "50",
                            "--pause", "100"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(scratch, autocommit=True) as conn:
            for _ in range(400):  # until a few batches are in the targets
                if conn.execute("select count(*) from pg_class where relname = 'ballots_m32_r4'").fetchone()[0] and \
                        conn.execute("select count(*) from voting.ballots_m32_r4").fetchone()[0] > 60:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the copy did not start")
    finally:
        cli.kill()
        cli.wait()
    wait_for_split_sessions_to_end(scratch)
    status = json.loads(pgvote(scratch, "status", "--json").stdout)
    [unfinished] = next(t for t in status["tables"] if t["table"] == "voting.ballots")["unfinished_splits"]
    assert "voting.ballots_m16_r4" in unfinished and "interrupted before its switch" in unfinished
    assert pgvote(scratch, "split", "--resume").returncode == 0
    assert pgvote(scratch, "verify").returncode == 0
    assert digest(scratch) == before


def test_split_killed_after_its_switch_leaves_only_the_old_table_for_resume(scratch) -> None:
    seed_ballots(scratch)
    before = digest(scratch)
    killed = pgvote(scratch, "split", "voting.ballots_m16_r2", crash_at="after-switch")
    assert killed.returncode == 1 and "terminat" in killed.stderr, killed.stderr
    wait_for_split_sessions_to_end(scratch)
    verified = pgvote(scratch, "verify")
    assert verified.returncode == 0, "the switch committed: healthy"
    assert "voting.ballots_m16_r2_split_old is the old partition of a finished split" in verified.stdout
    assert digest(scratch) == before
    assert pgvote(scratch, "split", "--resume").returncode == 0
    with psycopg.connect(scratch) as conn:
        assert conn.execute("select to_regclass('voting.ballots_m16_r2_split_old')").fetchone()[0] is None


@pytest.mark.parametrize("crash_at", ["batch:3", "batch:3 without mirror", "switch"])
def test_killed_split_is_reported_and_resume_completes_it(scratch, crash_at) -> None:
    """SIGKILL mid-copy (after 3 committed batches) or inside the switch transaction (after the
    DETACH). Writes keep arriving between the crash and the resume: the mirror trigger, still
    in place, carries them (or, when somebody dropped it, resume notices and copies again)."""
    seed_ballots(scratch)
    source = "voting.ballots_m16_r0"
    killed = pgvote(scratch, "split", source, "--batch-size", "100", crash_at=crash_at.split()[0])
    assert killed.returncode == 1 and "terminat" in killed.stderr, killed.stderr
    wait_for_split_sessions_to_end(scratch)

    status = json.loads(pgvote(scratch, "status", "--json").stdout)
    [unfinished] = next(t for t in status["tables"] if t["table"] == "voting.ballots")["unfinished_splits"]
    assert source in unfinished and "interrupted before its switch" in unfinished
    verified = pgvote(scratch, "verify")
    assert verified.returncode == 1 and "--resume" in verified.stdout
    assert "cover the hash space exactly once" in verified.stdout, "the switch is atomic: no gap, ever"
    other = pgvote(scratch, "split", "voting.ballots_m16_r1")
    assert other.returncode == 2 and "unfinished split" in other.stderr

    with psycopg.connect(scratch, autocommit=True) as conn:
        if "without mirror" in crash_at:
            conn.execute(f"drop trigger pgvote_split_mirror on {source}")
        conn.execute(f"update {source} set option_ids = array[gen_random_uuid()], changed_at = now() "
                     "where voter_key < '\\x40'")  # about a quarter of the rows, copied or not
        conn.execute(f"""insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
                         select poll_id, sha256(voter_key), ballot_id, option_ids from {source} limit 50""")
    before = digest(scratch)

    resumed = pgvote(scratch, "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert pgvote(scratch, "verify").returncode == 0
    assert digest(scratch) == before
    assert {name for name, _, _ in partitions(scratch)} >= {"ballots_m32_r0", "ballots_m32_r16"}
    assert mirror_functions(scratch) == []


# --------------------------------------------------------------------------------------------------
# split under load (shared database: only the partition this test's polls live in)
# --------------------------------------------------------------------------------------------------


def polls_in_one_partition(make_poll, admin, n: int = 3) -> tuple[str, list[Poll]]:
    """Create single-ballot polls (revotes on) until n of them hash into the same partition."""
    first = make_poll(options=3, allow_revote=True)
    target = partition_of(admin, first.poll_id)
    polls = [first]
    for _ in range(400):
        if len(polls) == n:
            break
        poll = make_poll(options=3, allow_revote=True)
        if partition_of(admin, poll.poll_id) == target:
            polls.append(poll)
    assert len(polls) == n
    return target, polls


def test_split_under_cast_vote_load_loses_nothing(stack, make_poll, admin, api) -> None:
    """20 HTTP clients keep casting and changing ballots on polls stored in the
    partition being split, before, during and after the split: every call answers 200, every
    recorded ballot is stored once, every voter's stored ballot is the last one acknowledged,
    and poll_results equals the ballots."""
    source, polls = polls_in_one_partition(make_poll, admin)
    stop = threading.Event()
    split_running = threading.Event()
    recorded = Counter()
    during_split = Counter()
    final: dict[tuple[str, str], str] = {}  # (poll, voter) -> last acknowledged option
    statuses: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def voter_loop(i: int) -> None:
        rng = random.Random(i)
        mine: list[tuple[Poll, str]] = []
        while not stop.is_set():
            if mine and rng.random() < 0.5:
                poll, voter = rng.choice(mine)  # a revote (or an identical re-cast)
            else:
                poll, voter = rng.choice(polls), fingerprint()
                mine.append((poll, voter))
            r = cast(api, poll, [rng.choice(poll.option_ids)], voter_fingerprint=voter)
            with lock:
                statuses[(r.status, str(r.body.get("code")))] += 1
                if r.status == 200:
                    final[(poll.poll_id, voter)] = r.body["option_ids"][0]
                    recorded[poll.poll_id] += r.body["status"] == "recorded"
                    if split_running.is_set():
                        during_split[r.body["status"]] += 1

    with ThreadPoolExecutor(max_workers=VOTERS) as pool:
        futures = [pool.submit(voter_loop, i) for i in range(VOTERS)]
        try:
            while sum(recorded.values()) < 1500 and not any(f.done() for f in futures):
                time.sleep(0.05)
            with psycopg.connect(stack.admin_url, autocommit=True) as conn:
                split_running.set()
                [result] = call(conn, "split", source, 50, 10.0)
                split_running.clear()
            time.sleep(0.3)  # and a little after the switch
        finally:
            stop.set()
        for f in futures:
            f.result()

    assert {status for status, _ in statuses} == {200}, statuses
    assert result["rows_copied"] >= 1500 and result["batches"] > 1
    assert during_split["recorded"] > 0 and during_split["changed"] > 0, "votes and revotes ran during the split"

    ids = [p.poll_id for p in polls]
    stored = dict(admin.execute("select poll_id::text, count(*) from voting.ballots where poll_id = any(%s::uuid[]) "
                                "group by 1", (ids,)).fetchall())
    assert stored == dict(recorded), "stored = recorded, per poll"
    assert admin.execute("""select count(*) from (select 1 from voting.ballots where poll_id = any(%s::uuid[])
                            group by poll_id, voter_key having count(*) > 1) d""", (ids,)).fetchone()[0] == 0
    for poll in polls:
        expected = Counter({o: 0 for o in poll.option_ids})
        expected.update(opt for (pid, _), opt in final.items() if pid == poll.poll_id)
        assert counts_from_ballots(admin, poll.poll_id) == dict(expected), "every voter's last acknowledged ballot"
        assert results_counts(fresh_results(api, poll.poll_id)) == counts_from_ballots(admin, poll.poll_id)

    children = set(result["targets"])
    homes = {r[0] for r in admin.execute("select distinct tableoid::regclass::text from voting.ballots "
                                         "where poll_id = any(%s::uuid[])", (ids,))}
    assert homes <= children and admin.execute("select to_regclass(%s)", (source,)).fetchone()[0] is None
    assert healthy(admin)
    print(f"\nsplit under load: {result['rows_copied']} rows, {result['batches']} batches, "
          f"switch lock wait {result['lock_wait_ms']:.1f} ms, held {result['held_ms']:.1f} ms")
