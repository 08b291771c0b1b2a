"""Hash-partition layout: names and DDL for one (modulus, remainder) slice of a table.

Partitions are named after their place in the hash space, `<table>_m<modulus>_r<remainder>`,
so a name says which slice a table holds even after some partitions were split (a
partition m16_r3 splits into m32_r3 and m32_r19). The initial migration writes the first set
with its own frozen copy of `create_statements` (tests/test_static.py checks that both agree);
the partition manager uses this code (`pgvote partitions create`), and `parse_partition_name` /
`halves` / `parent_slice` for `split`.
"""
from __future__ import annotations

import re
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


# --------------------------------------------------------------------------------------------------
# Names, bounds and the doubling rule (used by the partition manager)
# --------------------------------------------------------------------------------------------------

_PARTITION_NAME = re.compile(r"^(?P<table>.+)_m(?P<modulus>[0-9]+)_r(?P<remainder>[0-9]+)$")


def parse_partition_name(name: str) -> tuple[str, int, int] | None:
    """(table, modulus, remainder) of a name `<table>_m<modulus>_r<remainder>`, else None."""
    found = _PARTITION_NAME.match(name)
    if not found:
        return None
    return found["table"], int(found["modulus"]), int(found["remainder"])


def halves(modulus: int, remainder: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two slices (2m, r) and (2m, r + m) that together hold exactly the rows of slice (m, r)."""
    return (2 * modulus, remainder), (2 * modulus, remainder + modulus)


def parent_slice(modulus: int, remainder: int) -> tuple[int, int]:
    """The slice (m/2, r mod m/2) whose split produces slice (m, r); modulus must be even."""
    if modulus % 2:
        raise ValueError(f"modulus {modulus} is odd: no slice splits into it")
    half = modulus // 2
    return half, remainder % half
