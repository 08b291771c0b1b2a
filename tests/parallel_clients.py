"""Real parallel HTTP clients for the concurrency tests, and what such tests need around them.

Clients are threads released together at a barrier; each call is its own HTTP connection through nginx
from its own loopback address (pgvote.http.ApiClient), so the per-address limits of nginx and of the
database see 200 clients as 200 callers. Results are read past nginx's results cache, and a test that
needs more calls from ONE signed-in identity than the database's per-caller limit allows raises that
limit for its duration, saying so.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from pgvote.http import ApiClient, Response

from helpers import Poll

T = TypeVar("T")

# nginx caches GET /rpc/poll_results as poll_results' Cache-Control allows (max-age=1). nginx compares
# expiry in whole seconds, so an entry may be served up to 2 s after it was stored.
RESULTS_CACHE_SECONDS = 2.1
CACHED = {"HIT", "STALE", "UPDATING", "REVALIDATED"}  # X-Cache-Status of an answer nginx served itself


def in_parallel(n: int, work: Callable[[int], T]) -> list[T]:
    """work(0), ..., work(n - 1) on n threads at once: each waits at a barrier, then all start together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=60)
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def cast(api: ApiClient, poll: Poll, options: list[str], claims: dict[str, Any] | None = None,
         **body: Any) -> Response:
    return api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": options, **body}, claims=claims)


def fresh_results(api: ApiClient, poll_id: str) -> Response:
    """GET poll_results once any copy nginx cached has expired, and check the answer came from the database."""
    time.sleep(RESULTS_CACHE_SECONDS)
    r = api.rpc("poll_results", {"poll_id": poll_id}, method="GET")
    assert r.status == 200, r.body
    assert r.headers.get("X-Cache-Status") not in CACHED, r.headers
    return r


@contextmanager
def raised_request_limit(admin_url: str, reason: str, *, burst: int = 1_000,
                         requests_per_minute: float = 60_000) -> Iterator[None]:
    """Raise the database's per-caller limit (rate_limit.limits 'request') for the block, then restore it.

    The row is one limit for every caller, so while raised it applies to the whole stack: keep the block
    to the calls that need it. Tests of a session run one at a time, and the saved row is written back
    even when the block fails."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        saved = conn.execute("select requests_per_minute, burst, enabled from rate_limit.limits "
                             "where name = 'request'").fetchone()
        assert saved is not None, "rate_limit.limits has no 'request' row"
        print(f"\nrate limit raised: 'request' {saved[0]:g}/min burst {saved[1]} -> "
              f"{requests_per_minute:g}/min burst {burst} while {reason}")
        conn.execute("update rate_limit.limits set requests_per_minute = %s, burst = %s, enabled = true, "
                     "updated_at = now() where name = 'request'", (requests_per_minute, burst))
        try:
            yield
        finally:
            conn.execute("update rate_limit.limits set requests_per_minute = %s, burst = %s, enabled = %s, "
                         "updated_at = now() where name = 'request'", saved)
            print(f"rate limit restored: 'request' {saved[0]:g}/min burst {saved[1]}")
