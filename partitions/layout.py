"""Hash-partition layout: names and DDL for one (modulus, remainder) slice of a table.

Partitions are named after their place in the hash space, `<table>_m<modulus>_r<remainder>`,
so a name says which slice a table holds even after some partitions were split (a
partition m16_r3 splits into m32_r3 and m32_r19). The initial migration creates the first
set with `create_statements`; the partition manager reuses the same code later.
"""
from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

DEFAULT_MODULUS = 16
MAX_MODULUS = 1024


@dataclass(frozen=True)
class HashSlice:
    schema: str
    table: str
    modulus: int
    remainder: int

    @property
    def partition_name(self) -> str:
        return f"{self.table}_m{self.modulus}_r{self.remainder}"

    def create_statement(self) -> sql.Composed:
        return sql.SQL(
            "create table if not exists {part} partition of {parent} "
            "for values with (modulus {m}, remainder {r})"
        ).format(
            part=sql.Identifier(self.schema, self.partition_name),
            parent=sql.Identifier(self.schema, self.table),
            m=sql.Literal(self.modulus),
            r=sql.Literal(self.remainder),
        )


def check_modulus(modulus: int) -> None:
    """Refuse a modulus that cannot grow by doubling one partition at a time."""
    if modulus < 1 or modulus > MAX_MODULUS or modulus & (modulus - 1):
        raise ValueError(f"the partition count must be a power of two between 1 and {MAX_MODULUS}; got {modulus}")


def initial_slices(schema: str, table: str, modulus: int = DEFAULT_MODULUS) -> list[HashSlice]:
    check_modulus(modulus)
    return [HashSlice(schema, table, modulus, r) for r in range(modulus)]


def create_statements(schema: str, table: str, modulus: int = DEFAULT_MODULUS) -> list[sql.Composed]:
    """Idempotent DDL creating the whole hash space of schema.table with `modulus` partitions."""
    return [s.create_statement() for s in initial_slices(schema, table, modulus)]
