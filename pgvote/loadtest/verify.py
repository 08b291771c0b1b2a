"""Exactly-once verification after a run, against what is stored (the counts and the problems: sql/verify.sql)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

VERIFY_SQL = (Path(__file__).parent / "sql" / "verify.sql").read_text()


def poll_results(admin: psycopg.Connection[Any], poll_id: str) -> dict[str, Any] | None:
    """``api.poll_results`` as an anonymous reader calls it (straight from the database: an HTTP cache
    in front may serve a result up to a second old); None when the poll does not exist."""
    try:
        with admin.transaction():
            admin.execute("select set_config('role', 'anon', true)")
            row = admin.execute("select api.poll_results(%s)", (poll_id,)).fetchone()
    except psycopg.Error:  # poll_not_found (SQLSTATE PGRST): the transaction is rolled back
        return None
    return row[0] if row else None


def verify_poll(admin_url: str, poll_id: str, acknowledged: Mapping[str, Sequence[str]],
                attempted: Sequence[str] = ()) -> dict[str, Any]:
    """``acknowledged``: identity -> option ids that voter cast and got a 200 for; ``attempted``: other
    identities the run tried (not acknowledged: their ballot may or may not be stored). The counts of
    sql/verify.sql, its ``problems`` and ``exactly_once`` (no problem)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        results = poll_results(admin, poll_id)
        with admin.cursor(row_factory=dict_row) as cur:
            row = cur.execute(VERIFY_SQL, {"poll": poll_id, "acked": json.dumps({k: list(v) for k, v in acknowledged.items()}),
                                           "attempted": list(attempted),
                                           "results": json.dumps(results) if results else None}).fetchone()
    assert row is not None
    return {**row, "exactly_once": not row["problems"]}
