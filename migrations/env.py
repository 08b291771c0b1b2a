"""Alembic environment: SQL-first migrations on DATABASE_URL, then replaceable objects.

All revisions of one `upgrade` run in one transaction. When the database ends at head,
the functions of procedures/ whose text changed are re-created and db/grants.sql is
re-applied in that same transaction (pgvote/procedures.py), so `alembic upgrade head`
on an empty database builds everything and, later, picks up edited functions.
"""
from __future__ import annotations

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from pgvote.database_url import database_url, sqlalchemy_url
from pgvote.procedures import offline_script, sync_procedures

config = context.config


def target_url() -> str:
    return config.attributes.get("database_url") or database_url()


def at_head() -> bool:
    heads = set(ScriptDirectory.from_config(config).get_heads())
    return set(context.get_context().get_current_heads()) == heads


def run_offline() -> None:
    context.configure(url=sqlalchemy_url(target_url()), literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
        if context.get_revision_argument() == "head" or context.get_tag_argument() == "head":
            context.get_context().impl.static_output(offline_script())


def run_online() -> None:
    engine = create_engine(sqlalchemy_url(target_url()), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()
            if at_head():
                sync_procedures(connection.connection.driver_connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
