"""Split one hash partition online: slice (m, r) becomes (2m, r) and (2m, r + m).

PostgreSQL has no SPLIT PARTITION for hash partitions, and hash bounds may not overlap, so the
rows are moved into two new tables that are attached in the same transaction that detaches the
old partition. The plan, and why:

1. **prepare** (one short transaction): create the targets `<table>_m<2m>_r<r>` and
   `_r<r+m>` unattached (`LIKE parent INCLUDING ALL`: same columns, primary key and indexes, so
   ATTACH adopts the indexes instead of building them), each with
   `CHECK (satisfies_hash_partition('<parent>'::regclass, 2m, r', <key>))` named
   `<target>_split_check`: ATTACH sees its partition constraint implied and skips the validation
   scan. In the same transaction the **mirror trigger** `pgvote_split_mirror` goes on the old
   partition (AFTER INSERT/UPDATE/DELETE, ENABLE ALWAYS): every write to the old partition is
   repeated, in the writer's own transaction, on the target its row hashes to
   (`INSERT .. ON CONFLICT (pk) DO UPDATE`). Chosen over a delta by `cast_at`/`changed_at`
   because (a) `now()` is the writer's transaction start, so a slow transaction can commit a row
   stamped before the copy started, (b) a timestamp delta needs a scan of the old partition
   without an index, inside the lock, and (c) it would tie the split to the ballots columns.
   With the mirror the targets are complete the moment the copy ends: the switch copies nothing.
   Chosen over a trigger that logs changed keys because the log must be replayed (in rounds, the
   last one under the lock) while the mirror needs no replay. The cost: writes to the slice being
   split do twice the work while the split runs (measured in docs/partitions.md).
2. **copy** in batches (keyset on the primary key, `INSERT .. ON CONFLICT DO NOTHING` into the
   target each row hashes to), one transaction per batch, with a progress bar. A row the mirror
   already wrote wins (it is newer than any copy of it); a copy that lands first is overwritten
   by the mirror's upsert; when both race, the unique index makes the later one wait for the
   earlier one's commit, so either order ends with the newest version. Deletes (ballots are never
   deleted, but the tool is generic) take a shared transaction lock that each batch takes
   exclusively, so a deleted row cannot be re-inserted by a batch that read it earlier. The
   copy's session sets `deadlock_timeout` low (superuser only) so that if a multi-row writer
   deadlocks with a batch, the batch is the victim and is retried, never the writer. Batches
   commit with `synchronous_commit = off`: the copy is redone by `--resume` after a crash, and the
   switch's synchronous commit flushes the WAL of every batch before it.
3. **wait for older snapshots**: transactions that took their snapshot before the last batch
   committed would see the old partition's rows but not (all of) their copies; the switch waits
   (bounded) until they are gone, as CREATE INDEX CONCURRENTLY does.
4. **switch** (one transaction): `LOCK` the parent and the old partition ACCESS EXCLUSIVE with
   `lock_timeout` (retried with back-off, so a long transaction never makes writers queue behind
   us for more than `lock_timeout`), DETACH the old partition, ATTACH both targets, drop the
   CHECK constraints, the trigger and its function, and rename the old partition
   `<name>_split_old`. Only catalog work: the writers' wait is the lock wait plus a few
   milliseconds, and there is no instant at which a hash value has no partition (the
   transaction is atomic). The old table is dropped in its own transaction right after: a
   DROP of a big table makes its COMMIT drop the buffers and truncate the files (measured
   ~0.1-0.4 s for a million rows on a busy machine), which nobody needs to wait for. Non-concurrent DETACH locks the
   parent, so every writer, not only this slice's, waits during these milliseconds.
   `DETACH .. CONCURRENTLY` is NOT used: it cannot run in a transaction block, and from its first
   commit the partition is DETACH PENDING, which PostgreSQL already hides from new inserts
   ("no partition of relation found for row") and reads, while the targets cannot be attached
   before the detach ends (their bounds would overlap). It would open a gap; the locked switch
   never does.
5. DROP the old table, `ANALYZE` the targets (status shows estimated rows, the planner gets
   statistics).

Interruptions leave catalog states that `splitstate.pending_splits` recognises and `--resume`
finishes: killed during prepare (nothing happened, it is one transaction), during the copy or
the snapshot wait (targets + trigger exist: the copy restarts from the first key, ON CONFLICT
skipping what is there), during the switch (rolled back: same as during the copy), after it
(a `<name>_split_old` table is left: `verify` notes it, `--resume` drops it). A DETACH
PENDING left by a hand-run `DETACH .. CONCURRENTLY`, or a partition detached by hand (a gap),
is finished the same way; the switch then uses `DETACH .. FINALIZE` (allowed in a transaction
block) or no detach. One split runs at a time per database: the session holds an advisory lock
(DATABASE_URL must therefore reach PostgreSQL directly, not through PgBouncer's transaction
pooling).

Fault injection for tests: PGVOTE_SPLIT_CRASH_AT=batch:N SIGKILLs the process after the N-th
committed batch, PGVOTE_SPLIT_CRASH_AT=switch inside the switch transaction after the DETACH,
PGVOTE_SPLIT_CRASH_AT=after-switch between the switch's commit and the DROP of the old table.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import errors, sql

from partitions import catalog
from partitions.catalog import LooseTable, Partition, PartitionedTable
from partitions.layout import MAX_MODULUS, halves
from partitions.splitsql import (
    SplitPlan,
    batch_sql,
    create_target_sql,
    drop_retired_sql,
    mirror_sql,
    retired_name,
    switch_sql,
)
from partitions.splitstate import PendingSplit, SourceState, pending_splits
from partitions.sqlexec import Executor, Refused, one, render

log = logging.getLogger("pgvote.partitions")

CRASH_ENV = "PGVOTE_SPLIT_CRASH_AT"


@dataclass(frozen=True)
class SplitOptions:
    batch_size: int = 5000
    pause: float = 0.0  # seconds to sleep between batches (throttle on a busy primary)
    lock_timeout: float = 0.5  # seconds one attempt waits for a lock (prepare, switch)
    attempts: int = 40  # attempts at taking the switch locks before giving up
    snapshot_wait: float = 30.0  # seconds to wait for snapshots older than the copy
    session_wait: float = 10.0  # seconds to wait for another split session to end
    dry_run: bool = False


@dataclass
class SplitResult:
    source: str
    targets: tuple[str, str]
    rows_copied: int = 0
    batches: int = 0
    copy_seconds: float = 0.0
    lock_wait_ms: float = 0.0  # waiting for the switch locks (writers queue behind it meanwhile)
    held_ms: float = 0.0  # from locks granted to commit done
    attempts: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    resumed: bool = False
    # wall-clock instants (epoch seconds), to line the split up with load measurements
    copy_started_at: float = 0.0
    copy_ended_at: float = 0.0
    switch_started_at: float = 0.0  # the first LOCK of the attempt that succeeded
    switched_at: float = 0.0  # its COMMIT returned
    switch_steps_ms: dict[str, float] = field(default_factory=dict)  # time of each statement under the locks

    @property
    def writer_wait_ms(self) -> float:
        """Upper bound of a writer's wait caused by the switch: lock wait + time held."""
        return self.lock_wait_ms + self.held_ms


class Progress(Protocol):
    def start(self, description: str, total: int | None) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def stop(self) -> None:
        pass


def _plan(table: PartitionedTable, modulus: int, remainder: int, source: Partition | LooseTable,
          state: SourceState, resumed: bool = False) -> SplitPlan:
    if table.strategy != "hash":
        raise Refused(f"{table.qualified} is {table.strategy}-partitioned: only hash partitions can be split")
    if not table.key_columns:
        raise Refused(f"{table.qualified} is partitioned by an expression: split supports column keys only")
    if not table.primary_key:
        raise Refused(f"{table.qualified} has no primary key: split copies by keyset and mirrors by key")
    if isinstance(source, Partition) and source.sub_partitioned:
        raise Refused(f"{source.qualified} is itself partitioned: split it level by level by hand")
    if 2 * modulus > MAX_MODULUS:
        raise Refused(f"{source.qualified} has modulus {modulus}: doubling it exceeds the maximum of {MAX_MODULUS}")
    (m2, low), (_, high) = halves(modulus, remainder)
    names = (f"{table.name}_m{m2}_r{low}", f"{table.name}_m{m2}_r{high}")
    for longest in (*(n + catalog.SPLIT_CHECK_SUFFIX for n in names), f"{source.name}_split_mirror",
                    source.name + catalog.RETIRED_SUFFIX):
        if len(longest.encode()) > 63:
            raise Refused(f"the name {longest!r} would exceed PostgreSQL's 63-byte identifier limit")
    return SplitPlan(table, modulus, remainder, source, state, (names[0], m2, low), (names[1], m2, high), resumed)


# --------------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------------


def _crash_point(where: str) -> None:
    """Fault injection: SIGKILL this process when PGVOTE_SPLIT_CRASH_AT names `where`."""
    if os.environ.get(CRASH_ENV) == where:
        log.warning("%s=%s: killing this process now", CRASH_ENV, where)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _retrying(what: str, attempts: int, delay: float = 0.05) -> Iterator[int]:
    for attempt in range(1, attempts + 1):
        yield attempt
        time.sleep(min(delay * attempt, 1.0))
    raise Refused(f"{what}: gave up after {attempts} attempts (locks busy); nothing is lost, "
                  "rerun `pgvote partitions split --resume` later")


def _lock_timeout(ms: float) -> sql.Composed:
    return sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{max(1, int(ms))}ms"))


def _targets_state(conn: psycopg.Connection, plan: SplitPlan) -> tuple[list[str], list[str], bool]:
    """(targets made by split, targets missing, mirror trigger enabled on the source)."""
    made, missing = [], []
    for name, _, _ in plan.targets:
        row = conn.execute(
            """select c.relispartition, exists (select 1 from pg_constraint k where k.conrelid = c.oid
                      and k.contype = 'c' and k.conname = %s)
               from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relname = %s""",
            (name + catalog.SPLIT_CHECK_SUFFIX, plan.table.schema, name)).fetchone()
        if row is None:
            missing.append(name)
        elif row[0] or not row[1]:
            raise Refused(f"{plan.table.schema}.{name} exists and was not made by `split` (or is attached): "
                          "rename or drop it first")
        else:
            made.append(name)
    trig = catalog.mirror_triggers(conn).get(plan.source.oid)
    return made, missing, bool(trig and trig[1] in ("O", "A"))


def _prepare(run: Executor, plan: SplitPlan, options: SplitOptions) -> None:
    conn = run.conn
    if run.dry_run:
        made: list[str] = []
        missing, mirrored = [n for n, _, _ in plan.targets], False
        if plan.resumed:
            made, missing, mirrored = _targets_state(conn, plan)
    else:
        made, missing, mirrored = _targets_state(conn, plan)
    # A source that is detached or DETACH PENDING receives no writes through the parent (and
    # PostgreSQL refuses ALTER TABLE on a pending one): only an attached source needs the mirror.
    needs_mirror = plan.source_state == "attached"
    if not missing and (mirrored or not needs_mirror):
        log.info("prepare: targets %s%s in place", ", ".join(made), " and the mirror trigger" if mirrored else "")
        return
    me = str(one(conn.execute("select current_user")))
    owner = plan.table.owner if plan.table.owner != me else None
    statements = [s for name in missing for s in create_target_sql(plan, next(t for t in plan.targets if t[0] == name),
                                                                     owner)]
    if needs_mirror and not mirrored:
        statements += mirror_sql(plan)
        if made:  # copies made while no mirror ran may be stale: start them again
            statements.append(sql.SQL("truncate {}").format(sql.SQL(", ").join(plan.ident(n) for n in made)))
    run.note(f"prepare: targets {plan.low[0]}, {plan.high[0]} (unattached)"
             + (f" and the mirror trigger on {plan.source.qualified}" if needs_mirror else ""))
    for attempt in _retrying("prepare", options.attempts):
        try:
            with run.transaction():
                run(_lock_timeout(options.lock_timeout * 1000))
                for statement in statements:
                    run(statement)
            break
        except errors.LockNotAvailable:
            log.info("prepare: %s is busy (attempt %d), retrying", plan.source.qualified, attempt)
    log.info("prepare: %s %s%s%s", "would create" if run.dry_run else "created", ", ".join(missing) or "no target",
             f" (emptied {', '.join(made)})" if made and needs_mirror and not mirrored else "",
             f", mirror trigger on {plan.source.qualified}" if needs_mirror and not mirrored else "")


def _copy(run: Executor, plan: SplitPlan, options: SplitOptions, progress: Progress, result: SplitResult) -> None:
    conn = run.conn
    first, rest = batch_sql(plan, options.batch_size, True), batch_sql(plan, options.batch_size, False)
    if run.dry_run:
        run.note("copy: repeated until it returns no row, each batch in its own transaction, "
                 "the last key returned is the next batch's parameters")
        with run.transaction():
            run(sql.SQL("select pg_advisory_xact_lock({})").format(plan.mirror_lock))
            run(sql.SQL("set local synchronous_commit = off"))
            run(rest)
        return
    superuser = one(conn.execute("select current_setting('is_superuser') = 'on'"))
    estimate = one(conn.execute("select reltuples::bigint from pg_class where oid = %s", (plan.source.oid,)))
    total = int(estimate) if estimate >= 0 else int(
        one(conn.execute(sql.SQL("select count(*) from {}").format(plan.source.identifier()))))
    progress.start(f"copying {plan.source.qualified}", total)
    started = time.monotonic()
    result.copy_started_at = time.time()
    last: tuple[object, ...] | None = None
    try:
        while True:
            for attempt in _retrying(f"copy batch {result.batches + 1}", options.attempts):
                try:
                    with conn.transaction():
                        conn.execute("set local synchronous_commit = off")
                        conn.execute("set local lock_timeout = '2s'")
                        if superuser:  # the batch, not a writer, is the deadlock victim
                            conn.execute("set local deadlock_timeout = '20ms'")
                        conn.execute(sql.SQL("select pg_advisory_xact_lock({})").format(plan.mirror_lock))
                        row = conn.execute(first if last is None else rest, last).fetchone()
                    break
                except (errors.DeadlockDetected, errors.LockNotAvailable) as exc:
                    log.info("copy: batch %d retried (attempt %d): %s", result.batches + 1, attempt,
                             type(exc).__name__)
            if row is None:
                break
            result.batches += 1
            result.rows_copied += int(row[0])
            last = tuple(row[1:])
            progress.advance(int(row[0]))
            _crash_point(f"batch:{result.batches}")
            if options.pause:
                time.sleep(options.pause)
    finally:
        progress.stop()
    result.copy_seconds = time.monotonic() - started
    result.copy_ended_at = time.time()
    log.info("copy: %d rows in %d batches, %.1f s (%.0f rows/s)", result.rows_copied, result.batches,
             result.copy_seconds, result.rows_copied / max(result.copy_seconds, 1e-6))


def _wait_for_older_snapshots(run: Executor, options: SplitOptions) -> None:
    if run.dry_run:
        run.note("wait until every transaction that was open when the copy ended has finished "
                 "(pg_stat_activity: xact_start, backend_xmin)")
        return
    conn = run.conn
    query = """select pid, xact_start from pg_stat_activity
               where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'
                 and backend_xmin is not null and xact_start is not null"""
    waiting = set(conn.execute(query).fetchall())
    deadline = time.monotonic() + options.snapshot_wait
    started = time.monotonic()
    while waiting:
        waiting &= set(conn.execute(query).fetchall())
        if not waiting:
            break
        if time.monotonic() > deadline:
            log.warning("snapshots: %d transaction(s) older than the copy are still open after %.0f s (pids %s); "
                        "switching anyway: a REPEATABLE READ one among them may miss copied rows",
                        len(waiting), options.snapshot_wait, ", ".join(str(p) for p, _ in sorted(waiting)))
            return
        time.sleep(0.01)
    log.info("snapshots: older transactions gone after %.0f ms", (time.monotonic() - started) * 1000)


def _switch(run: Executor, plan: SplitPlan, options: SplitOptions, result: SplitResult) -> None:
    locks, work = switch_sql(plan)
    if run.dry_run:
        run.note("switch: one transaction; writers wait only while it holds the locks")
        with run.transaction():
            run(_lock_timeout(options.lock_timeout * 1000))
            for statement in locks + work:
                run(statement)
        return
    conn = run.conn
    for attempt in _retrying("switch", options.attempts):
        result.attempts = attempt
        try:
            with conn.transaction():
                conn.execute(_lock_timeout(options.lock_timeout * 1000))
                asked, asked_at = time.monotonic(), time.time()
                for statement in locks:
                    conn.execute(statement)
                granted = time.monotonic()
                _, missing, mirrored = _targets_state(conn, plan)
                if missing:
                    raise Refused(f"switch: target {', '.join(missing)} disappeared during the copy; "
                                  "run `pgvote partitions split --resume` to make it again")
                if plan.source_state == "attached" and not mirrored:
                    raise Refused(f"switch: the mirror trigger on {plan.source.qualified} was dropped or disabled "
                                  "during the copy; run `pgvote partitions split --resume` to copy again")
                steps: dict[str, float] = {"check": (time.monotonic() - granted) * 1000}
                for i, statement in enumerate(work):
                    step = time.monotonic()
                    conn.execute(statement)
                    steps[f"{i + 1}: " + " ".join(render(conn, statement).split()[:5])] = (time.monotonic() - step) * 1000
                    if i == 0:
                        _crash_point("switch")
                committing = time.monotonic()
            done, result.switched_at = time.monotonic(), time.time()
            steps["commit"] = (done - committing) * 1000
            result.switch_steps_ms = {k: round(v, 2) for k, v in steps.items()}
            result.switch_started_at = asked_at
            break
        except errors.LockNotAvailable:
            log.info("switch: locks not granted within %.0f ms (attempt %d), retrying", options.lock_timeout * 1000,
                     attempt)
    result.lock_wait_ms = (granted - asked) * 1000
    result.held_ms = (done - granted) * 1000
    log.info("switch: %s replaced by %s and %s; lock wait %.1f ms, locks held %.1f ms (attempt %d)",
             plan.source.qualified, plan.low[0], plan.high[0], result.lock_wait_ms, result.held_ms, attempt)
    log.debug("switch steps (ms): %s", result.switch_steps_ms)


def _drop_retired(run: Executor, schema: str, name: str, options: SplitOptions) -> None:
    """Drop the old partition once the switch committed (nobody waits for it any more)."""
    if run.dry_run:
        run.note("after the switch: drop the old partition (its commit frees the files; no writer waits)")
        run(drop_retired_sql(schema, name))
        return
    started = time.monotonic()
    for attempt in _retrying(f"drop {schema}.{name}", options.attempts):
        try:
            with run.transaction():
                run(_lock_timeout(options.lock_timeout * 1000))
                run(drop_retired_sql(schema, name))
            break
        except errors.LockNotAvailable:
            log.info("drop: %s.%s is busy (attempt %d), retrying", schema, name, attempt)
    log.info("dropped the old partition %s.%s in %.0f ms", schema, name, (time.monotonic() - started) * 1000)


def carry_out(run: Executor, plan: SplitPlan, options: SplitOptions, progress: Progress | None = None) -> SplitResult:
    """Prepare (or complete the preparation), copy, wait for older snapshots, switch, analyze."""
    progress = progress or NoProgress()
    result = SplitResult(plan.source.qualified, tuple(f"{plan.table.schema}.{t[0]}" for t in plan.targets),  # type: ignore[arg-type]
                         dry_run=run.dry_run, resumed=plan.resumed)
    started = time.monotonic()
    verb = "resuming split of" if plan.resumed else "splitting"
    log.info("%s %s (modulus %d, remainder %d, %s) into %s and %s", verb, plan.source.qualified, plan.modulus,
             plan.remainder, plan.source_state, plan.low[0], plan.high[0])
    if not run.dry_run:
        run(sql.SQL("set application_name = {}").format(
            sql.Literal(f"{catalog.SPLIT_APPLICATION} {plan.source.qualified}"[:63])))
    try:
        _prepare(run, plan, options)
        _copy(run, plan, options, progress, result)
        _wait_for_older_snapshots(run, options)
        _switch(run, plan, options, result)
        _crash_point("after-switch")
        _drop_retired(run, plan.table.schema, retired_name(plan), options)
        if not run.dry_run:
            run(sql.SQL("analyze {}, {}").format(plan.ident(plan.low[0]), plan.ident(plan.high[0])))
    finally:
        if not run.dry_run and not run.conn.closed:
            run(sql.SQL("set application_name = {}").format(sql.Literal(catalog.SPLIT_APPLICATION)))
    result.seconds = time.monotonic() - started
    if not run.dry_run:
        log.info("split of %s done in %.1f s", plan.source.qualified, result.seconds)
    return result


@contextmanager
def split_session(run: Executor, options: SplitOptions) -> Iterator[None]:
    """Hold the database's split lock (one split at a time) for the duration."""
    if run.dry_run:
        holder = catalog.split_lock_holder(run.conn)
        if holder:
            raise Refused(f"another split is running (pid {holder[0]}, {holder[1]!r}): wait for it")
        yield
        return
    conn = run.conn
    deadline = time.monotonic() + options.session_wait
    while not one(conn.execute("select pg_try_advisory_lock(%s, 0)", (catalog.SPLIT_LOCK_NAMESPACE,))):
        if time.monotonic() > deadline:
            holder = catalog.split_lock_holder(conn)
            who = f"pid {holder[0]}, {holder[1]!r}" if holder else "a session that just ended"
            raise Refused(f"another split is running ({who}): wait for it, or end that session")
        time.sleep(0.1)
    conn.execute(sql.SQL("set application_name = {}").format(sql.Literal(catalog.SPLIT_APPLICATION)))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("select pg_advisory_unlock(%s, 0)", (catalog.SPLIT_LOCK_NAMESPACE,))
            conn.execute("reset application_name")


def _unfinished(conn: psycopg.Connection, table: PartitionedTable) -> list[PendingSplit]:
    return pending_splits(conn, table, holder=None)


def _source_partition(conn: psycopg.Connection, name: str) -> tuple[PartitionedTable, Partition]:
    schema, rel = catalog.split_qualified(name)
    row = conn.execute(
        """select pn.nspname, p.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
           join pg_namespace n on n.oid = c.relnamespace join pg_class p on p.oid = i.inhparent
           join pg_namespace pn on pn.oid = p.relnamespace where n.nspname = %s and c.relname = %s""",
        (schema, rel)).fetchone()
    if row is None:
        raise Refused(f"{schema}.{rel} is not a partition (names look like {catalog.DEFAULT_SCHEMA}.ballots_m16_r3; "
                      "see `pgvote partitions status`)")
    table = catalog.find_table(conn, f"{row[0]}.{row[1]}")
    if table is None:
        raise Refused(f"{schema}.{rel} belongs to {row[0]}.{row[1]}, which is not a top-level partitioned table")
    part = next(p for p in table.partitions if p.name == rel and p.schema == schema)
    if part.bound.kind != "hash":
        raise Refused(f"{part.qualified} is a {part.bound.kind} partition: only hash partitions can be split")
    return table, part


def _refuse_unfinished(conn: psycopg.Connection, table: PartitionedTable) -> None:
    unfinished = _unfinished(conn, table)
    if unfinished:
        raise Refused(f"{table.qualified} has an unfinished split ({unfinished[0].source_name}): "
                      "finish it first with `pgvote partitions split --resume`")


def split_partition(conn: psycopg.Connection, partition: str, options: SplitOptions | None = None,
                    progress: Progress | None = None, echo: Callable[[str], None] = print) -> SplitResult:
    """Split one hash partition ("schema.name") online; conn must be autocommit (a migration can call this)."""
    options = options or SplitOptions()
    run = Executor(conn, options.dry_run, echo)
    with split_session(run, options):
        table, part = _source_partition(conn, partition)
        if part.detach_pending:
            raise Refused(f"{part.qualified} is DETACH PENDING: finish it with `pgvote partitions split --resume`")
        _refuse_unfinished(conn, table)
        return carry_out(run, _plan(table, *part.bound.slice, part, "attached"), options, progress)


def resume_splits(conn: psycopg.Connection, partition: str | None = None, options: SplitOptions | None = None,
                  progress: Progress | None = None, schema: str = catalog.DEFAULT_SCHEMA,
                  echo: Callable[[str], None] = print) -> list[SplitResult]:
    """Finish every unfinished split of the schema (or only the one whose source is `partition`)."""
    options = options or SplitOptions()
    run = Executor(conn, options.dry_run, echo)
    results = []
    with split_session(run, options):
        tables = catalog.partitioned_tables(conn, schema)
        for table in tables:  # old partitions of splits that were killed right after their switch
            for old in table.retired:
                if partition is None or ".".join(catalog.split_qualified(partition)) == \
                        old.qualified.removesuffix(catalog.RETIRED_SUFFIX):
                    _drop_retired(run, old.schema, old.name, options)
        found = [s for t in tables for s in _unfinished(conn, t)]
        if partition is not None:
            wanted = ".".join(catalog.split_qualified(partition))
            found = [s for s in found if s.source_name == wanted]
            if not found and not any(o.qualified == wanted + catalog.RETIRED_SUFFIX for t in tables for o in t.retired):
                raise Refused(f"no unfinished split of {wanted} (see `pgvote partitions verify`)")
        if not found:
            log.info("resume: no unfinished split in schema %s", schema)
        for pending in found:
            if pending.source is None:
                raise Refused(pending.describe())
            plan = _plan(pending.table, pending.modulus, pending.remainder, pending.source, pending.source_state,
                         resumed=True)
            results.append(carry_out(run, plan, options, progress))
    return results


def split_all(conn: psycopg.Connection, table_name: str | None = None, options: SplitOptions | None = None,
              progress: Progress | None = None, schema: str = catalog.DEFAULT_SCHEMA,
              echo: Callable[[str], None] = print) -> list[SplitResult]:
    """Double every partition of every hash-partitioned table of `schema` (or of `table_name`), one at a time."""
    options = options or SplitOptions()
    run = Executor(conn, options.dry_run, echo)
    results = []
    with split_session(run, options):
        if table_name:
            found = catalog.find_table(conn, table_name)
            if found is None:
                raise Refused(f"{table_name} is not a partitioned table")
            tables = [found]
        else:
            tables = [t for t in catalog.partitioned_tables(conn, schema) if t.strategy == "hash"]
        if not tables:
            raise Refused(f"no hash-partitioned table in schema {schema}")
        for table in tables:
            _refuse_unfinished(conn, table)
            for part in table.partitions:  # the list as it was before the first split
                if part.detach_pending:
                    raise Refused(f"{part.qualified} is DETACH PENDING: run `pgvote partitions split --resume` first")
            plans = [_plan(table, *p.bound.slice, p, "attached") for p in table.partitions]
            log.info("split --all: %s, %d partitions to double", table.qualified, len(plans))
            for i, plan in enumerate(plans, 1):
                if not options.dry_run:  # refresh the source (oid, stats) and the parent (columns) from the catalog
                    fresh, part = _source_partition(conn, plan.source.qualified)
                    plan = _plan(fresh, *part.bound.slice, part, "attached")
                log.info("split --all: %d/%d", i, len(plans))
                results.append(carry_out(run, plan, options, progress))
    return results
