"""Run alembic migrations programmatically (what `pgvote migrate` and the stack do)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config

from pgvote.paths import ALEMBIC_INI


def alembic_config(database_url: str, partitions: int | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    if partitions is not None:
        config.cmd_opts = type("Opts", (), {"x": [f"partitions={partitions}"]})()
    return config


def upgrade(database_url: str, revision: str = "head", partitions: int | None = None) -> None:
    command.upgrade(alembic_config(database_url, partitions), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> None:
    command.current(alembic_config(database_url))
