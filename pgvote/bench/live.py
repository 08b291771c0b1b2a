"""`pgvote bench --live`: live results under the HTTP vote burst, on the running local stack (the method:
docs/benchmarks.md, "How the live figures are made")."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from rich.console import Console

from pgvote.bench.report import Section, command_line, run_mode
from pgvote.http import ApiClient
from pgvote.live_client import LiveRefused, LiveSubscriber, Transport
from pgvote.loadtest.k6 import HttpTarget, run_burst
from pgvote.loadtest.report import latency_summary
from pgvote.loadtest.scenarios import create_poll
from pgvote.supervisor import raise_nofile_limit
from pgvote.tables import yes

PER_ADDRESS = 16  # watchers per loopback address, under nginx's limit of 32
CONNECT_AT_ONCE = 200
SETTLE = 30.0  # seconds the watchers get to receive the final results after the burst


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


def cast_times(admin_url: str, poll_id: str) -> list[float]:
    """When each ballot of the poll was cast (epoch seconds), in order: the n-th is the n-th commit, closely."""
    with psycopg.connect(admin_url) as conn:
        return [float(t) for t, in conn.execute("select extract(epoch from cast_at)::float8 from voting.ballots "
                                                "where poll_id = %s order by cast_at", (poll_id,))]


def server_cpu_per_vote_ms(burst: dict[str, Any]) -> float:
    servers: float = sum(seconds for name, seconds in burst["cpu_seconds"].items() if name != "k6")
    return 1000 * servers / max(1, int(burst["figures"]["accepted"]))


async def _watch(fleet: Fleet, port: int, poll_id: str, index: int, held: list[LiveSubscriber],
                 failures: dict[str, int], reading: asyncio.Event) -> None:
    transport: Transport = "sse" if index % 2 else "ws"
    slot = index // PER_ADDRESS
    address = f"127.100.{slot // 254}.{slot % 254 + 1}"
    try:
        sub = await LiveSubscriber.connect("127.0.0.1", port, poll_id, transport, address)
        await asyncio.wait_for(sub.next(), 30)
    except (TimeoutError, OSError, LiveRefused, asyncio.IncompleteReadError, ConnectionError) as exc:
        key = type(exc).__name__ + (f" {exc.status}" if isinstance(exc, LiveRefused) else "")
        failures[key] = failures.get(key, 0) + 1
        return
    held.append(sub)
    await reading.wait()
    try:
        while True:
            fleet.saw(index, await sub.next())
    except (ConnectionError, asyncio.IncompleteReadError):
        pass


async def _fleet(conn: Connection, port: int, poll_id: str, subscribers: int) -> None:
    """The watchers, in their own process (their clock readings must not wait for the parent's work):
    connect all, report, read until told the final total, report what was seen once all have it."""
    raise_nofile_limit()  # one descriptor per watcher
    fleet, reading = Fleet(), asyncio.Event()
    held: list[LiveSubscriber] = []
    failures: dict[str, int] = {}
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    for start in range(0, subscribers, CONNECT_AT_ONCE):
        tasks += [asyncio.create_task(_watch(fleet, port, poll_id, i, held, failures, reading))
                  for i in range(start, min(subscribers, start + CONNECT_AT_ONCE))]
        while len(held) + sum(failures.values()) < len(tasks):
            await asyncio.sleep(0.05)
    reading.set()
    conn.send((len(held), failures, time.monotonic() - started))
    final: int = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    deadline = time.monotonic() + SETTLE
    while sum(t == final for t in fleet.latest.values()) < len(held) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    for sub in held:
        await sub.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(fleet)


def _fleet_process(conn: Connection, port: int, poll_id: str, subscribers: int) -> None:
    asyncio.run(_fleet(conn, port, poll_id, subscribers))


def measure(stack: Any, subscribers: int, votes: int, console: Console) -> dict[str, Any]:
    """The four steps of the method (docs/benchmarks.md), and the figures."""
    target = HttpTarget.for_stack(stack)
    console.rule(f"burst without watchers: {votes:,} voters")
    before = run_burst(target, votes, None, console)
    watched = create_poll(target.admin_url)
    console.rule(f"{subscribers:,} watchers of one poll (EventSource and WebSocket, half each)")
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    fleet_process = multiprocessing.get_context("spawn").Process(
        target=_fleet_process, args=(theirs, stack.http_port, watched.poll_id, subscribers))
    fleet_process.start()
    held, failures, connect_seconds = ours.recv()
    console.print(f"{held:,} watchers hold ({failures or 'no failure'}), connected in {connect_seconds:.1f} s")
    console.rule(f"the same burst, watched by {held:,}")
    burst_started = time.time()
    with_watchers = run_burst(target, votes, None, console, ballots=watched)
    final = ApiClient(stack.http_url).rpc("poll_results", {"poll_id": watched.poll_id}).body["total_ballots"]
    ours.send(final)
    fleet: Fleet = ours.recv()
    fleet_process.join(30)
    delivery_seconds = max(fleet.last.values(), default=burst_started) - burst_started
    cast = cast_times(target.admin_url, watched.poll_id)
    published, first, last = [], [], []
    for seq, total in fleet.total_of.items():
        if 0 < total <= len(cast):
            published.append(seq / 1000 - cast[total - 1])  # seq: the publication time in ms
            first.append(fleet.first[seq] - cast[total - 1])
            last.append(fleet.last[seq] - cast[total - 1])
    console.rule("the watchers left: the burst without them again")
    after = run_burst(target, votes, None, console)
    without_vps = (before["figures"]["votes_per_second"] + after["figures"]["votes_per_second"]) / 2
    return {
        "subscribers_wanted": subscribers, "subscribers_held": held,
        "connect_failures": failures, "connect_seconds": round(connect_seconds, 1),
        "final_total": final, "final_received_by": sum(t == final for t in fleet.latest.values()),
        "messages_delivered": fleet.delivered, "messages_per_second": fleet.delivered / max(1e-3, delivery_seconds),
        "messages_timed": len(last),
        "latency": {name: latency_summary(values) for name, values in (("published", published), ("first", first),
                                                                        ("last", last))},
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
    vps, cpu, lat = r["votes_per_second"], r["cpu_ms_per_vote"], r["latency"]
    return [
        ("watchers held on one poll (half EventSource, half WebSocket)",
         (f"{r['subscribers_held']:,} of {r['subscribers_wanted']:,} (connected in {r['connect_seconds']} s"
          + (f"; failed: {r['connect_failures']})" if r["connect_failures"] else ")"))),
        ("watchers that received the exact final total", f"{r['final_received_by']:,}"),
        ("messages delivered per second during the burst", f"{r['messages_per_second']:,.0f}"),
        ("update latency, ballot cast → published, p50 / p95",
         f"{lat['published']['p50_ms']:.1f} / {lat['published']['p95_ms']:.1f} ms"),
        ("update latency, ballot cast → first watcher, p50 / p95",
         f"{lat['first']['p50_ms']:.1f} / {lat['first']['p95_ms']:.1f} ms ({r['messages_timed']} messages)"),
        ("update latency, ballot cast → last watcher, p50 / p95",
         f"{lat['last']['p50_ms']:.1f} / {lat['last']['p95_ms']:.1f} ms"),
        ("votes/s through nginx without (before, after) / with the watchers",
         (f"{vps['without']:,.0f} ({vps['without_before']:,.0f}, {vps['without_after']:,.0f}) / {vps['with']:,.0f} "
          f"({r['with']['voters']:,} voters each burst, exactly once: {yes(r['exactly_once'])})")),
        ("throughput with ÷ without (goal ≥ 0.95)", f"{r['throughput_ratio']:.2f}"),
        ("server CPU per vote without / with", f"{cpu['without']:.2f} / {cpu['with']:.2f} ms"),
    ]


def bench(stack: Any, args: Any, *, console: Console, **files: Any) -> dict[str, Any]:
    def measured() -> tuple[dict[str, Any], Section]:
        r = measure(stack, args.subscribers, args.votes, console)
        return r, Section([("live results under the vote burst", ("figure", "value"), rows(r), (1,))],
                          f" on the local stack ({os.cpu_count()} cores, shared with the drivers: k6 for the votes, "
                          "one asyncio process for the watchers)", "## Live results (`pgvote bench --live`)",
                          ["", "Method: the section below."])

    return run_mode("bench --live", measured, command=command_line("live", args, ("subscribers", "votes")), console=console,
                    **files)
