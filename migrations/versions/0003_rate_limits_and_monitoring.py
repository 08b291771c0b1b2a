"""Rate limiting in the database (token buckets, PostgREST pre-request hook) and the monitoring schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

db/roles.sql runs again first: it creates the role ops (readers of the monitoring views) on
installations that ran 0001 before ops existed (it is idempotent).
"""
from migrations.sqlfile import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("db/roles.sql")
    run_sql_file("db/tables/0003_rate_limits_and_monitoring.sql")


def downgrade() -> None:
    run_sql_file("db/tables/0003_rate_limits_and_monitoring.down.sql")
