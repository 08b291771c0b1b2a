"""Static checks: plpgsql_check on every function, and the migration round trip."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgvote import schema_dump
from pgvote.paths import PROJECT_ROOT
from pgvote.procedures import OWNED_SCHEMAS, procedure_files


def test_plpgsql_check_reports_no_error_or_warning(admin) -> None:
    admin.execute("create extension if not exists plpgsql_check")
    functions = admin.execute(
        """select p.oid, p.oid::regprocedure::text from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
           where n.nspname in ('api', 'internal', 'hooks', 'shard', 'partman') and l.lanname = 'plpgsql'"""
    ).fetchall()
    assert len(functions) >= 8
    findings = [
        (name, level, message)
        for oid, name in functions
        for level, message in admin.execute(
            "select level, message from plpgsql_check_function_tb(%s, fatal_errors => false, "
            "extra_warnings => true, other_warnings => true)", (oid,)).fetchall()
    ]
    assert findings == []


def test_every_function_has_one_procedure_file(admin) -> None:
    names = {f.name.removesuffix(".sql") for f in procedure_files()}
    rows = admin.execute(
        """select n.nspname || '.' || p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s)
             and not exists (select from pg_depend d where d.objid = p.oid and d.deptype = 'e')""",
        (list(OWNED_SCHEMAS),),
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(names), "one function per file, one file per function"


def test_procedure_files_live_in_the_schemas_the_sync_sweeps() -> None:
    """A file in another schema would never have its stale overloads dropped."""
    assert {f.name.split(".", 1)[0] for f in procedure_files()} == set(OWNED_SCHEMAS)


@pytest.fixture
def scratch_database(stack) -> Iterator[str]:
    """An empty database on the test cluster, dropped afterwards."""
    with schema_dump.scratch_database(stack.admin_url, "roundtrip") as url:
        yield url


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real alembic command line, as a DBA runs it."""
    return subprocess.run([str(Path(sys.executable).parent / "alembic"), "-c", str(PROJECT_ROOT / "alembic.ini"), *args],
                          env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, check=True)


def schema_objects(url: str) -> tuple[int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """select (select count(*) from pg_namespace where nspname in ('api', 'voting', 'internal')),
                      (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                       where n.nspname in ('api', 'internal', 'hooks', 'shard', 'partman')),
                      (select count(*) from pg_inherits where inhparent = to_regclass('voting.ballots'))"""
        ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def test_upgrade_downgrade_upgrade_round_trip(scratch_database) -> None:
    functions = len(procedure_files())
    alembic(scratch_database, "-x", "partitions=8", "upgrade", "head")
    assert schema_objects(scratch_database) == (3, functions, 8)
    alembic(scratch_database, "downgrade", "base")
    assert schema_objects(scratch_database) == (0, 0, 0)
    alembic(scratch_database, "upgrade", "head")
    assert schema_objects(scratch_database) == (3, functions, 16), "16 partitions by default"
    with psycopg.connect(scratch_database) as conn:
        assert conn.execute("select count(*) from pg_roles where rolname in "
                            "('authenticator', 'anon', 'authenticated', 'ingest')").fetchone()[0] == 4


def test_upgrade_replaces_a_function_create_or_replace_cannot_change(scratch_database) -> None:
    """A file that renamed a parameter (for an api function: a JSON key) or changed the return type:
    CREATE OR REPLACE refuses, so the sync drops the old function and creates the file's."""
    alembic(scratch_database, "upgrade", "head")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("drop function api.close_poll(uuid)")
        conn.execute("create function api.close_poll(id uuid) returns text language sql as 'select null::text'")
        conn.execute("update internal.procedure_sources set sha256 = 'stale' where file = 'api.close_poll.sql'")
    upgrade = alembic(scratch_database, "upgrade", "head")
    assert "Dropped api.close_poll(uuid)" in upgrade.stderr
    with psycopg.connect(scratch_database) as conn:
        row = conn.execute("""select pg_get_function_arguments(p.oid), p.prorettype::regtype::text from pg_proc p
                              where p.oid = 'api.close_poll(uuid)'::regprocedure""").fetchone()
        assert row == ("poll_id uuid", "jsonb")
        assert conn.execute("select has_function_privilege('authenticated', 'api.close_poll(uuid)', 'EXECUTE')"
                            ).fetchone()[0], "grants re-applied to the new function"


def revisions_before_head() -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    return [s.revision for s in scripts.walk_revisions()][1:]  # newest first, head left out


# Polls of both kinds with 1-2 option ballots, written as the API of that revision stored them;
# tally slots (from 0002 on) as cast_vote kept them: equal to the ballots.
POPULATE = """
insert into voting.polls (creator_key, question, option_count, max_choices, allow_revote,
                          allow_multiple_votes, allow_anonymous)
select sha256(convert_to('creator' || i, 'UTF8')), 'Question ' || i, 3, 2, true, i % 2 = 0, true
from generate_series(1, 12) as i;
insert into voting.poll_options (poll_id, position, label)
select poll_id, pos, 'option ' || pos from voting.polls, generate_series(1, 3) as pos;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select p.poll_id, sha256(convert_to(p.poll_id::text || ':' || v, 'UTF8')), gen_random_uuid(),
       array(select o.option_id from voting.poll_options o
             where o.poll_id = p.poll_id and (o.position = 1 + v % 3 or (v % 4 = 0 and o.position = 1 + (v + 1) % 3))
             order by o.position)
from voting.polls p, generate_series(1, 40) as v;
"""
TALLIES = """
insert into voting.tally_slots (poll_id, slot, ballots, votes)
select p.poll_id, 0, (select count(*) from voting.ballots b where b.poll_id = p.poll_id),
       array(select count(b.poll_id) from voting.poll_options o
             left join voting.ballots b on b.poll_id = o.poll_id and o.option_id = any (b.option_ids)
             where o.poll_id = p.poll_id group by o.position order by o.position)
from voting.polls p;
"""
SNAPSHOT = """
select (select count(*) from voting.polls), (select count(*) from voting.poll_options),
       (select count(*) from voting.ballots),
       (select md5(string_agg(b::text, ',' order by b::text)) from voting.ballots b)
"""


@pytest.mark.parametrize("revision", revisions_before_head())
def test_upgrade_from_an_earlier_revision_keeps_every_ballot(scratch_database, revision) -> None:
    """An installation at an earlier revision, holding polls and ballots, upgraded to head: nothing is
    lost or changed, results equal the stored ballots, and the upgraded database takes new votes."""
    from helpers import counts_from_ballots

    alembic(scratch_database, "upgrade", revision)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(POPULATE)
        if conn.execute("select to_regclass('voting.tally_slots') is not null").fetchone()[0]:
            conn.execute(TALLIES)
        before = conn.execute(SNAPSHOT).fetchone()
    assert before[2] == 12 * 40
    alembic(scratch_database, "upgrade", "head")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        assert conn.execute(SNAPSHOT).fetchone() == before, "every poll, option and ballot as it was"
        polls = [r[0] for r in conn.execute("select poll_id::text from voting.polls order by poll_id")]
        for poll_id in polls:
            results = conn.execute("select api.poll_results(%s)", (poll_id,)).fetchone()[0]
            votes = {o["option_id"]: o["votes"] for o in results["options"]}
            assert votes == counts_from_ballots(conn, poll_id), "tallies = ballots"
            assert results["total_ballots"] == 40
        option = conn.execute("select option_id from voting.poll_options where poll_id = %s and position = 1",
                              (polls[0],)).fetchone()[0]
        with conn.transaction():
            conn.execute("select set_config('role', 'anon', true), "
                         "set_config('request.jwt.claims', '{\"role\": \"anon\"}', true)")
            answer = conn.execute("select api.cast_vote(%s, %s, 'a voter after the upgrade')",
                                  (polls[0], [option])).fetchone()[0]
        assert answer["status"] == "recorded"
        results = conn.execute("select api.poll_results(%s)", (polls[0],)).fetchone()[0]
        assert results["total_ballots"] == 41


def test_upgrade_reapplies_changed_procedures_only(scratch_database) -> None:
    alembic(scratch_database, "upgrade", "head")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("drop function api.close_poll(uuid)")
        conn.execute("update internal.procedure_sources set sha256 = 'stale' where file = 'api.close_poll.sql'")
        before = dict(conn.execute("select file, applied_at from internal.procedure_sources").fetchall())
    alembic(scratch_database, "upgrade", "head")
    with psycopg.connect(scratch_database) as conn:
        after = dict(conn.execute("select file, applied_at from internal.procedure_sources").fetchall())
        assert conn.execute("select to_regprocedure('api.close_poll(uuid)') is not null").fetchone()[0]
        assert conn.execute("select has_function_privilege('authenticated', 'api.close_poll(uuid)', 'EXECUTE')"
                            ).fetchone()[0], "grants are re-applied with the procedures"
    assert [f for f in after if after[f] != before[f]] == ["api.close_poll.sql"]


def test_revisions_depend_only_on_frozen_files() -> None:
    """A revision runs the same SQL forever: it imports only alembic and the SQL runner, and the files
    it runs are its own frozen revision files under db/tables/."""
    import ast

    for path in sorted((PROJECT_ROOT / "migrations" / "versions").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert modules <= {"alembic", "migrations.sqlfile"}, (path.name, modules)
        files = [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", None) == "run_sql_file"]
        revision = path.name.split("_", 1)[0]
        assert files and all(f.startswith(f"db/tables/{revision}_") for f in files), (path.name, files)


def test_initial_revision_writes_the_partitions_the_manager_names(scratch_database) -> None:
    """The initial revision's frozen DDL and partman.create_partitions (procedures/partman.create_partitions.sql)
    name and bound the same slices."""
    alembic(scratch_database, "-x", "partitions=4", "upgrade", "head")
    with psycopg.connect(scratch_database) as conn:
        written = conn.execute(
            """select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i
               join pg_class c on c.oid = i.inhrelid where i.inhparent = 'voting.ballots'::regclass order by 1"""
        ).fetchall()
        conn.execute("create schema layout_check")
        conn.execute("create table layout_check.ballots (poll_id uuid) partition by hash (poll_id)")
        conn.execute("select partman.create_partitions('layout_check.ballots', 4)").fetchall()
        expected = conn.execute(
            """select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i
               join pg_class c on c.oid = i.inhrelid where i.inhparent = 'layout_check.ballots'::regclass
               order by 1"""
        ).fetchall()
    assert written == expected and len(written) == 4


def test_offline_sql_builds_everything(scratch_database) -> None:
    """`alembic upgrade head --sql`, the script a DBA reviews and runs by hand, builds what the online
    upgrade does: run on an empty database it yields the committed schema."""
    script = alembic(scratch_database, "upgrade", "head", "--sql").stdout
    for f in procedure_files():
        assert f.text.strip() in script, f.name
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(script)
    assert schema_dump.dump_schema(scratch_database) == schema_dump.SCHEMA_FILE.read_text()


def test_partition_count_must_be_a_power_of_two(scratch_database) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        alembic(scratch_database, "-x", "partitions=12", "upgrade", "head")
    assert "power of two" in failed.value.stderr
    assert schema_objects(scratch_database) == (0, 0, 0), "the failed upgrade left nothing behind"


def test_upgrade_drops_functions_no_file_defines(scratch_database) -> None:
    """A database at head that holds what older files left behind: a function whose file was removed,
    an overload left by a signature change of a file edited since, and one beside an unchanged file.
    The upgrade drops exactly those; the functions of procedures/, their grants and extensions stay."""
    alembic(scratch_database, "upgrade", "head")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("create extension fuzzystrmatch schema internal")  # not ours: never dropped
        conn.execute("create function internal.retired_helper(n integer) returns integer language sql as 'select n'")
        conn.execute("insert into internal.procedure_sources (file, sha256) values ('internal.retired_helper.sql', 'x')")
        # poll_results once took a text id; its file changed since (stale digest)
        conn.execute("create function api.poll_results(poll_id text) returns jsonb language sql as 'select null::jsonb'")
        conn.execute("update internal.procedure_sources set sha256 = 'stale' where file = 'api.poll_results.sql'")
        # an overload beside a file whose text did not change: PostgREST would answer 300
        conn.execute("create function api.close_poll(poll_id uuid, reason text) returns jsonb language sql "
                     "as 'select null::jsonb'")
        extension_functions = conn.execute(
            "select count(*) from pg_proc where pronamespace = 'internal'::regnamespace "
            "and proname in ('levenshtein', 'soundex')").fetchone()[0]
        assert extension_functions > 0
    upgrade = alembic(scratch_database, "upgrade", "head")
    assert "Dropped api.close_poll(uuid,text)" in upgrade.stderr
    with psycopg.connect(scratch_database) as conn:
        functions = {r[0] for r in conn.execute(
            """select p.oid::regprocedure::text from pg_proc p
               where p.pronamespace in ('api'::regnamespace, 'internal'::regnamespace, 'hooks'::regnamespace,
                                        'shard'::regnamespace, 'partman'::regnamespace)
                 and not exists (select from pg_depend d where d.objid = p.oid and d.deptype = 'e')""")}
        assert not {"internal.retired_helper(integer)", "api.poll_results(text)",
                    "api.close_poll(uuid,text)"} & functions
        assert {"api.poll_results(uuid)", "api.close_poll(uuid)"} <= functions
        assert len(functions) == len(procedure_files()), "one function per file, nothing else"
        assert conn.execute("select count(*) from pg_proc where pronamespace = 'internal'::regnamespace "
                            "and proname in ('levenshtein', 'soundex')").fetchone()[0] == extension_functions
        assert {r[0] for r in conn.execute("select file from internal.procedure_sources")} == \
            {f.name for f in procedure_files()}
        assert conn.execute("select has_function_privilege('anon', 'api.poll_results(uuid)', 'EXECUTE')"
                            ).fetchone()[0], "grants re-applied"


def test_committed_schema_is_what_the_migrations_build(stack) -> None:
    """db/schema.sql is the normalised dump of a fresh `alembic upgrade head`: a change that alters the
    schema without regenerating it (`pgvote schema`) fails here, with the difference."""
    import difflib

    built = schema_dump.migrated_schema(stack.admin_url)
    committed = schema_dump.SCHEMA_FILE.read_text() if schema_dump.SCHEMA_FILE.is_file() else ""
    diff = "".join(list(difflib.unified_diff(committed.splitlines(True), built.splitlines(True),
                                             "db/schema.sql (committed)", "built by the migrations"))[:80])
    assert built == committed, f"run `pgvote schema` and commit db/schema.sql:\n{diff}"


def test_schema_dump_normalisation_drops_what_varies_between_runs() -> None:
    dump = "\n".join([
        "-- PostgreSQL database dump", "", r"\restrict Abc123", "",
        "-- Dumped from database version 17.6", "-- Dumped by pg_dump version 17.6", "",
        "SET statement_timeout = 0;", "SET transaction_timeout = 0;",
        "SELECT pg_catalog.set_config('search_path', '', false);", "", "", "",
        "CREATE SCHEMA api;", "    SET search_path TO 'pg_catalog', 'pg_temp'", r"\unrestrict Abc123", ""])
    assert schema_dump.normalise(dump) == schema_dump.HEADER + "\n" + "\n".join([
        "-- PostgreSQL database dump", "", "CREATE SCHEMA api;", "    SET search_path TO 'pg_catalog', 'pg_temp'", ""])
