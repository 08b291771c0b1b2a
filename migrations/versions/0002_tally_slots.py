"""Exact, contention-free tallies: per-backend tally slots, compacted by pg_cron.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from migrations.sqlfile import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("db/tables/0002_tally_slots.sql")


def downgrade() -> None:
    run_sql_file("db/tables/0002_tally_slots.down.sql")
