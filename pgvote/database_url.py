"""The target database: DATABASE_URL, a libpq URL, for every tool and migration."""
from __future__ import annotations

import os


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

