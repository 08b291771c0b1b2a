"""Rate limiting in the database (token buckets, PostgREST pre-request hook) and the monitoring schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

The role ops (readers of the monitoring views) comes from db/roles.sql, which every upgrade
to head applies before the grants (pgvote/procedures.py).
"""
from migrations.sqlfile import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("db/tables/0003_rate_limits_and_monitoring.sql")


def downgrade() -> None:
    run_sql_file("db/tables/0003_rate_limits_and_monitoring.down.sql")
