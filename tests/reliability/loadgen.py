"""The blocking PostgREST emulator test_bad_input.py sends its generated requests through.

The fault tests no longer use it: they load the real path (nginx -> PostgREST -> PgBouncer) with k6,
see k6round.py. This module goes when the bad-input properties are sent over HTTP too.
"""
from __future__ import annotations

import re

import psycopg

from pgvote.postgrest_emulation import PostgrestEmulator
from pgvote.stack import PROJECT_DIR


def configured_pre_request(conn: psycopg.Connection) -> str | None:
    """PostgREST's db-pre-request hook as api/postgrest.conf configures it, when the database has it.

    The suite calls the API exactly as the configured PostgREST would, hook included.
    """
    conf = (PROJECT_DIR / "api" / "postgrest.conf").read_text()
    match = re.search(r'^\s*db-pre-request\s*=\s*"([^"]+)"', conf, flags=re.MULTILINE)
    if not match:
        return None
    schema, _, name = match[1].rpartition(".")
    exists = conn.execute(  # a catalog read: the authenticator itself may not use schema hooks
        """select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                          where n.nspname = %s and p.proname = %s and p.pronargs = 0)""",
        (schema or "public", name)).fetchone()
    return match[1] if exists and exists[0] else None


def emulator(url: str) -> PostgrestEmulator:
    """A blocking emulator on url (authenticator), configured like the project's PostgREST."""
    conn = psycopg.connect(url, autocommit=True)
    return PostgrestEmulator(conn, pre_request=configured_pre_request(conn))
