"""Run a project SQL file from a revision, online or offline (`alembic upgrade --sql`)."""
from __future__ import annotations

from alembic import context, op

from pgvote.paths import PROJECT_ROOT


def run_sql(text: str) -> None:
    """Send SQL text as written: no bind-parameter parsing, several statements allowed."""
    if context.is_offline_mode():
        context.get_context().impl.static_output(text.rstrip() + "\n")
        return
    # The raw psycopg connection of the migration's transaction: psycopg sends a query
    # without parameters untouched, so % and : in the SQL need no escaping.
    op.get_bind().connection.driver_connection.execute(text)


def run_sql_file(relative_path: str) -> None:
    run_sql((PROJECT_ROOT / relative_path).read_text())
