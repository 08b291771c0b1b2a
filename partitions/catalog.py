"""What the catalog says about the partitioned tables of a schema (read-only queries).

Everything the partition manager knows is derived from here: the partitions and their bounds,
pending detaches (`pg_inherits.inhdetachpending`), tables named like partitions that are not
attached (`<table>_m<M>_r<R>`, e.g. the targets of an interrupted split), the split mirror
triggers, and the session lock a running split holds. There is no state table of our own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from partitions.bounds import PartitionBound, parse_bound
from partitions.layout import parse_partition_name

DEFAULT_SCHEMA = "voting"

#: Advisory-lock namespaces (the first key of the two-key form), registered with every other
#: feature's in procedures/internal.advisory_lock_namespace.sql; a test holds them equal.
#: Session lock held by a running split (one split at a time per database): key 0.
SPLIT_LOCK_NAMESPACE = 3
#: Per-split transaction lock shared by the mirror trigger's deletes and the copy batches:
#: key `mirror_lock_key(oid of the partition being split)`.
MIRROR_LOCK_NAMESPACE = 4
#: Name of the trigger that mirrors writes on a partition being split into its two halves.
MIRROR_TRIGGER = "pgvote_split_mirror"
#: Suffix of the CHECK constraint that marks a table as a split target (and lets ATTACH skip its scan).
SPLIT_CHECK_SUFFIX = "_split_check"
#: application_name of a running split ("pgvote split <schema.partition>").
SPLIT_APPLICATION = "pgvote split"
#: Suffix the switch gives the old partition; it is dropped right after the switch commits.
RETIRED_SUFFIX = "_split_old"

_STRATEGIES = {"h": "hash", "l": "list", "r": "range"}


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Partition(Relation):
    bound: PartitionBound
    detach_pending: bool
    sub_partitioned: bool
    reltuples: float  # -1: never analyzed
    total_bytes: int


@dataclass(frozen=True)
class LooseTable(Relation):
    """An ordinary table named `<table>_m<M>_r<R>` in the table's schema that is not attached."""

    modulus: int
    remainder: int
    split_target: bool  # carries the split CHECK constraint: made by `split`
    reltuples: float
    total_bytes: int


@dataclass(frozen=True)
class PartitionedTable(Relation):
    strategy: str  # hash | list | range
    key_columns: tuple[str, ...]  # empty when the key has expressions
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    owner: str
    partitions: tuple[Partition, ...]
    loose: tuple[LooseTable, ...]
    retired: tuple[LooseTable, ...] = ()  # old partitions of finished splits, not yet dropped

    @property
    def attached(self) -> tuple[Partition, ...]:
        """Partitions that receive rows (a pending detach no longer does)."""
        return tuple(p for p in self.partitions if not p.detach_pending)

    def partition_for(self, modulus: int, remainder: int, pending: bool | None = None) -> Partition | None:
        for p in self.partitions:
            if p.bound.kind == "hash" and p.bound.slice == (modulus, remainder):
                if pending is None or p.detach_pending == pending:
                    return p
        return None

    def loose_named(self, name: str) -> LooseTable | None:
        return next((t for t in self.loose if t.name == name), None)


TABLES_SQL = (Path(__file__).parent / "sql" / "tables.sql").read_text()


def _loose(schema: str, table: str, rows: list[list[Any]], suffix: str = "") -> tuple[LooseTable, ...]:
    """The unattached tables named exactly `<table>_m<M>_r<R>` + `suffix`."""
    loose = []
    for oid, name, tuples, size, target in rows:
        parsed = parse_partition_name(name.removesuffix(suffix)) if name.endswith(suffix) else None
        if parsed and parsed[0] == table:
            loose.append(LooseTable(int(oid), schema, name, parsed[1], parsed[2], bool(target), float(tuples), int(size)))
    return tuple(sorted(loose, key=lambda t: (t.modulus, t.remainder)))


def partitioned_tables(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> list[PartitionedTable]:
    """Every top-level partitioned table of `schema`, with its partitions, by name (one query: sql/tables.sql)."""
    out = []
    for oid, name, strat, owner, key, columns, pk, partitions, loose in conn.execute(
            TABLES_SQL, {"schema": schema, "check_suffix": SPLIT_CHECK_SUFFIX}).fetchall():
        parts = sorted((Partition(int(p[0]), p[1], p[2], parse_bound(p[3]), bool(p[4]), bool(p[5]), float(p[6]), int(p[7]))
                        for p in partitions), key=lambda p: (p.bound.kind, p.bound.modulus or 0, p.bound.remainder or 0, p.name))
        out.append(PartitionedTable(int(oid), schema, name, str(_STRATEGIES.get(strat, strat)), tuple(key), tuple(columns),
                                    tuple(pk), owner, tuple(parts), _loose(schema, name, loose),
                                    _loose(schema, name, loose, RETIRED_SUFFIX)))
    return out


def find_table(conn: psycopg.Connection, qualified: str) -> PartitionedTable | None:
    """The partitioned table named `qualified` ("schema.table" or "table" in the default schema)."""
    schema, _, name = qualified.rpartition(".")
    for table in partitioned_tables(conn, schema or DEFAULT_SCHEMA):
        if table.name == name:
            return table
    return None


def split_qualified(name: str) -> tuple[str, str]:
    schema, _, rel = name.rpartition(".")
    return schema or DEFAULT_SCHEMA, rel


def mirror_triggers(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    """relation oid -> (trigger function, tgenabled) of every split mirror trigger."""
    rows = conn.execute(
        "select tgrelid, tgfoid::regprocedure::text, tgenabled from pg_trigger where tgname = %s",
        (MIRROR_TRIGGER,),
    ).fetchall()
    return {int(oid): (fn, str(enabled)) for oid, fn, enabled in rows}


def mirror_lock_key(oid: int) -> int:
    """The oid (unsigned 32 bits) as the signed int4 that the two-key advisory lock takes."""
    return oid - (1 << 32) if oid >= 1 << 31 else oid


def split_lock_holder(conn: psycopg.Connection) -> tuple[int, str] | None:
    """(pid, application_name) of the session running a split in this database, if any."""
    row = conn.execute(
        """select l.pid, coalesce(a.application_name, '') from pg_locks l
           left join pg_stat_activity a on a.pid = l.pid
           where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database
                 where datname = current_database())
             and l.classid::bigint = %s and l.objid::bigint = 0 and l.objsubid = 2""",
        (SPLIT_LOCK_NAMESPACE,),
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None
