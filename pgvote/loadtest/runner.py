"""Run client processes together: connect everything, release at once, show live progress, collect.

The live display (rich) shows voters done, acknowledged, the current rate and every non-200 answer
by status and code, aggregated over the processes.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgvote.loadtest.worker import Record, WorkerSpec, worker_main

READY_TIMEOUT = 180.0  # seconds for every process to open all its connections


@dataclass
class ClientRun:
    t0: float  # time.monotonic() of the release
    finished: float
    records: list[Record]
    errors: Counter[str]  # every non-200 attempt, by "status code"
    connected: int
    connect_failure: str | None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, acknowledged so far)
    client_cpu_seconds: float = 0.0  # CPU the load generator processes used from release to their end


class WorkerFailed(RuntimeError):
    pass


def run_workers(specs: list[WorkerSpec], *, total: int | None, label: str, console: Console,
                quiet: bool = False) -> ClientRun:
    """Start one process per spec, release them together, return every voter's record.

    ``total`` is the number of voters.
    """
    # fork: no re-import of the caller's __main__ (spawn would need an `if __name__` guard in every caller);
    # children never touch inherited connections and leave through os._exit, so nothing is sent on them.
    ctx = mp.get_context("fork")
    ready_q, progress_q, result_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, t0_value = ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=worker_main, args=(s, ready_q, progress_q, result_q, go, t0_value),
                         name=f"pgvote-loadtest-{s.wid}", daemon=True) for s in specs]
    clients = sum(s.clients for s in specs)
    for p in procs:
        p.start()
    try:
        connected, failure = _wait_ready(procs, ready_q, console, clients, quiet)
        t0_value.value = time.monotonic()
        go.set()
        return _follow(procs, progress_q, result_q, t0_value.value, total, label, console, quiet,
                       connected, failure)
    finally:
        go.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def _wait_ready(procs: list[Any], ready_q: Any, console: Console, clients: int,
                quiet: bool) -> tuple[int, str | None]:
    connected, failure, ready = 0, None, 0
    deadline = time.monotonic() + READY_TIMEOUT
    with console.status(f"opening {clients:,} client connections...") if not quiet else _null():
        while ready < len(procs):
            try:
                _wid, opened, fail = ready_q.get(timeout=0.5)
            except queue.Empty:
                if any(not p.is_alive() for p in procs):
                    raise WorkerFailed("a load generator process died while connecting") from None
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"clients not connected after {READY_TIMEOUT:.0f} s") from None
                continue
            ready += 1
            connected += opened
            failure = failure or fail
    return connected, failure


def _follow(procs: list[Any], progress_q: Any, result_q: Any, t0: float, total: int | None, label: str,
            console: Console, quiet: bool, connected: int, failure: str | None) -> ClientRun:
    latest: dict[int, tuple[int, int, int, dict[str, int]]] = {}
    results: dict[int, tuple[list[Record], dict[str, int]]] = {}
    crashed: list[str] = []
    window: deque[tuple[float, int]] = deque()
    timeline: list[tuple[float, int]] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("acked {task.fields[acked]:,}"), TextColumn("{task.fields[rate]:>7,.0f} votes/s"),
               TimeElapsedColumn(), TextColumn("[red]{task.fields[errors]}"))
    with Progress(*columns, console=console, disable=quiet, refresh_per_second=4) as progress:
        task = progress.add_task(label, total=total, acked=0, rate=0.0, errors="")
        while len(results) < len(procs):
            try:
                wid, records, errors = result_q.get(timeout=0.25)
                if records is None:
                    crashed.append(str(errors))
                    results[wid] = ([], errors)
                else:
                    results[wid] = (records, errors)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and result_q.empty():
                    break
            while True:
                try:
                    wid, done, acked, _in_flight, errs = progress_q.get_nowait()
                except queue.Empty:
                    break
                latest[wid] = (done, acked, _in_flight, errs)
            now = time.monotonic()
            done = sum(v[0] for v in latest.values())
            acked = sum(v[1] for v in latest.values())
            errs = Counter[str]()
            for v in latest.values():
                errs.update(v[3])
            errs.pop("_client_cpu_ms", None)
            window.append((now, acked))
            timeline.append((now, acked))
            while window and now - window[0][0] > 1.0:
                window.popleft()
            rate = (acked - window[0][1]) / max(1e-3, now - window[0][0]) if len(window) > 1 else 0.0
            progress.update(task, completed=done, acked=acked, rate=rate,
                            errors="  ".join(f"{k}: {n:,}" for k, n in errs.most_common(4)))
    if crashed:
        raise WorkerFailed("load generator process failed: " + "; ".join(crashed))
    if len(results) < len(procs):
        raise WorkerFailed("a load generator process exited without results")
    records = [r for recs, _ in results.values() for r in recs]
    errors = Counter[str]()
    for _, errs_ in results.values():
        errors.update(errs_)
    client_cpu = errors.pop("_client_cpu_ms", 0) / 1000
    finished = max((r[5] for r in records), default=time.monotonic())
    return ClientRun(t0, finished, records, errors, connected, failure, timeline, client_cpu)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
