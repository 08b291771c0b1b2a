"""`pgvote grow`: a sharded stack from N to 2N shards, online.

docs/scaling.md ("Growing from N to 2N shards") gives the mapping, the router's per-poll switch, the
four steps of a move (fence and take out, decide, switch, release; the step numbers below are its) and
how `recover` settles a run that died part-way: forward when the target holds the poll, else back.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from pgvote.shards import CLUSTER, ShardCluster, ShardedStack, check_count, share_voter_key_secret

PREFIX = "pgvote-move-"  # prepared transactions of moves: PREFIX || poll id
FENCE = ("select pg_advisory_xact_lock(internal.advisory_lock_namespace('poll_fence'), "
         "internal.poll_fence_lock_key(%s))")
TABLES = ("voting.polls", "voting.poll_options", "voting.ballots")  # in insert order; tallies are rebuilt


def grow(stack: ShardedStack, progress: Callable[[str], None] = lambda message: None) -> int:
    """Double the shards of a running sharded stack; returns how many polls moved."""
    return move_polls(stack, add_shards(stack, progress), progress)


def add_shards(stack: ShardedStack, progress: Callable[[str], None] = lambda message: None) -> list[ShardCluster]:
    """Start N new shards (full schema, the router's secret), give the router's cluster their partitions
    with the growth switched on (one transaction: every poll keeps its shard until it moves; new polls
    are created where they belong among 2N), supervise them. Settles the moves an interrupted run left.
    The state dir remembers the growth before anything changes; a growth it remembers is resumed (every
    step is idempotent), and `pgvote up` meanwhile keeps all 2N running and routed."""
    if not stack.joining:
        check_count(2 * len(stack.shards))
        stack.joining = [ShardCluster(stack, i) for i in range(len(stack.shards), 2 * len(stack.shards))]
        with stack._locked():
            stack._save_state()
    for shard in stack.joining:
        progress(f"starting {shard.name}")
        shard.start()
        shard._migrate()
    share_voter_key_secret(stack.admin_url, [s.admin_url for s in stack.joining])
    with psycopg.connect(stack.admin_url) as router:
        router.execute("update router.growth set active = true, partitions = %s", (len(stack.shards),))
        present = router.execute("select array(select split_part(o, '=', 1) from unnest(srvoptions) o) "
                                 "from pg_foreign_server where srvname = %s", (CLUSTER,)).fetchone()
        missing = [s for s in stack.joining if f"p{s.index}" not in (present[0] if present else [])]
        if missing:
            options = sql.SQL(", ").join(sql.SQL("add {} {}").format(sql.Identifier(f"p{s.index}"),
                                                                      sql.Literal(s.conninfo())) for s in missing)
            router.execute(sql.SQL("alter server {} options ({})").format(sql.Identifier(CLUSTER), options))
    with stack._locked():
        stack._write_supervised_configs()  # the new shards restarted like the others from now on
    recover(stack.admin_url, stack.every)
    return stack.joining


def move_polls(stack: ShardedStack, new: list[ShardCluster],
               progress: Callable[[str], None] = lambda message: None) -> int:
    """Move every poll of the old shards whose partition is a new shard, then give pgvote_shards the 2N
    partitions and empty router.moved; returns how many polls moved."""
    every = stack.shards + new
    recover(stack.admin_url, every)
    moved = 0
    for shard in stack.shards:
        while leaving := _leaving(shard, len(every)):
            for poll_id, partition in leaving:
                move_poll(stack.admin_url, shard, every[partition], poll_id)
                moved += 1
            progress(f"{shard.name}: {moved} polls moved")
    # Calls that queued behind the last fences retry through router.moved: give them time to.
    time.sleep(1.0)
    with psycopg.connect(stack.admin_url) as router:  # one transaction: the hash alone again, over 2N
        router.execute("delete from router.moved")
        router.execute("update router.growth set active = false, partitions = %s", (len(every),))
    stack.shards, stack.joining = every, []
    with stack._locked():
        stack._save_state()
        stack._write_supervised_configs()
    return moved


def move_poll(router_url: str, source: ShardCluster, target: ShardCluster, poll_id: str) -> None:
    """Move one poll with its ballots from source to target while its votes go on (docs/scaling.md)."""
    rows = prepare_move(source, poll_id)
    copy_to(target, rows, poll_id)
    finish_move(router_url, source, PREFIX + poll_id, poll_id)


def prepare_move(source: ShardCluster, poll_id: str) -> dict[str, bytes]:
    """Step 1: fence the poll on its shard, take its rows out and prepare their deletion; returns the rows."""
    with psycopg.connect(source.admin_url, autocommit=True) as src:
        src.execute("begin")
        src.execute(FENCE, (poll_id,))
        rows = {table: _copy_out(src, table, poll_id) for table in TABLES}
        src.execute("delete from voting.ballots where poll_id = %s", (poll_id,))
        src.execute("delete from voting.tally_slots where poll_id = %s", (poll_id,))
        src.execute("delete from voting.polls where poll_id = %s", (poll_id,))  # its options go with it
        src.execute(sql.SQL("prepare transaction {}").format(sql.Literal(PREFIX + poll_id)))
    return rows


def copy_to(target: ShardCluster, rows: dict[str, bytes], poll_id: str) -> None:
    """Step 2, the decision: the poll, its options and ballots on the target, its tallies rebuilt, committed."""
    with psycopg.connect(target.admin_url) as tgt:
        for table in TABLES:
            with tgt.cursor().copy(sql.SQL("copy {} from stdin (format binary)").format(sql.SQL(table))) as copy:
                copy.write(rows[table])
        tgt.execute("select internal.rebuild_tallies(%s)", (poll_id,))


def recover(router_url: str, shards: list[ShardCluster]) -> None:
    """Settle the moves an interrupted run left prepared: forward when the target holds the poll, else back."""
    for shard in shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            for (gid,) in conn.execute("select gid from pg_prepared_xacts where database = current_database() "
                                       "and gid like %s", (PREFIX + "%",)).fetchall():
                poll_id = gid.removeprefix(PREFIX)
                if any(_holds(s, poll_id) for s in shards if s is not shard):
                    finish_move(router_url, shard, gid, poll_id)
                else:
                    conn.execute(sql.SQL("rollback prepared {}").format(sql.Literal(gid)))


def finish_move(router_url: str, source: ShardCluster, gid: str, poll_id: str) -> None:
    """Steps 3 and 4: the router routes the poll to its new shard, then the source's prepared delete commits."""
    with psycopg.connect(router_url, autocommit=True) as router:
        router.execute("insert into router.moved (poll_id) values (%s) on conflict do nothing", (poll_id,))
    with psycopg.connect(source.admin_url, autocommit=True) as src:
        src.execute(sql.SQL("commit prepared {}").format(sql.Literal(gid)))


def _copy_out(conn: psycopg.Connection, table: str, poll_id: str) -> bytes:
    query = sql.SQL("copy (select * from {} where poll_id = {}) to stdout (format binary)").format(
        sql.SQL(table), sql.Literal(poll_id))
    with conn.cursor().copy(query) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def _leaving(shard: ShardCluster, partitions: int) -> list[tuple[str, int]]:
    """The polls of a shard whose partition among `partitions` is another shard (router.poll_shard's hash),
    each with that partition."""
    with psycopg.connect(shard.admin_url, autocommit=True) as conn:
        return [(r[0], int(r[1])) for r in conn.execute(
            "select poll_id::text, hashtext(poll_id::text) & %(mask)s from voting.polls"
            " where hashtext(poll_id::text) & %(mask)s <> %(shard)s", {"mask": partitions - 1, "shard": shard.index}).fetchall()]


def _holds(shard: ShardCluster, poll_id: str) -> bool:
    with psycopg.connect(shard.admin_url, autocommit=True) as conn:
        return conn.execute("select from voting.polls where poll_id = %s", (poll_id,)).fetchone() is not None
