"""Replaceable objects: every function's only source is its file in procedures/.

`sync_procedures` runs at the end of every `alembic upgrade` that reaches head, in the
migration's transaction: it re-creates the functions whose file text changed since they
were last applied (digests in internal.procedure_sources), drops every function of the
schemas procedures/ owns that no file defines any more, then re-applies db/roles.sql,
db/grants.sql and db/schedules.sql. Revisions never paste function bodies.

A stale function is one whose file was removed, or an overload a file no longer defines (its
argument types changed): CREATE OR REPLACE of the new signature leaves the old one beside it,
and two overloads of an `api` function make PostgREST answer 300. A file's function is the
pg_proc row its CREATE OR REPLACE wrote (a new row version); a file whose function is missing
or has several overloads is therefore applied even when its text is unchanged, so that the
sync learns which overload is the file's.
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
OWNED_SCHEMAS = ("api", "hooks", "internal", "shard", "partman")


@dataclass(frozen=True)
class Folder:
    """A set of procedure files and the schemas whose functions it owns in the databases it is synced into.

    `remembers`: whether applied digests are kept in internal.procedure_sources (unchanged files are
    skipped). The router's folder (pgvote/shards.py) re-applies all its files every time instead: in the
    router database its api functions replace those of procedures/, which a later sync of procedures/
    may write again."""

    directory: Path
    schemas: tuple[str, ...]
    remembers: bool = True
    after: tuple[str, ...] = ()  # db/ files applied after the functions


SCHEMA = Folder(PROCEDURES_DIR, OWNED_SCHEMAS, after=ALWAYS_APPLIED)


@dataclass(frozen=True)
class ProcedureFile:
    name: str  # <schema>.<function>.sql
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def procedure_files(directory: Path = PROCEDURES_DIR) -> list[ProcedureFile]:
    return [ProcedureFile(p.name, p.read_text()) for p in sorted(directory.glob("*.sql"))]


@dataclass(frozen=True)
class SyncResult:
    applied: list[str]  # files applied, in order
    dropped: list[str]  # functions dropped, as regprocedure text


@dataclass(frozen=True)
class Routine:
    oid: int
    version: str  # the xmin of its pg_proc row: CREATE OR REPLACE writes a new one
    signature: str  # regprocedure text: SQL as it stands, identifiers quoted where needed
    kind: str
    file: str  # the file that would define it: <schema>.<name>.sql


# Every routine of the owned schemas but those of extensions.
_OWNED_ROUTINES = """
    select p.oid, p.xmin::text, p.oid::regprocedure::text, p.prokind, n.nspname || '.' || p.proname || '.sql'
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = any(%s)
      and not exists (select from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                      and d.deptype = 'e')
    order by 3"""


def owned_routines(conn: psycopg.Connection, schemas: tuple[str, ...] = OWNED_SCHEMAS) -> list[Routine]:
    return [Routine(*row) for row in conn.execute(_OWNED_ROUTINES, (list(schemas),))]


def sync_procedures(conn: psycopg.Connection, folder: Folder = SCHEMA) -> SyncResult:
    """Apply changed procedure files, drop stale functions of the folder's schemas, re-apply its
    db/ files (for procedures/: roles, grants and schedules)."""
    files = procedure_files(folder.directory)
    applied: dict[str, str] = {}
    if folder.remembers:
        applied = dict(conn.execute("select file, sha256 from internal.procedure_sources").fetchall())
    before = owned_routines(conn, folder.schemas)
    overloads = Counter(r.file for r in before)
    changed = [f for f in files if applied.get(f.name) != f.digest or overloads[f.name] != 1]
    dropped: list[str] = []
    # Bodies reference each other; validate them once all exist, not in file order.
    conn.execute("set local check_function_bodies = off")
    for f in changed:
        dropped += apply_file(conn, f, folder.schemas)
    conn.execute("set local check_function_bodies = on")
    # Stale: no file of its name, or of a file applied now that did not write it (each file runs in
    # a savepoint of its own, so a row it wrote has another xmin than before).
    names, applied_now = {f.name for f in files}, {f.name for f in changed}
    unwritten = {(r.oid, r.version) for r in before}
    dropped += drop_routines(conn, [r for r in owned_routines(conn, folder.schemas) if r.file not in names
                                    or (r.file in applied_now and (r.oid, r.version) in unwritten)])
    if folder.remembers:  # the digests of the files applied now; removed files forgotten
        conn.execute("""with gone as (delete from internal.procedure_sources where file <> all(%s))
                        insert into internal.procedure_sources (file, sha256) select * from unnest(%s::text[], %s::text[])
                        on conflict (file) do update set sha256 = excluded.sha256, applied_at = now()""",
                     (sorted(names), [f.name for f in changed], [f.digest for f in changed]))
    for name in folder.after:
        conn.execute((DB_DIR / name).read_text())
    return SyncResult([f.name for f in changed], dropped)


def apply_file(conn: psycopg.Connection, f: ProcedureFile, schemas: tuple[str, ...] = OWNED_SCHEMAS) -> list[str]:
    """Run a file's CREATE OR REPLACE. A change it cannot make in place (another return type, a renamed
    parameter, a removed default: for an api function, a change of its JSON keys) replaces the function
    instead: every routine of that name is dropped and the file run again. Returns what was dropped."""
    try:
        with conn.transaction():  # a savepoint: only this statement is undone if it fails
            conn.execute(f.text)
        return []
    except psycopg.errors.InvalidFunctionDefinition:
        replaced = drop_routines(conn, [r for r in owned_routines(conn, schemas) if r.file == f.name])
        conn.execute(f.text)
        return replaced


def drop_routines(conn: psycopg.Connection, routines: list[Routine]) -> list[str]:
    """Without CASCADE: a view that still uses one fails the upgrade with PostgreSQL's own message,
    and the transaction leaves everything as it was."""
    for r in routines:
        statement = "drop aggregate {}" if r.kind == "a" else "drop routine {}"
        conn.execute(sql.SQL(statement).format(sql.SQL(r.signature)))
    return [r.signature for r in routines]


def offline_script() -> str:
    """Everything sync_procedures would apply on an empty database, for `alembic upgrade --sql`."""
    return "\n\n".join(["set check_function_bodies = off;", *(f.text for f in procedure_files()),
                        "set check_function_bodies = on;", *((DB_DIR / name).read_text() for name in ALWAYS_APPLIED)])
