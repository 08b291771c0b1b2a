"""The first column of a query's one row (pgvote/bench uses it too)."""
from __future__ import annotations

from typing import Any

import psycopg


def one(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a query always returns (count, current_user, a setting...)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("a query that always returns a row returned none")
    return row[0]
