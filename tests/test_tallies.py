"""Tallies: exact under concurrent load over HTTP, rebuildable from ballots, compacted without
loss, and free of lock waits between voters (no hot row)."""
from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg

from pgvote.bench.scenarios import lock_waits
from pgvote.http import ApiClient

from helpers import Poll, counts_from_ballots, results_counts, stored_ballots, user
from parallel_clients import cast, fresh_results, in_parallel


def assert_tallies_equal_ballots(api: ApiClient, admin: psycopg.Connection, poll_id: str) -> None:
    results = fresh_results(api, poll_id)
    assert results.body["total_ballots"] == stored_ballots(admin, poll_id)
    assert results_counts(results) == counts_from_ballots(admin, poll_id)


def test_tallies_equal_ballots_after_concurrent_revotes_and_multi_choice(make_poll, admin, api) -> None:
    """64 HTTP clients, 40 signed-in voters each, on one single-ballot multi-choice poll and one
    multiple-vote poll; half the voters revote twice (tallies move between options)."""
    single = make_poll(options=6, max_choices=3, allow_revote=True)
    multiple = make_poll(options=4, max_choices=2, allow_multiple_votes=True)
    clients, per_client = 64, 40

    def work(i: int) -> Counter:
        rng, statuses = random.Random(i), Counter()
        for j in range(per_client):
            voter = user(f"tally-{single.poll_id}-{i}-{j}")
            for _ in range(3 if j % 2 else 1):
                r = cast(api, single, rng.sample(single.option_ids, rng.randint(1, 3)), claims=voter)
                statuses[(r.status, str(r.body.get("code")))] += 1
            r = cast(api, multiple, rng.sample(multiple.option_ids, rng.randint(1, 2)), claims=voter)
            statuses[(r.status, str(r.body.get("code")))] += 1
        return statuses

    statuses = sum(in_parallel(clients, work), Counter())
    assert {status for status, _ in statuses} == {200}, statuses
    for poll in (single, multiple):
        assert_tallies_equal_ballots(api, admin, poll.poll_id)
    assert stored_ballots(admin, single.poll_id) == clients * per_client
    assert stored_ballots(admin, multiple.poll_id) == clients * per_client


def test_rebuild_tallies_recounts_from_ballots(make_poll, admin, api) -> None:
    poll = make_poll(options=3, max_choices=2)
    for n in range(30):
        r = cast(api, poll, poll.option_ids[: 1 + n % 2], voter_fingerprint=f"rebuild-{poll.poll_id}-{n}")
        assert r.status == 200, r.body
    admin.execute("update voting.tally_slots set ballots = ballots + 7, votes[1] = votes[1] - 3 "
                  "where poll_id = %s", (poll.poll_id,))  # damage the tallies
    assert fresh_results(api, poll.poll_id).body["total_ballots"] != 30

    rebuilt = admin.execute("select internal.rebuild_tallies(%s)", (poll.poll_id,)).fetchone()[0]
    assert rebuilt == {"poll_id": poll.poll_id, "ballots": 30, "votes": [30, 15, 0]}
    assert_tallies_equal_ballots(api, admin, poll.poll_id)
    assert admin.execute("select count(*) from voting.tally_slots where poll_id = %s",
                         (poll.poll_id,)).fetchone()[0] == 1


def cast_as_anon_on_own_backend(url: str, poll: Poll, votes: list[tuple[str, str]]) -> None:
    """(option, fingerprint) votes on a direct connection, as PostgREST calls cast_vote for an anonymous
    caller (role anon for the transaction), then the connection closes: its backend exits."""
    with psycopg.connect(url, autocommit=True) as conn:
        for option, voter in votes:
            with conn.transaction():
                conn.execute("set local role anon")
                conn.execute("select api.cast_vote(%s, array[%s]::uuid[], %s)", (poll.poll_id, option, voter))


def test_compaction_merges_slots_of_exited_backends_without_changing_results(stack, make_poll, admin, api) -> None:
    """Direct connections (behind PgBouncer backends outlive their clients): each has its own
    backend and slot; once they close, their slots are merged into slot 0 and the results
    stay the same. The test holds the tally_maintenance lock for its whole run (advisory locks
    are re-entrant within a session, so its own compaction still runs): pg_cron's
    every-minute compaction would otherwise merge the slots before they are counted."""
    poll = make_poll(options=3)
    with psycopg.connect(stack.admin_url, autocommit=True) as maintenance:
        maintenance.execute("select pg_advisory_lock(internal.advisory_lock_namespace('tally_maintenance'), 0)")
        in_parallel(8, lambda i: cast_as_anon_on_own_backend(
            stack.direct_api_url, poll,
            [(poll.option_ids[(i + j) % 3], f"compact-{poll.poll_id}-{i}-{j}") for j in range(10)]))
        before = fresh_results(api, poll.poll_id).body
        assert before["total_ballots"] == 80
        slots = admin.execute("select count(*) from voting.tally_slots where poll_id = %s",
                              (poll.poll_id,)).fetchone()[0]
        assert slots >= 8, "every backend counted in its own slot"

        deadline = time.monotonic() + 10  # closed backends leave pg_stat_activity asynchronously
        while admin.execute("select count(*) from voting.tally_slots t where poll_id = %s and slot <> 0 and exists "
                            "(select from pg_stat_activity a where a.pid = t.slot)", (poll.poll_id,)).fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert maintenance.execute("select internal.compact_tally_slots()").fetchone()[0] >= 8
    assert admin.execute("select array_agg(slot) from voting.tally_slots where poll_id = %s",
                         (poll.poll_id,)).fetchone()[0] == [0]
    assert fresh_results(api, poll.poll_id).body == before
    assert_tallies_equal_ballots(api, admin, poll.poll_id)


def test_rebuild_waits_for_a_running_compaction(stack, make_poll, admin, api) -> None:
    """Interleaving: a compaction has merged a retired slot into a new slot-0 row and not yet
    committed when an operator rebuilds the same poll's tallies. Both take the
    tally_maintenance lock, so the rebuild waits for the compaction's commit and then recounts
    (it once failed with a duplicate key on slot 0, the row the compaction had just created)."""
    poll = make_poll(options=3)
    for n in range(5):
        cast(api, poll, [poll.option_ids[n % 3]], voter_fingerprint=f"race-{poll.poll_id}-{n}")
    retired_pid = admin.execute("select max(pid) + 100000 from pg_stat_activity").fetchone()[0]
    admin.execute("insert into voting.tally_slots (poll_id, slot, ballots, votes) values (%s, %s, 0, '{0,0,0}')",
                  (poll.poll_id, retired_pid))  # the slot of a backend that has exited
    assert admin.execute("select count(*) from voting.tally_slots where poll_id = %s and slot = 0",
                         (poll.poll_id,)).fetchone()[0] == 0

    with psycopg.connect(stack.admin_url) as compaction, ThreadPoolExecutor(max_workers=1) as pool:
        compaction.execute("select internal.compact_tally_slots()")

        def rebuild() -> dict:
            with psycopg.connect(stack.admin_url, autocommit=True) as operator:
                return operator.execute("select internal.rebuild_tallies(%s)", (poll.poll_id,)).fetchone()[0]

        rebuilt = pool.submit(rebuild)
        deadline = time.monotonic() + 20
        while not admin.execute("select exists (select from pg_stat_activity where wait_event_type = 'Lock' "
                                "and query like '%%rebuild_tallies%%' and pid <> pg_backend_pid())").fetchone()[0]:
            assert time.monotonic() < deadline, "the rebuild never waited"
            time.sleep(0.02)
        compaction.commit()
        assert rebuilt.result(timeout=30)["ballots"] == 5
    assert_tallies_equal_ballots(api, admin, poll.poll_id)
    assert admin.execute("select array_agg(slot) from voting.tally_slots where poll_id = %s",
                         (poll.poll_id,)).fetchone()[0] == [0]


def test_sampler_sees_the_waits_of_a_shared_counter_row(stack, admin) -> None:
    """Control: the original guide's design (every vote updates one counter row) makes
    voters wait on each other's row lock, and the sampler sees it."""
    admin.execute("create table if not exists public.hot_counter_control (id int primary key, n bigint)")
    admin.execute("insert into public.hot_counter_control values (1, 0) on conflict do nothing")

    def bump(_: int) -> None:
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            for _ in range(30):
                with conn.transaction():
                    conn.execute("update public.hot_counter_control set n = n + 1 where id = 1")
                    conn.execute("select pg_sleep(0.002)")

    with lock_waits(stack.admin_url) as waits:
        in_parallel(16, bump)
    assert any(locktype in ("transactionid", "tuple") for locktype, _ in waits.seen), waits.seen


def test_hot_poll_voters_never_wait_for_each_other(stack, make_poll, api) -> None:
    """64 HTTP clients voting on ONE poll: the only lock waits seen are relation-extension
    waits of the ballots partition, never a row, tuple, transaction or advisory lock: no
    voter waits on a tally (or anything else) held by another."""
    poll = make_poll(options=4, max_choices=2)

    def work(i: int) -> None:
        rng = random.Random(i)
        for j in range(40):
            r = cast(api, poll, rng.sample(poll.option_ids, 2), claims=user(f"hot-{poll.poll_id}-{i}-{j}"))
            assert r.status == 200, r.body

    with lock_waits(stack.admin_url) as waits:
        in_parallel(64, work)
    assert waits.samples > 10
    assert {locktype for locktype, _ in waits.seen} <= {"extend"}, waits.seen


def test_compaction_is_scheduled_in_postgresql(admin) -> None:
    """pg_cron runs internal.compact_tally_slots() every minute: no extra daemon."""
    rows = admin.execute("select schedule, command from cron.job where jobname = 'pgvote-compact-tally-slots'").fetchall()
    assert rows == [("* * * * *", "select internal.compact_tally_slots()")]


def ballots_partitions_locked(conn: psycopg.Connection, poll_id: str, option_id: str, fingerprint: str) -> list[str]:
    """Partitions of voting.ballots locked by one cast_vote call (transaction rolled back)."""
    with conn.transaction(force_rollback=True):
        conn.execute("select api.cast_vote(%s, array[%s]::uuid[], %s)", (poll_id, option_id, fingerprint))
        rows = conn.execute("""select distinct c.oid::regclass::text from pg_locks l
                               join pg_class c on c.oid = l.relation and c.relkind = 'r'
                               join pg_inherits i on i.inhrelid = c.oid
                               where l.pid = pg_backend_pid() and l.locktype = 'relation'
                                 and i.inhparent = 'voting.ballots'::regclass""").fetchall()
    return [r[0] for r in rows]


def test_a_vote_touches_one_ballots_partition_even_with_cached_generic_plans(stack, make_poll) -> None:
    """Cached generic plans lock every partition before runtime pruning (PostgreSQL <= 17):
    after many calls in one session, a new ballot, an unchanged re-cast and a revote must
    each still lock a single ballots partition."""
    poll = make_poll(options=2)
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        for n in range(12):  # past plancache's five custom plans
            conn.execute("select api.cast_vote(%s, array[%s]::uuid[], %s)", (poll.poll_id, poll.option_ids[n % 2], "warm"))
        new = ballots_partitions_locked(conn, poll.poll_id, poll.option_ids[0], f"fresh-{poll.poll_id}")
        unchanged = ballots_partitions_locked(conn, poll.poll_id, poll.option_ids[1], "warm")
        revote = ballots_partitions_locked(conn, poll.poll_id, poll.option_ids[0], "warm")
    assert len(new) == 1 and len(unchanged) == 1 and len(revote) == 1, (new, unchanged, revote)
