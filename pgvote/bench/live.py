"""`pgvote bench --live`: live results under the HTTP vote burst, on the running local stack.

One run, in this order:
1. the k6 burst of `pgvote loadtest --http` (VOTES distinct voters released together, one loopback
   address per VU, verified exactly once) on a poll nobody watches;
2. SUBSCRIBERS watchers connect to a second poll (half EventSource, half WebSocket, PER_ADDRESS per
   loopback address, under nginx's per-address limit), each receiving the current results: how many
   the box holds;
3. the same burst on the watched poll while every watcher reads its messages, then every watcher must
   receive the exact final total;
4. the watchers leave, and the first burst again: "without watchers" is the mean of 1 and 4, so that
   warming up and drifting load on the shared machine weigh on both sides alike.
A message counting T ballots is late by (when a watcher got it) - (when the T-th ballot was
acknowledged, just after its commit): measured at the first and at the last watcher to get it.
Figures: watchers held, messages delivered per second, that latency's p50/p95, votes/s with the
watchers ÷ without (same run), and the servers' CPU-seconds per vote with and without (PostgreSQL,
PgBouncer, PostgREST, nginx, publisher; the drivers' own CPU is left out: they share the cores).

The watchers run in one asyncio loop (a thread of this process), the burst in k6.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from pgvote.bench.report import write_markdown
from pgvote.http import ApiClient
from pgvote.live_client import LiveRefused, LiveSubscriber, Transport
from pgvote.loadtest.http_scenarios import HttpTarget, run_burst
from pgvote.loadtest.scenarios import create_poll, new_tag

PER_ADDRESS = 16  # watchers per loopback address, under nginx's limit of 32
CONNECT_AT_ONCE = 200
SETTLE = 30.0  # seconds the watchers get to receive the final results after the burst
START, END = "<!-- pgvote bench --live: start -->", "<!-- pgvote bench --live: end -->"
T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where installed: less client CPU per message, on cores the servers share."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class Fleet:
    """What the watchers saw: per message seq, when its first and last copy arrived and its total."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    total_of: dict[int, int] = field(default_factory=dict)  # seq -> total_ballots
    latest: dict[int, int] = field(default_factory=dict)  # watcher -> total_ballots of its last message
    delivered: int = 0

    def saw(self, watcher: int, message: dict[str, Any]) -> None:
        now, seq = time.time(), message["seq"]
        self.delivered += 1
        self.first.setdefault(seq, now)
        self.last[seq] = now
        self.total_of[seq] = self.latest[watcher] = message["results"]["total_ballots"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def server_cpu_per_vote_ms(burst: dict[str, Any]) -> float:
    servers: float = sum(seconds for name, seconds in burst["cpu_seconds"].items() if name != "k6")
    return 1000 * servers / max(1, int(burst["figures"]["accepted"]))


class LiveBench:
    def __init__(self, stack: Any, subscribers: int, votes: int, console: Console) -> None:
        self.stack = stack
        self.target = HttpTarget.for_stack(stack)
        self.subscribers = subscribers
        self.votes = votes
        self.console = console
        self.fleet = Fleet()
        self.held: list[LiveSubscriber] = []
        self.failures: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def watch(self, poll_id: str, index: int, reading: asyncio.Event) -> None:
        transport: Transport = "sse" if index % 2 else "ws"
        slot = index // PER_ADDRESS
        address = f"127.100.{slot // 254}.{slot % 254 + 1}"
        try:
            sub = await LiveSubscriber.connect("127.0.0.1", self.stack.http_port, poll_id, transport, address)
            await asyncio.wait_for(sub.next(), 30)
        except (TimeoutError, OSError, LiveRefused, asyncio.IncompleteReadError, ConnectionError) as exc:
            key = type(exc).__name__ + (f" {exc.status}" if isinstance(exc, LiveRefused) else "")
            self.failures[key] = self.failures.get(key, 0) + 1
            return
        self.held.append(sub)
        await reading.wait()
        try:
            while True:
                self.fleet.saw(index, await sub.next())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def connect_fleet(self, poll_id: str) -> tuple[float, asyncio.Event]:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per watcher
        started, reading = time.monotonic(), asyncio.Event()
        for start in range(0, self.subscribers, CONNECT_AT_ONCE):
            self.tasks += [asyncio.create_task(self.watch(poll_id, i, reading))
                           for i in range(start, min(self.subscribers, start + CONNECT_AT_ONCE))]
            while len(self.held) + sum(self.failures.values()) < len(self.tasks):
                await asyncio.sleep(0.05)
        reading.set()
        return time.monotonic() - started, reading

    async def close_fleet(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sub in self.held:
            await sub.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def run(self) -> dict[str, Any]:
        self.thread.start()
        self.console.rule(f"burst without watchers: {self.votes:,} voters")
        before = run_burst(self.target, self.votes, None, self.console)
        watched = create_poll(self.target.admin_url, new_tag())
        self.console.rule(f"{self.subscribers:,} watchers of one poll (EventSource and WebSocket, half each)")
        connect_seconds, _ = self.on_loop(self.connect_fleet(watched.poll_id))
        self.console.print(f"{len(self.held):,} watchers hold ({self.failures or 'no failure'}), "
                           f"connected in {connect_seconds:.1f} s")
        self.console.rule(f"the same burst, watched by {len(self.held):,}")
        delivered_before, burst_started = self.fleet.delivered, time.time()
        with_watchers = run_burst(self.target, self.votes, None, self.console, ballots=watched, ack_times=True)
        final = ApiClient(self.stack.http_url).rpc("poll_results", {"poll_id": watched.poll_id}).body["total_ballots"]
        deadline = time.monotonic() + SETTLE
        while (sum(t == final for t in self.fleet.latest.values()) < len(self.held)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        delivered = self.fleet.delivered - delivered_before
        delivery_seconds = max(self.fleet.last.values(), default=burst_started) - burst_started
        acks: list[float] = with_watchers.pop("ack_times")
        first, last = [], []
        for seq, total in self.fleet.total_of.items():
            if 0 < total <= len(acks):
                first.append(self.fleet.first[seq] - acks[total - 1])
                last.append(self.fleet.last[seq] - acks[total - 1])
        self.on_loop(self.close_fleet())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.console.rule("the watchers left: the burst without them again")
        after = run_burst(self.target, self.votes, None, self.console)
        without_vps = (before["figures"]["votes_per_second"] + after["figures"]["votes_per_second"]) / 2
        return {
            "subscribers_wanted": self.subscribers, "subscribers_held": len(self.held),
            "connect_failures": self.failures, "connect_seconds": round(connect_seconds, 1),
            "final_total": final, "final_received_by": sum(t == final for t in self.fleet.latest.values()),
            "messages_delivered": delivered, "messages_per_second": delivered / max(1e-3, delivery_seconds),
            "messages_timed": len(last),
            "latency_first_p50_ms": percentile(first, 0.5), "latency_first_p95_ms": percentile(first, 0.95),
            "latency_last_p50_ms": percentile(last, 0.5), "latency_last_p95_ms": percentile(last, 0.95),
            "without_before": before, "with": with_watchers, "without_after": after,
            "votes_per_second": {"without": without_vps, "with": with_watchers["figures"]["votes_per_second"],
                                 "without_before": before["figures"]["votes_per_second"],
                                 "without_after": after["figures"]["votes_per_second"]},
            "throughput_ratio": with_watchers["figures"]["votes_per_second"] / without_vps,
            "cpu_ms_per_vote": {"without": (server_cpu_per_vote_ms(before) + server_cpu_per_vote_ms(after)) / 2,
                                "with": server_cpu_per_vote_ms(with_watchers)},
            "exactly_once": all(b["verification"]["exactly_once"] for b in (before, with_watchers, after)),
        }


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    vps, cpu = r["votes_per_second"], r["cpu_ms_per_vote"]
    return [
        ("watchers held on one poll (half EventSource, half WebSocket)",
         (f"{r['subscribers_held']:,} of {r['subscribers_wanted']:,} (connected in {r['connect_seconds']} s"
          + (f"; failed: {r['connect_failures']})" if r["connect_failures"] else ")"))),
        ("watchers that received the exact final total", f"{r['final_received_by']:,}"),
        ("messages delivered per second during the burst", f"{r['messages_per_second']:,.0f}"),
        ("update latency, ballot acknowledged → first watcher, p50 / p95",
         f"{r['latency_first_p50_ms']} / {r['latency_first_p95_ms']} ms ({r['messages_timed']} messages)"),
        ("update latency, ballot acknowledged → last watcher, p50 / p95",
         f"{r['latency_last_p50_ms']} / {r['latency_last_p95_ms']} ms"),
        ("votes/s through nginx without (before, after) / with the watchers",
         (f"{vps['without']:,.0f} ({vps['without_before']:,.0f}, {vps['without_after']:,.0f}) / {vps['with']:,.0f} "
          f"({r['with']['voters']:,} voters each burst, exactly once: {'yes' if r['exactly_once'] else 'NO'})")),
        ("throughput with ÷ without (goal ≥ 0.95)", f"{r['throughput_ratio']:.2f}"),
        ("server CPU per vote without / with", f"{cpu['without']:.2f} / {cpu['with']:.2f} ms"),
    ]


def markdown(r: dict[str, Any], command: str) -> str:
    lines = [START, "## Live results (`pgvote bench --live`)", "",
             (f"Command: `{command}` on the local stack ({os.cpu_count()} cores, shared with the drivers: k6 for "
              "the votes, one asyncio process for the watchers). Method: `pgvote/bench/live.py`."), "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows(r)]
    return "\n".join([*lines, "", END])


def run_live_bench(stack: Any, *, subscribers: int, votes: int, report_path: Path | None, json_path: Path | None,
                   command: str, console: Console) -> dict[str, Any]:
    result = LiveBench(stack, subscribers, votes, console).run()
    table = Table(title="live results under the vote burst")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows(result):
        table.add_row(name, value)
    console.print(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if report_path:
        write_markdown(report_path, markdown(result, command), START, END)
        console.print(f"report: {report_path}")
    return result
