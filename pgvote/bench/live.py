"""`pgvote bench --live`: live results under load, on the running local stack.

One run, in this order:
1. a vote burst through nginx (k6, tests nothing but throughput) on a poll nobody watches;
2. SUBSCRIBERS watchers connect to another poll (half EventSource, half WebSocket, 16 per loopback
   address, under nginx's per-address limit) and each must receive the current results: how many the
   box holds;
3. the same burst on the watched poll while every watcher reads its messages, and a probe voter casts
   one vote every PROBE_EVERY seconds on an option nobody else votes for. A probe's latency runs from
   its acknowledgment (just after its commit) to the first message counting it, at the first and at the
   last watcher to receive that message.
Figures: watchers held, messages delivered per second, latency p50/p95, votes/s with watchers ÷
without (same run), and the server's CPU-seconds per vote with and without (every process of the stack:
PostgreSQL, PgBouncer, PostgREST, nginx, publisher; the driver's own CPU is left out, since it shares
the machine's cores).
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pgvote.bench.report import write_markdown
from pgvote.http import ApiClient
from pgvote.live_client import LiveRefused, LiveSubscriber, Transport

K6 = Path(sys.executable).with_name("k6")
SCRIPT = Path(__file__).with_name("scripts") / "live_votes.js"
PER_VU = 20  # votes per k6 VU (and loopback address): within nginx's burst and the database's bucket
PER_ADDRESS = 16  # watchers per loopback address, under nginx's limit of 32
PROBE_EVERY = 0.2
CONNECT_AT_ONCE = 200
SETTLE = 30.0  # seconds the watchers get to receive the final results after the burst
START, END = "<!-- pgvote bench --live: start -->", "<!-- pgvote bench --live: end -->"


@dataclass
class Fleet:
    """What the watchers saw: per message seq, when its first and last copy arrived, and how many."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)  # watcher -> total_ballots of its last message
    delivered: int = 0

    def saw(self, watcher: int, message: dict[str, Any], now: float) -> None:
        self.delivered += 1
        self.first.setdefault(message["seq"], now)
        self.last[message["seq"]] = now
        self.total[watcher] = message["results"]["total_ballots"]


def server_cpu_seconds(status: dict[str, Any]) -> float:
    """utime+stime (own and reaped children) of every process under the supervisor and the postmaster."""
    roots = {c["pid"] for c in (status["components"]["supervisor"], status["components"]["postgres"]) if c.get("pid")}
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime

    def under_roots(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parents.get(pid, 0)
        return False

    return sum(t for pid, t in ticks.items() if under_roots(pid)) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class LiveBench:
    def __init__(self, stack: Any, subscribers: int, votes: int, console: Console) -> None:
        self.stack = stack
        self.api = ApiClient(stack.http_url, stack.jwt_secret)
        self.subscribers = subscribers
        self.vus = max(1, -(-votes // PER_VU))
        self.votes = self.vus * PER_VU
        self.console = console
        self.run_id = uuid.uuid4().hex[:8]
        self.bursts = 0

    def create_poll(self, label: str) -> dict[str, Any]:
        creator = {"role": "authenticated", "sub": f"bench-live-{self.run_id}"}
        body = {"question": f"Live bench {self.run_id}: {label}", "options": ["a", "b", "c", "d", "probe"],
                "allow_multiple_votes": False}
        created = self.api.rpc("create_poll", body, claims=creator)
        if created.status != 200:
            raise RuntimeError(f"create_poll failed: {created.status} {created.body}")
        return dict(created.body)

    async def burst(self, poll: dict[str, Any]) -> dict[str, Any]:
        """The k6 burst on poll's first four options; its own block of loopback addresses."""
        self.bursts += 1
        block = 89 + self.bursts  # 127.90.x.x, 127.91.x.x, ...: a fresh bucket per address and burst
        count = self.vus + 1
        last = f"127.{block}.{count // 254}.{count % 254 + 1}"
        with tempfile.TemporaryDirectory(prefix="pgvote-bench-live-") as tmp:
            summary = Path(tmp) / "summary.json"
            argv = [str(K6), "run", "--quiet", "--no-usage-report", "--local-ips", f"127.{block}.0.1-{last}",
                    "--summary-export", str(summary), "-e", f"BASE_URL={self.stack.http_url}",
                    "-e", f"POLL_ID={poll['poll_id']}", "-e", f"OPTION_IDS={json.dumps(poll['option_ids'][:4])}",
                    "-e", f"VUS={self.vus}", "-e", f"PER_VU={PER_VU}", "-e", f"RUN={self.run_id}-{self.bursts}",
                    str(SCRIPT)]
            cpu_before = server_cpu_seconds(self.stack.status())
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, stderr = await proc.communicate()
            cpu = server_cpu_seconds(self.stack.status()) - cpu_before
            if not summary.exists():
                raise RuntimeError(f"k6 failed (exit {proc.returncode}): {stderr.decode()[-500:]}")
            metrics = json.loads(summary.read_text())["metrics"]
        recorded = int(metrics["checks"]["passes"])
        return {"votes": self.votes, "recorded": recorded, "votes_per_second": metrics["http_reqs"]["rate"],
                "p95_ms": metrics["http_req_duration"]["p(95)"], "server_cpu_s": cpu,
                "cpu_ms_per_vote": 1000 * cpu / max(1, recorded)}

    async def watch(self, poll_id: str, index: int, fleet: Fleet, ready: asyncio.Event,
                    held: list[LiveSubscriber], failures: dict[str, int]) -> None:
        transport: Transport = "sse" if index % 2 else "ws"
        address = f"127.100.{index // PER_ADDRESS // 254}.{index // PER_ADDRESS % 254 + 1}"
        try:
            sub = await LiveSubscriber.connect("127.0.0.1", self.stack.http_port, poll_id, transport, address)
            await asyncio.wait_for(sub.next(), 30)
        except (OSError, LiveRefused, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            key = f"{type(exc).__name__}{f' {exc.status}' if isinstance(exc, LiveRefused) else ''}"
            failures[key] = failures.get(key, 0) + 1
            return
        held.append(sub)
        await ready.wait()
        try:
            while True:
                fleet.saw(index, await sub.next(), time.monotonic())
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass

    async def probe(self, poll: dict[str, Any], stop: asyncio.Event) -> list[float]:
        """Probe votes on the 'probe' option: returns their acknowledgment times (monotonic)."""
        acks: list[float] = []
        option = poll["option_ids"][4]
        while not stop.is_set():
            body = {"poll_id": poll["poll_id"], "option_ids": [option], "voter_fingerprint": f"probe-{uuid.uuid4()}"}
            answer = await asyncio.to_thread(self.api.rpc, "cast_vote", body)
            if answer.status == 200:
                acks.append(time.monotonic())
            await asyncio.sleep(PROBE_EVERY)
        return acks

    async def run(self) -> dict[str, Any]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        quiet, watched = self.create_poll("nobody watches"), self.create_poll("watched")
        self.console.print(f"burst without watchers: {self.votes:,} votes from {self.vus:,} k6 VUs")
        without = await self.burst(quiet)

        self.console.print(f"connecting {self.subscribers:,} watchers (EventSource and WebSocket, half each)")
        fleet, ready, held, failures = Fleet(), asyncio.Event(), [], {}
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        for start in range(0, self.subscribers, CONNECT_AT_ONCE):
            batch = [asyncio.create_task(self.watch(watched["poll_id"], i, fleet, ready, held, failures))
                     for i in range(start, min(self.subscribers, start + CONNECT_AT_ONCE))]
            tasks += batch
            while len(held) + sum(failures.values()) < len(tasks):
                await asyncio.sleep(0.05)
        connect_seconds = time.monotonic() - started
        ready.set()

        self.console.print(f"{len(held):,} watchers hold; burst with them, probe votes every {PROBE_EVERY} s")
        # the probe's message: the one probe subscriber parses probe counts (the fleet only counts)
        probe_sub = await LiveSubscriber.connect("127.0.0.1", self.stack.http_port, watched["poll_id"], "sse",
                                                 "127.101.0.1")
        probe_counts: dict[int, int] = {}

        async def read_probe() -> None:
            try:
                while True:
                    message = await probe_sub.next()
                    probe_counts[message["seq"]] = message["results"]["options"][4]["votes"]
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass

        probe_reader = asyncio.create_task(read_probe())
        stop = asyncio.Event()
        prober = asyncio.create_task(self.probe(watched, stop))
        delivered_before, burst_started = fleet.delivered, time.monotonic()
        with_watchers = await self.burst(watched)
        stop.set()
        acks = await prober
        final = self.api.rpc("poll_results", {"poll_id": watched["poll_id"]}).body["total_ballots"]
        deadline = time.monotonic() + SETTLE

        def final_seen() -> int:
            return sum(1 for total in fleet.total.values() if total == final)

        while final_seen() < len(held) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        delivery_seconds = time.monotonic() - burst_started
        delivered = fleet.delivered - delivered_before

        first_latency, last_latency = [], []
        by_seq = sorted(probe_counts.items())
        for k, acked in enumerate(acks, start=1):
            seq = next((s for s, n in by_seq if n >= k), None)
            if seq is not None and seq in fleet.first:
                first_latency.append(fleet.first[seq] - acked)
                last_latency.append(fleet.last[seq] - acked)
        for task in tasks + [probe_reader]:
            task.cancel()
        for sub in held + [probe_sub]:
            await sub.close()
        await asyncio.gather(*tasks, probe_reader, return_exceptions=True)
        return {
            "subscribers_wanted": self.subscribers, "subscribers_held": len(held), "connect_failures": failures,
            "connect_seconds": connect_seconds, "final_received_by": final_seen(),
            "messages_delivered": delivered, "messages_per_second": delivered / delivery_seconds,
            "probes": len(acks), "latency_first_p50_ms": _ms(percentile(first_latency, 0.5)),
            "latency_first_p95_ms": _ms(percentile(first_latency, 0.95)),
            "latency_last_p50_ms": _ms(percentile(last_latency, 0.5)),
            "latency_last_p95_ms": _ms(percentile(last_latency, 0.95)),
            "without": without, "with": with_watchers,
            "throughput_ratio": with_watchers["votes_per_second"] / without["votes_per_second"],
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def print_report(r: dict[str, Any], console: Console) -> None:
    table = Table(title="live results under a vote burst")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("watchers held / wanted", f"{r['subscribers_held']:,} / {r['subscribers_wanted']:,}"
                                   + (f" (failed: {r['connect_failures']})" if r["connect_failures"] else "")),
        ("watchers connected in", f"{r['connect_seconds']:.1f} s"),
        ("watchers that got the exact final total", f"{r['final_received_by']:,}"),
        ("messages delivered per second", f"{r['messages_per_second']:,.0f}"),
        ("update latency to first watcher p50 / p95", f"{r['latency_first_p50_ms']} / {r['latency_first_p95_ms']} ms"),
        ("update latency to last watcher p50 / p95", f"{r['latency_last_p50_ms']} / {r['latency_last_p95_ms']} ms"),
        ("votes/s without / with watchers", f"{r['without']['votes_per_second']:,.0f} / "
                                            f"{r['with']['votes_per_second']:,.0f}"),
        ("throughput with ÷ without (goal >= 0.95)", f"{r['throughput_ratio']:.2f}"),
        ("server CPU ms per vote without / with", f"{r['without']['cpu_ms_per_vote']:.2f} / "
                                                  f"{r['with']['cpu_ms_per_vote']:.2f}"),
        ("votes recorded without / with", f"{r['without']['recorded']:,} / {r['with']['recorded']:,} "
                                          f"of {r['with']['votes']:,} each"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def markdown(r: dict[str, Any], command: str) -> str:
    w, o = r["with"], r["without"]
    return "\n".join([
        START,
        "## Live results (`pgvote bench --live`)",
        "",
        f"Command: `{command}` on the local stack ({os.cpu_count()} cores shared with the driver: k6 for the votes, "
        "one asyncio process for the watchers). Method: `pgvote/bench/live.py`.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| watchers held on one poll (half EventSource, half WebSocket) | {r['subscribers_held']:,} of "
        f"{r['subscribers_wanted']:,} (connected in {r['connect_seconds']:.1f} s) |",
        f"| watchers that received the exact final results | {r['final_received_by']:,} |",
        f"| messages delivered per second during the burst | {r['messages_per_second']:,.0f} |",
        f"| update latency, vote acknowledged → first watcher, p50 / p95 | {r['latency_first_p50_ms']} / "
        f"{r['latency_first_p95_ms']} ms ({r['probes']} probe votes) |",
        f"| update latency, vote acknowledged → last watcher, p50 / p95 | {r['latency_last_p50_ms']} / "
        f"{r['latency_last_p95_ms']} ms |",
        f"| votes/s through nginx without / with the watchers | {o['votes_per_second']:,.0f} / "
        f"{w['votes_per_second']:,.0f} ({o['votes']:,} votes each) |",
        f"| throughput with ÷ without (goal ≥ 0.95) | {r['throughput_ratio']:.2f} |",
        f"| server CPU per vote without / with | {o['cpu_ms_per_vote']:.2f} / {w['cpu_ms_per_vote']:.2f} ms |",
        "",
        END,
    ])


def run_live_bench(stack: Any, *, subscribers: int, votes: int, report_path: Path | None, json_path: Path | None,
                   command: str, console: Console) -> dict[str, Any]:
    if not K6.exists():
        raise RuntimeError(f"k6 not found at {K6} (scripts/install-deps installs it)")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: dict[str, Any] = runner(LiveBench(stack, subscribers, votes, console).run())
    print_report(result, console)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if report_path:
        write_markdown(report_path, markdown(result, command), START, END)
        console.print(f"report: {report_path}")
    return result
