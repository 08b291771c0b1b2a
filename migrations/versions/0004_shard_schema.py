"""The schema shard: the entry points a PL/Proxy router calls on each shard.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

The functions are procedures/shard.*.sql; the role pgvote_router that may execute them comes from
db/roles.sql, which every upgrade to head applies before the grants (pgvote/procedures.py).
"""
from migrations.sqlfile import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("db/tables/0004_shard_schema.sql")


def downgrade() -> None:
    run_sql_file("db/tables/0004_shard_schema.down.sql")
