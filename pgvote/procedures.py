"""Replaceable objects: every function's only source is its file in procedures/.

`sync_procedures` runs at the end of every `alembic upgrade` that reaches head, in the
migration's transaction: it re-creates the functions whose file text changed since they
were last applied (digests in internal.procedure_sources), then re-applies db/grants.sql
and db/schedules.sql.
Revisions never paste function bodies.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgvote.paths import DB_DIR, PROCEDURES_DIR


#: Idempotent files re-applied after the procedures on every upgrade, in this order.
ALWAYS_APPLIED = ("grants.sql", "schedules.sql")


@dataclass(frozen=True)
class ProcedureFile:
    path: Path
    text: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def procedure_files(directory: Path = PROCEDURES_DIR) -> list[ProcedureFile]:
    return [ProcedureFile(p, p.read_text()) for p in sorted(directory.glob("*.sql"))]


def sync_procedures(conn: psycopg.Connection) -> list[str]:
    """Apply changed procedure files and the grants; return the names of the files applied."""
    applied = dict(conn.execute("select file, sha256 from internal.procedure_sources").fetchall())
    changed = [f for f in procedure_files() if applied.get(f.name) != f.digest]
    # Bodies reference each other; validate them once all exist, not in file order.
    conn.execute("set local check_function_bodies = off")
    for f in changed:
        conn.execute(f.text)
        conn.execute(
            """insert into internal.procedure_sources (file, sha256) values (%s, %s)
               on conflict (file) do update set sha256 = excluded.sha256, applied_at = now()""",
            (f.name, f.digest),
        )
    conn.execute("set local check_function_bodies = on")
    for name in ALWAYS_APPLIED:
        conn.execute((DB_DIR / name).read_text())
    return [f.name for f in changed]


def offline_script() -> str:
    """Everything sync_procedures would apply on an empty database, for `alembic upgrade --sql`."""
    parts = ["set check_function_bodies = off;"]
    parts += [f.text for f in procedure_files()]
    parts += ["set check_function_bodies = on;"] + [(DB_DIR / name).read_text() for name in ALWAYS_APPLIED]
    return "\n\n".join(parts)
