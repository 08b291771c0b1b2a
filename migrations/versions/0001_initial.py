"""Initial schema: roles, schemas, tables, the ballots hash partitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

`alembic -x partitions=N upgrade head` creates N hash partitions of voting.ballots
(default 16, a power of two), with the same code the partition manager uses.
"""
from alembic import context
from psycopg import sql

from migrations.sqlfile import run_sql, run_sql_file
from partitions.layout import DEFAULT_MODULUS, create_statements

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def partition_count() -> int:
    return int(context.get_x_argument(as_dictionary=True).get("partitions", DEFAULT_MODULUS))


def upgrade() -> None:
    run_sql_file("db/roles.sql")
    run_sql_file("db/tables/0001_initial.sql")
    statements = create_statements("voting", "ballots", partition_count())
    run_sql(";\n".join(s.as_string(None) for s in statements) + ";")


def downgrade() -> None:
    run_sql_file("db/tables/0001_initial.down.sql")
