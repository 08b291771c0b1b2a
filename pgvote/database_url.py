"""The target database: DATABASE_URL, a libpq URL, for every tool and migration; the same URL naming
another database."""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


class MissingDatabaseUrl(RuntimeError):
    pass


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise MissingDatabaseUrl(
            "DATABASE_URL is not set: export a libpq URL such as "
            "postgresql://postgres@127.0.0.1:55432/pgvote (`pgvote up` prints the local stack's)"
        )
    return url



def with_database(url: str, database: str, user: str | None = None) -> str:
    """The same libpq URL naming another database (and another user, if given)."""
    parts = urlsplit(url)
    netloc = f"{user}@{parts.netloc.split('@', 1)[-1]}" if user else parts.netloc
    return urlunsplit(parts._replace(path="/" + database, netloc=netloc))
