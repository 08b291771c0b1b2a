"""Replaceable objects: every function's only source is its file in procedures/.

`sync_procedures` runs at the end of every `alembic upgrade` that reaches head, in the
migration's transaction: it re-creates the functions whose file text changed since they
were last applied (digests in internal.procedure_sources), drops every function of the
schemas procedures/ owns that no file defines any more, then re-applies db/roles.sql,
db/grants.sql and db/schedules.sql. Revisions never paste function bodies.

A stale function is one whose file was removed, or an overload a file no longer defines (its
signature changed): CREATE OR REPLACE of the new signature leaves the old one beside it, and
two overloads of an `api` function make PostgREST answer 300. A file's function is the one
its CREATE OR REPLACE wrote, i.e. the pg_proc row this transaction wrote; a file whose
function is missing or has several overloads is therefore applied even when its text is
unchanged, so that the sync learns which overload is the file's.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from pgvote.paths import DB_DIR, PROCEDURES_DIR


#: Idempotent files re-applied after the procedures on every upgrade, in this order. Roles are
#: cluster-wide and outlive any revision: created when missing, like grants reconciled each time.
ALWAYS_APPLIED = ("roles.sql", "grants.sql", "schedules.sql")

#: The schemas whose functions procedures/ owns (files are named <schema>.<function>.sql).
OWNED_SCHEMAS = ("api", "hooks", "internal")


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


@dataclass(frozen=True)
class SyncResult:
    applied: list[str]  # files applied, in order
    dropped: list[str]  # stale functions dropped, as regprocedure text


# Every routine of the owned schemas but those of extensions, with the file that would define it.
_OWNED_ROUTINES = """
    select p.oid::regprocedure::text, p.prokind, n.nspname || '.' || p.proname || '.sql',
           p.xmin = pg_current_xact_id()::xid
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = any(%s)
      and not exists (select from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                      and d.deptype = 'e')
    order by 1"""


def sync_procedures(conn: psycopg.Connection) -> SyncResult:
    """Apply changed procedure files, drop stale functions, re-apply the grants."""
    files = procedure_files()
    applied = dict(conn.execute("select file, sha256 from internal.procedure_sources").fetchall())
    overloads = Counter(file for _, _, file, _ in conn.execute(_OWNED_ROUTINES, (list(OWNED_SCHEMAS),)))
    changed = [f for f in files if applied.get(f.name) != f.digest or overloads[f.name] != 1]
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
    dropped = drop_stale_functions(conn, {f.name for f in files}, {f.name for f in changed})
    conn.execute("delete from internal.procedure_sources where file <> all(%s)", ([f.name for f in files],))
    for name in ALWAYS_APPLIED:
        conn.execute((DB_DIR / name).read_text())
    return SyncResult([f.name for f in changed], dropped)


def drop_stale_functions(conn: psycopg.Connection, files: set[str], applied_now: set[str]) -> list[str]:
    """Drop the owned functions no file defines: no file of their name, or, for a file applied in
    this transaction, not the row it wrote. Without CASCADE: a view that still uses a stale function
    fails the upgrade with PostgreSQL's own message, and the transaction leaves everything as it was."""
    stale = [(signature, kind) for signature, kind, file, written_now in
             conn.execute(_OWNED_ROUTINES, (list(OWNED_SCHEMAS),))
             if file not in files or (file in applied_now and not written_now)]
    for signature, kind in stale:
        # regprocedure text quotes each identifier that needs it: it is SQL as it stands
        statement = "drop aggregate {}" if kind == "a" else "drop routine {}"
        conn.execute(sql.SQL(statement).format(sql.SQL(signature)))
    return [signature for signature, _ in stale]


def offline_script() -> str:
    """Everything sync_procedures would apply on an empty database, for `alembic upgrade --sql`."""
    parts = ["set check_function_bodies = off;"]
    parts += [f.text for f in procedure_files()]
    parts += ["set check_function_bodies = on;"] + [(DB_DIR / name).read_text() for name in ALWAYS_APPLIED]
    return "\n\n".join(parts)
