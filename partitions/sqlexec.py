"""Run SQL or, with --dry-run, print it instead: one place decides, every operation uses it."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("pgvote.partitions")


class Refused(Exception):
    """An unsafe or impossible request: the message is one line a DBA can act on."""


def one(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a query always returns (count, current_user, a setting...)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("a query that always returns a row returned none")
    return row[0]


def render(conn: psycopg.Connection, statement: sql.Composable | str) -> str:
    return statement if isinstance(statement, str) else statement.as_string(conn)


class Executor:
    """Executes statements on `conn`, or prints them (`dry_run`) through `echo`."""

    def __init__(self, conn: psycopg.Connection, dry_run: bool = False,
                 echo: Callable[[str], None] = print) -> None:
        if not dry_run and not conn.autocommit:
            raise Refused("the partition manager needs an autocommit connection (it runs its own transactions); "
                          "in an alembic migration call it inside `op.get_context().autocommit_block()`")
        self.conn = conn
        self.dry_run = dry_run
        self.echo = echo

    def __call__(self, statement: sql.Composable | str,
                 params: Sequence[Any] | None = None) -> psycopg.Cursor[tuple[Any, ...]] | None:
        text = render(self.conn, statement)
        if self.dry_run:
            self.echo(text.strip() + ";")
            return None
        log.debug("sql: %s", " ".join(text.split()))
        return self.conn.execute(text, params)

    def note(self, text: str) -> None:
        """A comment in the dry-run script (nothing when executing)."""
        if self.dry_run:
            self.echo(f"-- {text}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.dry_run:
            self.echo("begin;")
            yield
            self.echo("commit;")
        else:
            with self.conn.transaction():
                yield
