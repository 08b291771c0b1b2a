"""Splits that were started and not finished, found from the catalog alone: unattached targets
`<table>_m<2m>_r<r>` / `_r<r+m>` with their `_split_check`, the mirror trigger on the source, a source
left DETACH PENDING or detached (a gap); the split session's advisory lock tells "running" from
"interrupted" (the cases and what `split --resume` does: docs/partitions.md, "Interrupted splits")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg

from partitions import catalog
from partitions.catalog import LooseTable, Partition, PartitionedTable
from partitions.coverage import check_coverage
from partitions.layout import halves, parent_slice

SourceState = Literal["attached", "detach pending", "detached", "missing"]


@dataclass(frozen=True)
class PendingSplit:
    table: PartitionedTable
    modulus: int  # the source slice (m, r)
    remainder: int
    source: Partition | LooseTable | None
    source_state: SourceState
    targets: tuple[LooseTable, ...]  # the target tables that exist (0, 1 or 2)
    mirror: bool  # the source carries an enabled mirror trigger
    running_pid: int | None  # a live split session works on it

    @property
    def source_name(self) -> str:
        if self.source is not None:
            return self.source.qualified
        return f"{self.table.schema}.{self.table.name}_m{self.modulus}_r{self.remainder}"

    @property
    def target_names(self) -> tuple[str, str]:
        (m2, low), (_, high) = halves(self.modulus, self.remainder)
        base = f"{self.table.schema}.{self.table.name}"
        return f"{base}_m{m2}_r{low}", f"{base}_m{m2}_r{high}"

    def describe(self) -> str:
        slice_ = f"(modulus {self.modulus}, remainder {self.remainder})"
        if self.running_pid:
            return f"split of {self.source_name} {slice_} is running (pid {self.running_pid})"
        made = ", ".join(t.qualified for t in self.targets) or "no targets yet"
        if self.source_state == "attached":
            what = f"interrupted before its switch ({made})"
        elif self.source_state == "detach pending":
            what = f"source is DETACH PENDING: inserts for this slice fail ({made})"
        elif self.source_state == "detached":
            what = f"source is detached: its slice has no partition ({made})"
        else:
            return (f"split of {self.source_name} {slice_}: the source table is missing; targets {made} "
                    "cannot be completed automatically")
        return f"split of {self.source_name} {slice_} {what}; finish it with `pgvote partitions split --resume`"


def _in_gap(table: PartitionedTable, modulus: int, remainder: int) -> bool:
    """True when no receiving partition covers any slot of slice (modulus, remainder)."""
    bounds = [(p.name, *p.bound.slice) for p in table.attached if p.bound.kind == "hash"]
    bounds.append(("?", modulus, remainder))
    return not check_coverage(bounds).overlaps


def pending_splits(conn: psycopg.Connection, table: PartitionedTable,
                   holder: tuple[int, str] | None = None, mirrors: dict[int, tuple[str, str]] | None = None,
                   ) -> list[PendingSplit]:
    """The unfinished splits of one hash-partitioned table."""
    if table.strategy != "hash":
        return []
    mirrors = catalog.mirror_triggers(conn) if mirrors is None else mirrors
    slices: set[tuple[int, int]] = set()
    for t in table.loose:
        if t.split_target and t.modulus % 2 == 0:
            slices.add(parent_slice(t.modulus, t.remainder))
        elif not t.split_target and _in_gap(table, t.modulus, t.remainder):
            slices.add((t.modulus, t.remainder))  # a partition detached by hand
    slices.update(p.bound.slice for p in table.partitions if p.detach_pending and p.bound.kind == "hash")

    found = []
    for m, r in sorted(slices):
        source: Partition | LooseTable | None
        state: SourceState
        if (p := table.partition_for(m, r, pending=False)) is not None:
            source, state = p, "attached"
        elif (p := table.partition_for(m, r, pending=True)) is not None:
            source, state = p, "detach pending"
        elif (loose := table.loose_named(f"{table.name}_m{m}_r{r}")) is not None and not loose.split_target:
            source, state = loose, "detached"
        else:
            source, state = None, "missing"
        names = {n.rpartition(".")[2] for n in PendingSplit(table, m, r, None, state, (), False, None).target_names}
        targets = tuple(t for t in table.loose if t.name in names and t.split_target)
        mirror = source is not None and mirrors.get(source.oid, ("", "D"))[1] in ("O", "A")
        running = None
        if holder and (source is None or holder[1].endswith(" " + source.qualified) or
                       holder[1] == catalog.SPLIT_APPLICATION):
            running = holder[0]
        found.append(PendingSplit(table, m, r, source, state, targets, mirror, running))
    return found


def stray_tables(table: PartitionedTable, splits: list[PendingSplit]) -> list[LooseTable]:
    """Tables named like partitions of `table`, not attached, and part of no unfinished split."""
    used = {t.oid for s in splits for t in s.targets} | {s.source.oid for s in splits if s.source is not None}
    return [t for t in table.loose if t.oid not in used]
