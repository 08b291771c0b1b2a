"""`status`: how the rows spread over the partitions of every partitioned table of a schema.

Rows are the planner's estimate (`pg_class.reltuples`, kept by autovacuum/ANALYZE; a partition
never analyzed is counted when small, else unknown) unless `exact`, which counts them all. The largest polls (values of the
partition key) come from the column statistics (`pg_stats` most common values x rows), or from a
GROUP BY with `exact`. Skew is the largest partition's rows divided by the mean.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from partitions import catalog
from partitions.catalog import Partition, PartitionedTable
from partitions.splitstate import pending_splits, stray_tables
from partitions.sqlexec import one


@dataclass
class TopValue:
    value: str
    rows: int


@dataclass
class PartitionStatus:
    name: str
    bound: str
    modulus: int | None
    remainder: int | None
    state: str  # attached | detach pending
    rows: int | None  # None: unknown (never analyzed; use --exact)
    exact: bool
    bytes: int
    share: float | None = None  # of the table's rows
    largest: list[TopValue] = field(default_factory=list)


@dataclass
class TableStatus:
    table: str
    strategy: str
    key: list[str]
    partitions: list[PartitionStatus]
    total_rows: int | None
    total_bytes: int
    skew: float | None
    unfinished_splits: list[str]
    stray_tables: list[str]
    retired_tables: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: A never-analyzed partition up to this size is counted instead of shown as unknown.
COUNT_UNANALYZED_BELOW = 8 << 20


def _rows(conn: psycopg.Connection, part: Partition, exact: bool) -> tuple[int | None, bool]:
    """(rows, counted)."""
    if exact or (part.reltuples < 0 and part.total_bytes <= COUNT_UNANALYZED_BELOW):
        return int(one(conn.execute(sql.SQL("select count(*) from {}").format(part.identifier())))), True
    if part.reltuples >= 0:
        return int(part.reltuples), False
    return None, False


def _largest(conn: psycopg.Connection, part: Partition, key: str, rows: int | None, exact: bool,
             top: int) -> list[TopValue]:
    if top <= 0:
        return []
    if exact:
        found = conn.execute(sql.SQL("select {k}::text, count(*) from {p} group by {k} order by 2 desc, 1 limit {n}")
                             .format(k=sql.Identifier(key), p=part.identifier(), n=sql.Literal(top))).fetchall()
        return [TopValue(str(v), int(n)) for v, n in found]
    stats = conn.execute(
        """select most_common_vals::text::text[], most_common_freqs from pg_stats
           where schemaname = %s and tablename = %s and attname = %s and not inherited""",
        (part.schema, part.name, key)).fetchone()
    if not stats or stats[0] is None or rows is None:
        return []
    pairs = sorted(zip(stats[0], stats[1]), key=lambda vf: -vf[1])[:top]
    return [TopValue(v, round(f * rows)) for v, f in pairs]


def table_status(conn: psycopg.Connection, table: PartitionedTable, exact: bool = False, top: int = 3) -> TableStatus:
    parts: list[PartitionStatus] = []
    for p in table.partitions:
        rows, counted = _rows(conn, p, exact)
        key = table.key_columns[0] if table.key_columns else None
        largest = _largest(conn, p, key, rows, exact, top) if key and not p.sub_partitioned else []
        parts.append(PartitionStatus(p.qualified, p.bound.text, p.bound.modulus, p.bound.remainder,
                                     "detach pending" if p.detach_pending else "attached", rows, counted,
                                     p.total_bytes, None, largest))
    known = [p.rows for p in parts if p.rows is not None]
    total = sum(known) if len(known) == len(parts) else (sum(known) if known else None)
    for status in parts:
        status.share = (status.rows / total) if (status.rows is not None and total) else None
    skew = (max(known) / (sum(known) / len(known))) if known and sum(known) > 0 else None
    splits = pending_splits(conn, table, catalog.split_lock_holder(conn))
    return TableStatus(table.qualified, table.strategy, list(table.key_columns), parts, total,
                       sum(p.bytes for p in parts), skew, [s.describe() for s in splits],
                       [t.qualified for t in stray_tables(table, splits)], [t.qualified for t in table.retired])


def collect(conn: psycopg.Connection, schema: str = catalog.DEFAULT_SCHEMA, exact: bool = False,
            top: int = 3) -> list[TableStatus]:
    """The status of every partitioned table of `schema`."""
    return [table_status(conn, t, exact, top) for t in catalog.partitioned_tables(conn, schema)]


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render(console: Console, statuses: list[TableStatus], schema: str) -> None:
    if not statuses:
        console.print(f"no partitioned table in schema {escape(schema)}")
    for st in statuses:
        rows_kind = "rows (exact)" if st.partitions and all(p.exact for p in st.partitions) else "rows (est.)"
        title = f"{st.table}: {st.strategy} on ({', '.join(st.key)}), {len(st.partitions)} partitions"
        table = Table(title=escape(title), title_justify="left")
        widest = max((len(p.name.rpartition(".")[2]) for p in st.partitions), default=9) + 1
        table.add_column("partition", no_wrap=True, min_width=widest)
        for col in ("modulus", "rem.", rows_kind, "size", "share"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column(f"largest {', '.join(st.key) or 'key'}s (rows)", overflow="fold")
        for p in st.partitions:
            name = escape(p.name.rpartition(".")[2]) + ("[red]*[/]" if p.state != "attached" else "")
            largest = "\n".join(f"{v.value[:8]} {v.rows:,}" for v in p.largest) or "-"
            table.add_row(name, str(p.modulus if p.modulus is not None else p.bound),
                          "" if p.remainder is None else str(p.remainder),
                          "?" if p.rows is None else f"{p.rows:,}", human_bytes(p.bytes),
                          "-" if p.share is None else f"{p.share:.1%}", escape(largest))
        table.add_section()
        table.add_row("total", "", "", "?" if st.total_rows is None else f"{st.total_rows:,}",
                      human_bytes(st.total_bytes), "", f"skew {st.skew:.2f} (largest / mean)" if st.skew else "")
        console.print(table)
        if any(p.state != "attached" for p in st.partitions):
            console.print("[red]*[/] DETACH PENDING: receives no rows, its slice is a gap (see `verify`)")
        if any(p.rows is None for p in st.partitions):
            console.print("? = never analyzed: run ANALYZE or use --exact")
        for line in st.unfinished_splits:
            console.print(f"[yellow]unfinished:[/] {escape(line)}")
        for name in st.retired_tables:
            console.print(f"[yellow]left over:[/] {escape(name)}, the old partition of a finished split "
                          "(`split --resume` drops it)")
        for name in st.stray_tables:
            console.print(f"[yellow]stray table:[/] {escape(name)} is named like a partition but is not attached")
