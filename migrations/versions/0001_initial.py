"""Initial schema: schemas, tables, the ballots hash partitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

`alembic -x partitions=N upgrade head` creates N hash partitions of voting.ballots
(default 16, a power of two). The DDL is generated here, not by the partition manager's
code: a revision runs the same SQL forever, whatever later code does. The manager reads
the names written here (`<table>_m<modulus>_r<remainder>`, procedures/partman.partitions.sql), and
tests/test_static.py checks that both still agree.
"""
from alembic import context

from migrations.sqlfile import run_sql, run_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1024


def partition_count() -> int:
    count = int(context.get_x_argument(as_dictionary=True).get("partitions", DEFAULT_PARTITIONS))
    # doubling one partition at a time needs a power of two
    if count < 1 or count > MAX_PARTITIONS or count & (count - 1):
        raise ValueError(f"the partition count must be a power of two between 1 and {MAX_PARTITIONS}; got {count}")
    return count


def partition_statements(count: int) -> str:
    """Idempotent DDL of the whole hash space of voting.ballots in `count` partitions."""
    return "".join(
        f'create table if not exists "voting"."ballots_m{count}_r{r}" partition of "voting"."ballots" '
        f"for values with (modulus {count}, remainder {r});\n"
        for r in range(count)
    )


def upgrade() -> None:
    run_sql_file("db/tables/0001_initial.sql")
    run_sql(partition_statements(partition_count()))


def downgrade() -> None:
    run_sql_file("db/tables/0001_initial.down.sql")
