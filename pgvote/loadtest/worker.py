"""A client process of the load generator: many concurrent client connections on one asyncio loop.

The parent starts several of these (one Python process drives roughly one core). Each opens all
of its connections first, reports ready, and waits for the parent's "go" so that every client of
every process starts at the same moment (the burst). It then casts its share of the voters,
re-casting the identical ballot after a retryable answer (503/504, lost connection, client
timeout), and finally sends one record per voter back to the parent.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgvote.loadtest.ballots import BallotSpec
from pgvote.loadtest.callers import Answer, DbCaller, DbTarget, retryable

#: One voter's fate: (fingerprint, outcome, status, answer-or-code, t_start, t_end, attempts, first_ok).
#: outcome: "ack" (200: recorded/changed/unchanged), "rejected" (a final 4xx/5xx), "gave_up" (retries exhausted).
#: Times are time.monotonic(), one clock for every process of the machine.
Record = tuple[str, str, int, str, float, float, int, bool]

PROGRESS_PERIOD = 0.25
CONNECT_PARALLELISM = 100  # connects in flight per process: stays far below the listen backlog


@dataclass(frozen=True)
class WorkerSpec:
    wid: int
    ballots: BallotSpec
    clients: int
    target: DbTarget  # PostgREST's statements, through PgBouncer
    voters: Sequence[int] = ()  # the voter numbers this process casts
    call_timeout: float = 30.0
    max_attempts: int = 50
    run_timeout: float = 600.0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (measured here: ~12-15% less client CPU per call), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE := hard limit (one fd per client connection); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_main(spec: WorkerSpec, ready_q: Any, progress_q: Any, result_q: Any, go: Any, t0: Any) -> None:
    """Process entry point (multiprocessing, fork)."""
    raise_nofile_limit()
    progress_q.cancel_join_thread()  # progress messages may be dropped at exit; results may not
    try:
        run_event_loop(_Worker(spec, ready_q, progress_q, result_q, go, t0).run())
    except BaseException as exc:  # the parent must never wait forever for this process
        result_q.put((spec.wid, None, {"worker_crashed": f"{type(exc).__name__}: {exc}"}))
        raise


class _Worker:
    def __init__(self, spec: WorkerSpec, ready_q: Any, progress_q: Any, result_q: Any, go: Any, t0: Any) -> None:
        self.spec = spec
        self.ready_q, self.progress_q, self.result_q, self.go, self.t0_value = ready_q, progress_q, result_q, go, t0
        self.records: list[Record] = []
        self.errors: Counter[str] = Counter()  # every non-200 attempt, by code
        self.acked = 0
        self.in_flight = 0
        self.t0 = 0.0
        self.deadline = 0.0
        self.rng = random.Random(spec.wid)

    async def run(self) -> None:
        spec = self.spec
        callers = [DbCaller(spec.target) for _ in range(spec.clients)]
        opened, failure = await self._open_all(callers)
        self.ready_q.put((spec.wid, opened, failure))
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait)
        self.t0 = self.t0_value.value
        self.deadline = self.t0 + spec.run_timeout
        cpu_start = time.process_time()
        reporter = asyncio.create_task(self._report_progress())
        try:
            voters = iter(spec.voters)
            await asyncio.gather(*(self._burst_client(c, voters) for c in callers))
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        self._send_progress()
        self.errors["_client_cpu_ms"] = round((time.process_time() - cpu_start) * 1000)  # not an error: CPU used
        self.result_q.put((spec.wid, self.records, dict(self.errors)))
        sem = asyncio.Semaphore(CONNECT_PARALLELISM)

        async def close(c: DbCaller) -> None:
            async with sem:
                await c.close()

        await asyncio.gather(*(close(c) for c in callers), return_exceptions=True)

    async def _open_all(self, callers: list[DbCaller]) -> tuple[int, str | None]:
        sem = asyncio.Semaphore(CONNECT_PARALLELISM)
        failures: list[BaseException] = []

        async def one(c: DbCaller) -> None:
            async with sem:
                try:
                    await c.open()
                except (OSError, TimeoutError, psycopg.Error) as exc:  # the client reconnects on its first call
                    failures.append(exc)

        await asyncio.gather(*(one(c) for c in callers))
        return len(callers) - len(failures), (f"{type(failures[0]).__name__}: {failures[0]}" if failures else None)

    # ---- the burst ---------------------------------------------------------------------------------

    async def _burst_client(self, caller: DbCaller, voters: Iterator[int]) -> None:
        for n in voters:  # one iterator shared by the clients of this process
            if time.monotonic() > self.deadline:
                return
            await self._cast(caller, self.spec.ballots.fingerprint(n))

    # ---- one voter --------------------------------------------------------------------------------

    async def _cast(self, caller: DbCaller, fingerprint: str) -> None:
        """Cast until answered: identical re-casts after retryable answers (idempotent on this poll)."""
        spec = self.spec
        body = spec.ballots.body(fingerprint)
        started = time.monotonic()
        attempts = 0
        self.in_flight += 1
        try:
            while True:
                attempts += 1
                answer: Answer = await caller.call(body, spec.call_timeout)
                if answer.status == 200:
                    self.acked += 1
                    status = answer.body.get("status", "") if isinstance(answer.body, dict) else ""
                    self.records.append((fingerprint, "ack", 200, str(status), started, time.monotonic(),
                                         attempts, attempts == 1))
                    return
                self.errors[f"{answer.status} {answer.code}"] += 1
                if not retryable(answer):
                    self.records.append((fingerprint, "rejected", answer.status, answer.code, started,
                                         time.monotonic(), attempts, False))
                    return
                if attempts >= spec.max_attempts or time.monotonic() > self.deadline:
                    self.records.append((fingerprint, "gave_up", answer.status, answer.code, started,
                                         time.monotonic(), attempts, False))
                    return
                await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempts - 1)) * self.rng.uniform(0.5, 1.0))
        finally:
            self.in_flight -= 1

    # ---- progress -------------------------------------------------------------------------------

    def _send_progress(self) -> None:
        self.progress_q.put((self.spec.wid, len(self.records), self.acked, self.in_flight, dict(self.errors)))

    async def _report_progress(self) -> None:
        while True:
            self._send_progress()
            await asyncio.sleep(PROGRESS_PERIOD)
