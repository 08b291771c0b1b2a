"""Run alembic migrations programmatically (what `pgvote migrate`, `pgvote schema` and the stack do).
Downgrades, `-x partitions=N` and offline scripts are the `alembic` command line's (alembic.ini)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config

from pgvote.paths import ALEMBIC_INI


def upgrade(database_url: str) -> None:
    """`alembic upgrade head` on database_url (migrations/env.py takes it from the config's attributes)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
