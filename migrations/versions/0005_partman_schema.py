"""The schema partman: the partition manager's functions and procedures.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The routines are procedures/partman.*.sql (synced like every other schema's); only the database
owner or a superuser may execute them (db/grants.sql): they run DDL with the caller's rights.
"""
from migrations.sqlfile import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("db/tables/0005_partman_schema.sql")


def downgrade() -> None:
    run_sql_file("db/tables/0005_partman_schema.down.sql")
