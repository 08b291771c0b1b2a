"""One client connection of the SQL-level load generator: PostgREST's exact statements through PgBouncer.

The HTTP load is k6's (``pgvote/loadtest/k6/``); this caller is the database path, which measures
what PostgreSQL and PgBouncer do without the HTTP tier.

A caller answers every call with an :class:`Answer`: the HTTP status PostgREST would give (the
status an API error carries, 503 for a lost connection) and whether the connection is still
usable. Retryable answers (:func:`retryable`) are re-cast identically by the worker: ballots on a
single-ballot poll are idempotent, so a retry never creates a duplicate.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg


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


#: The parameters PostgREST passes for each function the load calls (the keys of its JSON body, in
#: the function's declared order, with their types): json_to_record reads the body with them.
PARAMETERS: dict[str, tuple[tuple[str, str], ...]] = {
    "cast_vote": (("poll_id", "uuid"), ("option_ids", "uuid[]"), ("voter_fingerprint", "text")),
    "cast_votes": (("ballots", "jsonb"),),
}


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

    @property
    def role(self) -> str:
        return str((self.claims or {}).get("role", self.anon_role))

    def statements(self) -> tuple[str, str, str | None, str]:
        """BEGIN, the transaction-local settings, the hook, the main query: the text PostgREST 12 sends for
        ``POST /rpc/<fn>`` of a volatile function (unnamed statements; values bound as parameters)."""
        params = PARAMETERS[self.fn]
        cols = ", ".join(f'"{name}"' for name, _ in params)
        typed = ", ".join(f'"{name}" {kind}' for name, kind in params)
        named = ", ".join(f'"{name}" := pgrst_body."{name}"' for name, _ in params)
        locals_ = ("select set_config('search_path', %s, true), set_config('role', %s, true), "
                   "set_config('request.jwt.claims', %s, true), set_config('request.method', 'POST', true), "
                   "set_config('request.path', %s, true), set_config('request.headers', %s, true), "
                   "set_config('request.cookies', '{}', true)")
        hook = None
        if self.pre_request:
            schema, _, name = self.pre_request.rpartition(".")
            hook = f'select "{schema}"."{name}"()'
        main = (f"with pgrst_source as (select pgrst_call.pgrst_scalar "
                f"from (select %s::json as json_data) as pgrst_payload, "
                f"lateral (select {cols} from json_to_record(pgrst_payload.json_data) as _({typed}) limit 1) "
                f"as pgrst_body, "
                f'lateral (select "{self.schema}"."{self.fn}"({named}) as pgrst_scalar) as pgrst_call) '
                f"select null::bigint as total_result_set, 1 as page_total, "
                f"coalesce(json_agg(_postgrest_t.pgrst_scalar) -> 0, 'null') as body, "
                f"nullif(current_setting('response.headers', true), '') as response_headers, "
                f"nullif(current_setting('response.status', true), '') as response_status, "
                f"'' as response_inserted "
                f'from (select "{self.fn}".* from "pgrst_source" as "{self.fn}") as _postgrest_t')
        return "begin isolation level read committed read write", locals_, hook, main

    def local_values(self) -> list[Any]:
        claims = {**(self.claims or {}), "role": self.role}
        return [f'"{self.schema}", "public"', self.role, json.dumps(claims), f"/rpc/{self.fn}",
                json.dumps({"content-type": "application/json"})]


def error_answer(exc: psycopg.Error) -> Answer:
    """PostgREST's answer to a failed call: a ``RAISE SQLSTATE 'PGRST'`` error carries its own code (message
    JSON) and status (detail JSON); a lost connection or class 08 is 503 PGRST001; bad data (class 22) 400,
    a unique or foreign-key violation 409, another integrity error 400; anything else 500."""
    sqlstate = exc.sqlstate
    if sqlstate is None or sqlstate.startswith("08"):
        return Answer(503, {"code": "PGRST001", "message": "Database client error. Retrying the connection.",
                            "details": str(exc)}, False)
    if sqlstate == "PGRST":
        try:
            message = json.loads(exc.diag.message_primary or "{}")
            status = int(json.loads(exc.diag.message_detail or "{}")["status"])
        except (ValueError, KeyError, TypeError):
            return Answer(500, {"code": "PGRST121", "message": str(exc)}, True)
        return Answer(status, message, True)
    status = 409 if sqlstate in ("23503", "23505") else 400 if sqlstate[:2] in ("22", "23") else 500
    return Answer(status, {"code": sqlstate, "message": exc.diag.message_primary or str(exc)}, True)


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
    """PostgREST's statement sequence for one function on one ``AsyncConnection``: BEGIN, the
    transaction-local settings, the pre-request hook, the main query, COMMIT (5 round trips)."""

    def __init__(self, target: DbTarget) -> None:
        self.target = target
        self.begin, self.locals, self.hook, self.main = target.statements()
        self.local_values = target.local_values()
        self.conn: QuietAsyncConnection | None = None

    async def open(self) -> None:
        t = self.target
        self.conn = await asyncio.wait_for(
            QuietAsyncConnection.connect(t.url, autocommit=True, prepare_threshold=None,
                                         connect_timeout=max(1, int(t.connect_timeout))),
            t.connect_timeout + 5)

    async def call(self, body: dict[str, Any], timeout: float) -> Answer:
        if self.conn is None or self.conn.closed:
            try:
                await self.open()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                return Answer(503, {"code": "PGRST001", "message": f"connect failed: {exc}"}, False)
        assert self.conn is not None
        conn = self.conn
        try:
            async with asyncio.timeout(timeout):
                answer = await self._transaction(conn, body)
        except TimeoutError:  # cancelled mid-transaction: the connection's state is unknown
            await self.close()
            return Answer(0, None, False)
        if not answer.usable or conn.closed or conn.broken:
            await self.close()
            return Answer(answer.status, answer.body, False)
        return answer

    async def _transaction(self, conn: QuietAsyncConnection, body: dict[str, Any]) -> Answer:
        try:
            await conn.execute(self.begin)
            await conn.execute(self.locals, self.local_values)
            if self.hook:
                await conn.execute(self.hook)
            cur = await conn.execute(self.main, [json.dumps(body)])
            row = await cur.fetchone()
            await conn.execute("commit")
        except psycopg.Error as exc:
            answer = error_answer(exc)
            if not (conn.closed or conn.broken):
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("rollback")
            return answer
        assert row is not None
        status = int(row[4]) if row[4] else 200
        return Answer(status, row[2], True)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
