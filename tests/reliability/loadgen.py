"""Load generator for the reliability suite: many concurrent ``cast_vote`` calls through PgBouncer.

Each client is one :class:`TracingEmulator` - the project's ``AsyncPostgrestEmulator`` (the statements
PostgREST sends, hook included, on a ``psycopg.AsyncConnection``) that also remembers where a lost
connection failed. asyncio, so hundreds of connections cost no threads. Every call is recorded with its
vote and one outcome:

- ``ack``: answered 200 (``recorded`` / ``changed`` / ``unchanged``);
- ``rejected``: answered with an HTTP error status and code (what PostgREST would answer);
- ``lost``: no answer - the connection failed (``lost_in`` = ``statement``: COMMIT was not sent, the
  transaction cannot have committed; ``commit``: COMMIT was sent, outcome unknown), the client could not
  reconnect (``connect``) or the call timed out (``timeout``). Lost calls are resolved afterwards by an
  identical re-cast (:func:`recast`), which the API guarantees answers ``recorded`` or ``unchanged``.

A fault is an ``async`` callable run next to the load (see :func:`run_load`); it can wait on the live
counters (``in_flight``, ``acked``) to strike at a chosen moment.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.string import TextLoader

from pgvote.postgrest_emulation import (
    AsyncPostgrestEmulator,
    PostgrestEmulator,
    RequestPlan,
    _should_retry,
)
from pgvote.stack import PROJECT_DIR


def configured_pre_request(conn: psycopg.Connection) -> str | None:
    """PostgREST's db-pre-request hook as api/postgrest.conf configures it, when the database has it.

    The suite calls the API exactly as the configured PostgREST would, hook included.
    """
    conf = (PROJECT_DIR / "api" / "postgrest.conf").read_text()
    match = re.search(r'^\s*db-pre-request\s*=\s*"([^"]+)"', conf, flags=re.MULTILINE)
    if not match:
        return None
    schema, _, name = match[1].rpartition(".")
    exists = conn.execute(  # a catalog read: the authenticator itself may not use schema hooks
        """select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                          where n.nspname = %s and p.proname = %s and p.pronargs = 0)""",
        (schema or "public", name)).fetchone()
    return match[1] if exists and exists[0] else None


def emulator(url: str) -> PostgrestEmulator:
    """A blocking emulator on url (authenticator), configured like the project's PostgREST."""
    conn = psycopg.connect(url, autocommit=True)
    return PostgrestEmulator(conn, pre_request=configured_pre_request(conn))


@dataclass(frozen=True)
class Vote:
    """One intended ballot: who votes what on which poll (a re-cast sends the same Vote again)."""

    poll_id: str
    option_ids: tuple[str, ...]
    fingerprint: str | None = None  # anonymous voter
    sub: str | None = None  # signed-in voter (JWT role authenticated)
    ballot_id: str | None = None  # retry key on multiple-vote polls

    @property
    def claims(self) -> dict[str, Any] | None:
        return None if self.sub is None else {"role": "authenticated", "sub": self.sub}

    @property
    def voter(self) -> str:
        return f"sub:{self.sub}" if self.sub is not None else f"fp:{self.fingerprint}"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"poll_id": self.poll_id, "option_ids": list(self.option_ids)}
        if self.fingerprint is not None:
            body["voter_fingerprint"] = self.fingerprint
        if self.ballot_id is not None:
            body["ballot_id"] = self.ballot_id
        return body


@dataclass
class CallRecord:
    vote: Vote
    outcome: str  # "ack" | "rejected" | "lost"
    started: float  # time.monotonic()
    finished: float
    status: int | None = None  # HTTP status for ack / rejected
    code: str | None = None  # error code (rejected) or exception kind (lost)
    answer: str | None = None  # "recorded" | "changed" | "unchanged" (ack)
    lost_in: str | None = None  # "connect" | "statement" | "commit" | "timeout" (lost)
    message: str | None = None
    option_ids: tuple[str, ...] | None = None  # the ballot the answer reports (ack)

    @property
    def latency(self) -> float:
        return self.finished - self.started


def is_connection_failure(exc: psycopg.Error, conn: psycopg.AsyncConnection) -> bool:
    """Infrastructure failures: the call got no answer (connection closed, PgBouncer or server gone)."""
    state = exc.sqlstate or ""
    return (conn.closed or conn.broken or state == "" or state.startswith(("08", "57P", "53"))
            or isinstance(exc, psycopg.OperationalError) and not state.startswith(("P", "4", "2")))


class TracingEmulator(AsyncPostgrestEmulator):
    """AsyncPostgrestEmulator that remembers how a call ended when its connection failed: before COMMIT
    was sent (the transaction cannot have committed) or during COMMIT (unknown outcome)."""

    failure: tuple[str, str, str] | None = None  # (phase, exception kind, message)

    async def _transaction(self, plan: RequestPlan) -> tuple[Any, ...]:
        self.failure = None
        for attempt in itertools.count():
            phase = "statement"
            try:
                async with self.conn.cursor() as cur:
                    cur.adapters.register_loader("json", TextLoader)
                    for query, params in plan.statements():
                        await cur.execute(query, params, prepare=False)
                    row = await cur.fetchone()
                    phase = "commit"
                    await cur.execute("COMMIT", prepare=False)
                assert row is not None
                return row
            except psycopg.Error as exc:
                if is_connection_failure(exc, self.conn):
                    kind = type(exc).__name__ + (f"[{exc.sqlstate}]" if exc.sqlstate else "")
                    lines = str(exc).strip().splitlines()
                    self.failure = (phase, kind, lines[0] if lines else "")
                    raise
                await self._abort()
                if _should_retry(exc, attempt):
                    continue
                raise
        raise AssertionError("unreachable")


@dataclass
class LoadResult:
    records: list[CallRecord]
    started: float
    finished: float
    marks: dict[str, float] = field(default_factory=dict)  # named moments set by the fault (monotonic)
    notes: dict[str, Any] = field(default_factory=dict)  # figures the fault recorded (in flight at kill, ...)

    def by_outcome(self) -> Counter[str]:
        return Counter(r.outcome for r in self.records)

    def acked(self) -> list[CallRecord]:
        return [r for r in self.records if r.outcome == "ack"]

    def lost(self) -> list[CallRecord]:
        return [r for r in self.records if r.outcome == "lost"]

    def rejected(self) -> list[CallRecord]:
        return [r for r in self.records if r.outcome == "rejected"]

    def errors_by_kind(self) -> dict[str, int]:
        """Every non-200 outcome by kind: 'lost/<phase>/<exception>' or 'rejected/<status>/<code>'."""
        kinds: Counter[str] = Counter()
        for r in self.records:
            if r.outcome == "lost":
                kinds[f"lost/{r.lost_in}/{r.code}"] += 1
            elif r.outcome == "rejected":
                kinds[f"rejected/{r.status}/{r.code}"] += 1
        return dict(kinds)

    def error_examples(self) -> dict[str, str]:
        """One message per error kind (what the client saw)."""
        examples: dict[str, str] = {}
        for r in self.records:
            if r.outcome != "ack":
                key = f"{r.outcome}/{r.lost_in}/{r.code}" if r.outcome == "lost" else f"rejected/{r.status}/{r.code}"
                examples.setdefault(key, (r.message or "")[:160])
        return examples

    @property
    def throughput(self) -> float:
        return len(self.acked()) / max(self.finished - self.started, 1e-9)

    def latency_ms(self, since: float | None = None, until: float | None = None) -> dict[str, float]:
        """p50/p99/max latency (ms) of acknowledged calls that finished in [since, until)."""
        lat = sorted(r.latency * 1000 for r in self.acked()
                     if (since is None or r.finished >= since) and (until is None or r.finished < until))
        if not lat:
            return {"n": 0}
        return {"n": len(lat), "p50": round(statistics.median(lat), 1),
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1), "max": round(lat[-1], 1)}

    def first_ack_after(self, mark: str) -> float | None:
        """From the mark to the first acknowledgment of any call (None: none after it)."""
        t0 = self.marks[mark]
        after = [r.finished for r in self.acked() if r.finished >= t0]
        return round(min(after) - t0, 3) if after else None

    def recovery_seconds(self, mark: str) -> float | None:
        """From the mark to the first acknowledgment of a call started after it (None: never recovered)."""
        t0 = self.marks[mark]
        after = [r.finished for r in self.acked() if r.started >= t0]
        return round(min(after) - t0, 3) if after else None

    def longest_ack_gap(self) -> float:
        """Longest interval with no acknowledgment at all (s), during the load."""
        times = sorted(r.finished for r in self.acked())
        edges = [self.started, *times, self.finished]
        return round(max(b - a for a, b in itertools.pairwise(edges)), 3)


class Load:
    """Live state of a running load, shared by the workers and the fault."""

    def __init__(self, clients: Clients, votes: Iterator[Vote], call_timeout: float, deadline: float) -> None:
        self.clients, self.votes = clients, votes
        self.call_timeout, self.deadline = call_timeout, deadline
        self.in_flight = 0
        self.acked = 0
        self.lost = 0
        self.records: list[CallRecord] = []
        self.marks: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.done = asyncio.Event()

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic()
        return self.marks[name]

    async def until(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.002) -> bool:
        """Wait until predicate() holds (True) or timeout passes / the load ends (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.done.is_set():
            if predicate():
                return True
            await asyncio.sleep(poll)
        return predicate()

    async def _call(self, client: TracingEmulator | None, vote: Vote) -> CallRecord:
        started = time.monotonic()
        self.in_flight += 1
        try:
            if client is None:
                self.lost += 1
                return CallRecord(vote, "lost", started, time.monotonic(), code="NoConnection", lost_in="connect",
                                  message="could not (re)connect to PgBouncer")
            resp = await asyncio.wait_for(client.rpc("cast_vote", vote.body(), claims=vote.claims),
                                          self.call_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            self.lost += 1
            return CallRecord(vote, "lost", started, time.monotonic(), code="Timeout", lost_in="timeout")
        finally:
            self.in_flight -= 1
        finished = time.monotonic()
        if client.failure is not None:
            phase, kind, message = client.failure
            self.lost += 1
            return CallRecord(vote, "lost", started, finished, code=kind, lost_in=phase, message=message)
        if resp.status == 200:
            self.acked += 1
            return CallRecord(vote, "ack", started, finished, status=200, answer=resp.body["status"],
                              option_ids=tuple(resp.body["option_ids"]))
        body = resp.body if isinstance(resp.body, dict) else {}
        return CallRecord(vote, "rejected", started, finished, status=resp.status, code=body.get("code"),
                          message=body.get("message"))

    async def worker(self, client: TracingEmulator | None) -> None:
        backoff = 0.05
        try:
            while time.monotonic() < self.deadline:
                vote = next(self.votes, None)
                if vote is None:
                    return
                if client is None or client.conn.closed or client.conn.broken:
                    if client is not None:
                        await _close_quietly(client)
                    client = await self.clients.open_one()
                record = await self._call(client, vote)
                self.records.append(record)
                if record.outcome == "lost":  # the service is down or restarting: reconnect, back off (max 1 s)
                    if client is not None:
                        await _close_quietly(client)
                        client = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                else:
                    backoff = 0.05
        finally:
            if client is not None:
                await _close_quietly(client)


class Clients:
    """Opens API clients (authenticator connections through PgBouncer) sharing one schema cache."""

    def __init__(self, url: str, template: PostgrestEmulator) -> None:
        self.url = url
        self.pre_request = template.pre_request
        self.cache: dict[tuple[str, str], Any] = {}
        template.routines("cast_vote")  # read the schema cache once, share it
        self.cache.update(template._cache)

    async def connect(self, timeout: float = 10) -> TracingEmulator:
        conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
            self.url, autocommit=True, prepare_threshold=None, connect_timeout=max(1, int(timeout))), timeout + 5)
        return TracingEmulator(conn, pre_request=self.pre_request, schema_cache=self.cache)

    async def open_one(self) -> TracingEmulator | None:
        try:
            return await self.connect()
        except (psycopg.Error, OSError, TimeoutError, asyncio.TimeoutError):
            return None

    async def open(self, n: int) -> list[TracingEmulator]:
        sem = asyncio.Semaphore(50)

        async def one() -> TracingEmulator:
            async with sem:
                return await self.connect(20)

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        clients = [c for c in results if isinstance(c, TracingEmulator)]
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await asyncio.gather(*(_close_quietly(c) for c in clients))
            raise RuntimeError(f"{len(errors)} of {n} connections failed to open: {errors[0]!r}")
        return clients


async def _close_quietly(client: TracingEmulator) -> None:
    try:
        await asyncio.wait_for(client.conn.close(), 5)
    except (psycopg.Error, OSError, TimeoutError, asyncio.TimeoutError):
        pass


Fault = Callable[[Load], Awaitable[None]]


async def _run(clients: Clients, votes: Iterable[Vote], connections: int, fault: Fault | None, timeout: float,
               call_timeout: float) -> LoadResult:
    opened = await clients.open(connections)
    deadline = time.monotonic() + timeout
    load = Load(clients, iter(votes), call_timeout, deadline)
    started = time.monotonic()
    workers = [asyncio.create_task(load.worker(c)) for c in opened]
    fault_task = asyncio.create_task(fault(load)) if fault is not None else None
    try:
        await asyncio.wait_for(asyncio.gather(*workers), timeout + call_timeout + 30)
    finally:
        load.done.set()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        finished = time.monotonic()
        if fault_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(fault_task), 120)
            finally:
                fault_task.cancel()
    assert fault_task is None or fault_task.done()
    if fault_task is not None and fault_task.exception() is not None:
        raise fault_task.exception()  # type: ignore[misc]
    return LoadResult(load.records, started, finished, load.marks, load.notes)


def run_load(url: str, template: PostgrestEmulator, votes: Iterable[Vote], *, connections: int,
             fault: Fault | None = None, timeout: float = 300, call_timeout: float = 60) -> LoadResult:
    """Cast every vote once through ``connections`` concurrent clients while ``fault`` runs; bounded in time.

    ``template`` is a (blocking) emulator on the same database: its schema cache and db-pre-request
    setting configure the clients. Stops taking new votes after ``timeout`` seconds; every call is
    bounded by ``call_timeout``; the fault must end within 120 s of the load.
    """
    return asyncio.run(_run(Clients(url, template), votes, connections, fault, timeout, call_timeout))


def recast(url: str, template: PostgrestEmulator, votes: Sequence[Vote], *, connections: int = 20,
           attempts: int = 5, timeout: float = 120) -> dict[Vote, CallRecord]:
    """Re-cast each vote identically until it gets an answer (bounded); returns the final record per vote."""
    final: dict[Vote, CallRecord] = {}
    pending = list(dict.fromkeys(votes))
    for _ in range(attempts):
        if not pending:
            break
        result = run_load(url, template, pending, connections=max(1, min(connections, len(pending))),
                          timeout=timeout)
        for r in result.records:
            final[r.vote] = r
        pending = [v for v in pending if v not in final or final[v].outcome == "lost"]
        if pending:
            time.sleep(1)
    return final
