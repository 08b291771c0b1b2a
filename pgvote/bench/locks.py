"""Lock observations: lock waits sampled from pg_locks during a run, and the locks one
cast_vote call holds at its end."""
from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg


class LockWaitSampler:
    """Samples ungranted locks of the current database every few milliseconds."""

    def __init__(self, url: str, interval: float = 0.002) -> None:
        self.url, self.interval = url, interval
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                for locktype, relation, query in conn.execute(
                    """select l.locktype, coalesce(l.relation::regclass::text, ''), a.query
                       from pg_locks l join pg_stat_activity a on a.pid = l.pid
                       where not l.granted and a.datname = current_database()"""
                ).fetchall():
                    self.seen[(locktype, relation, query[:40])] += 1
                self.samples += 1
                time.sleep(self.interval)

    def waits_by_type(self) -> dict[str, int]:
        by_type: Counter[str] = Counter()
        for (locktype, relation, _), n in self.seen.items():
            by_type[f"{locktype} {relation}".strip()] += n
        return dict(by_type)

    def __enter__(self) -> LockWaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def locks_held_by_one_call(conn: psycopg.Connection, sql: str, params: tuple[object, ...]) -> list[tuple[str, str, str]]:
    """Run one call in a transaction that is rolled back, and list the locks it held."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql, params)
        rows = conn.execute(
            """select locktype, coalesce(relation::regclass::text, ''), mode from pg_locks
               where pid = pg_backend_pid() and locktype <> 'virtualxid'
                 and coalesce(relation::regclass::text, '') <> 'pg_locks'
               order by 1, 2, 3"""
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]
