"""`verify`: every hash space is covered exactly once, nothing hides in a default partition, and
no split was left unfinished. Findings are problems (exit non-zero) or notes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg

from partitions import catalog
from partitions.catalog import PartitionedTable
from partitions.coverage import check_coverage, describe_slices
from partitions.splitstate import pending_splits, stray_tables

Severity = Literal["problem", "note", "ok"]


@dataclass(frozen=True)
class Finding:
    table: str
    severity: Severity
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify_table(conn: psycopg.Connection, table: PartitionedTable,
                 holder: tuple[int, str] | None = None) -> list[Finding]:
    found: list[Finding] = []

    def add(severity: Severity, message: str) -> None:
        found.append(Finding(table.qualified, severity, message))

    for p in table.partitions:
        if p.bound.kind == "default":
            add("problem", f"default partition {p.qualified}: rows that fit no other partition hide there "
                           "(hash tables cannot have one; a list/range table should not)")
        if p.sub_partitioned:
            add("note", f"{p.qualified} is itself partitioned: its own partitions are not checked")
    if table.strategy != "hash":
        add("note", f"{table.strategy}-partitioned: hash coverage does not apply")
        return found

    bounds = [(p.name, *p.bound.slice) for p in table.attached if p.bound.kind == "hash"]
    coverage = check_coverage(bounds)
    for gap in coverage.gaps:
        share = 1 / gap[0]
        add("problem", f"gap: no partition covers {describe_slices([gap])} ({share:.2%} of the hash space): "
                       "inserts there fail with \"no partition of relation found for row\"")
    for overlap in coverage.overlaps:
        add("problem", f"overlap: {overlap.first} and {overlap.second} both cover {describe_slices(overlap.slots)}")
    for bad in coverage.invalid:
        add("problem", f"invalid hash bound {bad}")

    splits = pending_splits(conn, table, holder)
    for split in splits:
        add("note" if split.running_pid else "problem", split.describe())
    described = {s.source.oid for s in splits if s.source is not None}
    for p in table.partitions:
        if p.detach_pending and p.oid not in described:
            add("problem", f"{p.qualified} is DETACH PENDING: inserts for its slice fail")
    for t in table.retired:
        add("note", f"{t.qualified} is the old partition of a finished split, not dropped yet "
                    "(`pgvote partitions split --resume` drops it)")
    for t in stray_tables(table, splits):
        add("note", f"{t.qualified} is named like a partition of {table.qualified} but is not attached")

    if coverage.ok:
        moduli = sorted({m for _, m, _ in bounds})
        add("ok", f"{len(bounds)} hash partitions (modulus {', '.join(map(str, moduli))}) cover the hash space "
                  "exactly once")
    return found


def verify(conn: psycopg.Connection, schema: str = catalog.DEFAULT_SCHEMA) -> list[Finding]:
    """Findings for every partitioned table of `schema`; healthy when none is a problem."""
    holder = catalog.split_lock_holder(conn)
    tables = catalog.partitioned_tables(conn, schema)
    if not tables:
        return [Finding(schema, "problem", f"no partitioned table in schema {schema}")]
    return [f for t in tables for f in verify_table(conn, t, holder)]


def healthy(findings: list[Finding]) -> bool:
    return not any(f.severity == "problem" for f in findings)
