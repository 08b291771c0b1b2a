"""The bulk path: ballots in batches through ``api.cast_votes(ballots jsonb)`` as JWT role ``ingest``.

A trusted edge tier batches ballots; each call carries up to 1,000 and answers one outcome per
ballot, in input order. A batch whose call fails for infrastructure reasons (503/504, lost
connection, client timeout) is re-sent identically: ballots already stored answer ``unchanged``,
so the retry adds nothing twice. Runs in this process: a handful of connections carry it.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pgvote.loadtest.ballots import BallotSpec
from pgvote.loadtest.callers import DbCaller, DbTarget, retryable

INGEST_CLAIMS = {"role": "ingest"}


@dataclass
class BulkRun:
    t0: float
    finished: float
    batches: int
    calls: int  # calls made, retries included
    call_latency: list[float]  # seconds, per answered batch (last attempt)
    outcomes: dict[int, tuple[str, str]]  # voter number -> (status, code) from the per-ballot results
    errors: Counter[str]  # non-200 calls, by "status code"
    batch_errors: list[str]  # batches rejected as a whole (non-retryable answer)


def batches(ballots: BallotSpec, voters: int, batch: int) -> list[list[int]]:
    return [list(range(i, min(voters, i + batch))) for i in range(0, voters, batch)]


async def run_bulk(url: str, ballots: BallotSpec, voters: int, batch: int, clients: int, *,
                   call_timeout: float = 60.0, max_attempts: int = 20, pre_request: str | None = None) -> BulkRun:
    """Cast ``voters`` ballots in batches of ``batch`` from ``clients`` connections, all released at once."""
    plan = batches(ballots, voters, batch)
    bodies = [{"ballots": [ballots.bulk_item(n) for n in numbers]} for numbers in plan]  # built before the clock
    target = DbTarget(url, fn="cast_votes", claims=INGEST_CLAIMS, pre_request=pre_request)
    callers = [DbCaller(target) for _ in range(max(1, min(clients, len(plan))))]
    await asyncio.gather(*(c.open() for c in callers))
    queue = iter(range(len(plan)))
    outcomes: dict[int, tuple[str, str]] = {}
    latency: list[float] = []
    errors: Counter[str] = Counter()
    batch_errors: list[str] = []
    calls = 0

    async def client(caller: DbCaller) -> None:
        nonlocal calls
        for index in queue:
            for attempt in range(1, max_attempts + 1):
                calls += 1
                sent = time.monotonic()
                answer = await caller.call(bodies[index], call_timeout)
                if answer.status == 200:
                    latency.append(time.monotonic() - sent)
                    for n, result in zip(plan[index], answer.body["results"], strict=True):
                        outcomes[n] = (result["status"], result.get("code", ""))
                    break
                errors[f"{answer.status} {answer.code}"] += 1
                if not retryable(answer):
                    batch_errors.append(f"batch {index}: {answer.status} {answer.code}")
                    break
                await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)))

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(client(c) for c in callers))
        finished = time.monotonic()
    finally:
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
    return BulkRun(t0, finished, len(plan), calls, latency, outcomes, errors, batch_errors)


def acknowledged(ballots: BallotSpec, run: BulkRun) -> dict[str, list[str]]:
    """identity -> option ids, for every ballot answered recorded/changed/unchanged."""
    out: dict[str, list[str]] = {}
    for n, (status, _code) in run.outcomes.items():
        if status in ("recorded", "changed", "unchanged"):
            item: dict[str, Any] = ballots.bulk_item(n)
            ident = ("sub:" + item["voter_id"]) if "voter_id" in item else ("fp:" + item["voter_fingerprint"])
            out[ident] = item["option_ids"]
    return out
