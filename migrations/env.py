"""Alembic environment: SQL-first migrations on DATABASE_URL, then replaceable objects.

All revisions of one `upgrade` run in one transaction. When the database ends at head,
the functions of procedures/ whose text changed are re-created, those no file defines
are dropped, and db/grants.sql is re-applied in that same transaction (pgvote/procedures.py),
so `alembic upgrade head` on an empty database builds everything and, later, picks up edited
and removed functions.
"""
from __future__ import annotations

import logging
import re
from logging.config import fileConfig

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from pgvote.database_url import database_url
from pgvote.procedures import offline_script, sync_procedures

config = context.config
if config.config_file_name is not None:  # alembic.ini's loggers: what the upgrade did, on stderr
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("alembic.env")


def target_url() -> str:
    """The libpq URL to migrate (pgvote/migrate.py's, else DATABASE_URL) for SQLAlchemy's psycopg 3 dialect."""
    url = config.attributes.get("database_url") or database_url()
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def heads() -> set[str]:
    return set(ScriptDirectory.from_config(config).get_heads())


def run_offline() -> None:
    context.configure(url=target_url(), literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
        target = context.get_revision_argument()  # the script ends at head: alembic resolves "head" to its number
        if set(target if isinstance(target, tuple) else (target,)) == heads():
            context.get_context().impl.static_output(offline_script())


def run_online() -> None:
    engine = create_engine(target_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()
            if set(context.get_context().get_current_heads()) == heads():  # the database ends at head
                result = sync_procedures(connection.connection.driver_connection)
                log.info("Applied %d changed file(s) of procedures/", len(result.applied))
                for signature in result.dropped:
                    log.info("Dropped %s: no file in procedures/ defines it", signature)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
