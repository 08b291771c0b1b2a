"""One client connection of the SQL-level load generator: PostgREST's exact statements through PgBouncer.

The HTTP load is k6's (``pgvote/loadtest/k6/``); this caller is the database path, which measures
what PostgreSQL and PgBouncer do without the HTTP tier.

A caller answers every call with an :class:`Answer`: the HTTP status PostgREST would give (the
emulator maps SQL errors and lost connections exactly as PostgREST does) and whether the
connection is still usable. Retryable answers (:func:`retryable`) are re-cast identically by the
worker: ballots on a single-ballot poll are idempotent, so a retry never creates a duplicate.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvote.postgrest_emulation import AsyncPostgrestEmulator, Routine

#: 503 (PGRST001: connection lost, or PgBouncer's query_wait_timeout, SQLSTATE class 08) and 504
#: (PGRST003: PostgREST's own pool wait) are infrastructure overload: retry the identical call.
RETRYABLE_STATUSES = frozenset({503, 504})


@dataclass(frozen=True)
class Answer:
    status: int  # HTTP status; 0 = no answer (client timeout)
    body: Any
    usable: bool  # False: the connection must be replaced before the next call

    @property
    def code(self) -> str:
        if self.status == 0:
            return "client_timeout"
        if isinstance(self.body, dict) and isinstance(self.body.get("code"), str):
            return str(self.body["code"])
        return str(self.status)


def retryable(answer: Answer) -> bool:
    return answer.status == 0 or answer.status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class DbTarget:
    """Where and how a database caller calls: ``fn`` in ``schema`` as ``claims`` (None = anonymous)."""

    url: str
    fn: str = "cast_vote"
    schema: str = "api"
    anon_role: str = "anon"
    claims: dict[str, Any] | None = None
    pre_request: str | None = None  # PostgREST's db-pre-request hook, called in every request's transaction
    connect_timeout: float = 30.0


class QuietAsyncConnection(psycopg.AsyncConnection[Any]):
    """An ``AsyncConnection`` that waits for the server without waking up every 0.1 s.

    psycopg wakes every waiting connection each ``interval`` (0.1 s, there to notice Ctrl-C in the
    blocking API; asyncio cancellation needs no polling) and re-registers its socket with the loop.
    With a thousand connections per process queued in PgBouncer for seconds, those wakeups cost
    more client CPU than the calls themselves (measured: ~22 loop registrations per vote instead of
    ~5), and that CPU is taken from the 2 cores the servers need.
    """

    WAIT_INTERVAL = 60.0

    async def wait(self, gen: Any, interval: float = WAIT_INTERVAL, timeout: float | None = None) -> Any:
        return await super().wait(gen, interval=max(interval, self.WAIT_INTERVAL), timeout=timeout)


class DbCaller:
    """PostgREST's statement sequence on one ``AsyncConnection`` (:class:`AsyncPostgrestEmulator`)."""

    def __init__(self, target: DbTarget, schema_cache: dict[tuple[str, str], tuple[Routine, ...]]) -> None:
        self.target = target
        self.schema_cache = schema_cache
        self.emulator: AsyncPostgrestEmulator | None = None

    async def open(self) -> None:
        t = self.target
        conn = await asyncio.wait_for(
            QuietAsyncConnection.connect(t.url, autocommit=True, prepare_threshold=None,
                                         connect_timeout=max(1, int(t.connect_timeout))),
            t.connect_timeout + 5)
        self.emulator = AsyncPostgrestEmulator(conn, schema=t.schema, anon_role=t.anon_role,
                                               pre_request=t.pre_request, schema_cache=self.schema_cache)

    async def warm(self) -> None:
        """Read the function's definition into the shared schema cache (PostgREST does it at startup)."""
        if self.emulator is not None:
            await self.emulator.routines(self.target.fn)

    async def call(self, body: dict[str, Any], timeout: float) -> Answer:
        if self.emulator is None or self.emulator.conn.closed:
            try:
                await self.open()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                return Answer(503, {"code": "PGRST001", "message": f"connect failed: {exc}"}, False)
        assert self.emulator is not None
        try:
            async with asyncio.timeout(timeout):
                r = await self.emulator.rpc(self.target.fn, body, claims=self.target.claims)
        except TimeoutError:  # cancelled mid-transaction: the connection's state is unknown
            await self.close()
            return Answer(0, None, False)
        conn = self.emulator.conn
        usable = not (conn.closed or conn.broken)
        if not usable:
            await self.close()
        return Answer(r.status, r.body, usable)

    async def close(self) -> None:
        emulator, self.emulator = self.emulator, None
        if emulator is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(emulator.conn.close(), 5)
