"""`create`: the initial hash partitions of a table (the same DDL as the initial migration).

Idempotent: partitions of the requested set that exist are kept, the missing ones are created
in one transaction. A table whose partitions follow another layout is refused (`split` grows a
layout; `create` only builds the first one).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg

from partitions import catalog
from partitions.layout import HashSlice, check_modulus, create_statements, initial_slices
from partitions.sqlexec import Executor, Refused

log = logging.getLogger("pgvote.partitions")


def create_partitions(conn: psycopg.Connection, table: str = "voting.ballots", modulus: int = 16,
                      dry_run: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Create the missing partitions of `table` for `modulus`; returns the names created (or to create)."""
    try:
        check_modulus(modulus)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    run = Executor(conn, dry_run, echo)
    found = catalog.find_table(conn, table)
    if found is None:
        raise Refused(f"{table} is not a partitioned table (run the migrations first: `pgvote migrate`)")
    if found.strategy != "hash":
        raise Refused(f"{found.qualified} is {found.strategy}-partitioned: create makes hash partitions only")
    wanted = {(s.modulus, s.remainder): s for s in initial_slices(found.schema, found.name, modulus)}
    foreign = [p for p in found.partitions if p.bound.kind != "hash" or p.bound.slice not in wanted]
    if foreign:
        raise Refused(f"{found.qualified} already has partitions of another layout ({foreign[0].qualified}: "
                      f"{foreign[0].bound.text}); create only builds the initial set, use `split` to grow it")
    existing = {p.bound.slice for p in found.partitions}
    missing: list[HashSlice] = [s for key, s in sorted(wanted.items()) if key not in existing]
    names = {r.name for r in found.loose} | {p.name for p in found.partitions}
    for s in missing:  # `create table if not exists` would silently skip a detached table of that name
        if s.partition_name in names:
            raise Refused(f"{found.schema}.{s.partition_name} exists but is not attached: attach or drop it first")
    if not missing:
        log.info("create: %s already has its %d partitions (modulus %d): nothing to do", found.qualified, modulus,
                 modulus)
        return []
    statements = create_statements(found.schema, found.name, modulus)
    by_slice = dict(zip(sorted(wanted), statements))
    with run.transaction():
        for s in missing:
            run(by_slice[(s.modulus, s.remainder)])
    log.info("create: %s %d partition(s) of %s (modulus %d)", "would create" if dry_run else "created",
             len(missing), found.qualified, modulus)
    return [f"{found.schema}.{s.partition_name}" for s in missing]
