"""Live results publisher: pushes each watched poll's `api.poll_results` to nchan when it changes.

    watcher --GET /live/polls/<id>--> nginx (nchan) --"may <id> be watched?"--> publisher /authorize/<id>
    publisher --every TICK: api.poll_results of the watched polls (one query, PgBouncer, role anon)-->
    publisher --POST /pub/<id> {"seq", "results"} (only when the results changed)--> nchan --> watchers

Why polling and not a trigger: the vote path stays as it is (no NOTIFY, no trigger, no extra write per
vote). A NOTIFY in a committing transaction takes a database-wide lock through commit; one read of a few
dozen tally rows per watched poll and tick costs nothing by comparison, and coalesces a burst into at most
1 / TICK messages per second per poll.

Which polls are watched: nchan asks the publisher before it lets a subscriber in (nginx keeps the answer
one second), so every watched poll is known, including the first subscriber of a channel, who then gets
the current results at once (nchan keeps the last message of each channel). The set is saved to a file,
so a restarted publisher knows it again; a poll leaves it when its channel has had no subscriber for
PRUNE_AFTER seconds. Every CHECK_EVERY seconds the publisher reads each channel's info from nchan: a
channel whose kept message is gone (nginx restarted) gets the current results again.

Guarantees: reads run one after another on one connection, each in a newer snapshot, and are published in
that order, so a watcher never sees totals go backwards; after a burst the last message is the exact final
results; `seq` increases per poll across restarts of the publisher and of nginx (it is the publication
time in milliseconds, made strictly increasing), so a watcher that reconnects can drop what it has seen.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

TICK = 0.25  # seconds between reads of the watched polls: at most 4 messages per second and poll
CHECK_EVERY = 2.0  # seconds between nchan channel checks of a poll whose results did not change
PRUNE_AFTER = 10.0  # seconds without subscriber (nor authorization) before a poll is no longer read
RESULTS_SQL = "select p::text, api.poll_results(p) from unnest(%s::uuid[]) as p"


@dataclass
class Watch:  # one watched poll: what was published last, and when it was last seen wanted
    poll_id: str
    results: Any = None  # last published results (None: publish at the next tick)
    seq: int = 0
    wanted_at: float = 0.0  # last authorization, or last check that found subscribers
    checked_at: float = 0.0


def log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", flush=True)


class Publisher:
    def __init__(self, database_url: str, nchan_url: str, watch_file: Path) -> None:
        self.database_url, self.watch_file, self.watches = database_url, watch_file, dict[str, Watch]()
        self.nchan = httpx.AsyncClient(base_url=nchan_url, timeout=5.0, headers={"Accept": "application/json"})
        self.lock = asyncio.Lock()  # one read-and-publish at a time: publications keep the reads' order
        self.conn: psycopg.AsyncConnection[Any] | None = None
        with contextlib.suppress(OSError, ValueError):
            self.watches = {poll_id: Watch(poll_id, wanted_at=time.monotonic()) for poll_id in json.loads(watch_file.read_text())}

    async def read_results(self, poll_ids: list[str]) -> dict[str, Any]:
        """api.poll_results of each poll in one snapshot, as the least-privileged API role (anon)."""
        if self.conn is None or self.conn.closed:
            # transaction pooling (PgBouncer): no server-side prepared statements
            self.conn = await psycopg.AsyncConnection.connect(self.database_url, prepare_threshold=None, autocommit=True,
                                                              connect_timeout=5)
        try:
            async with self.conn.transaction():
                await self.conn.execute("select set_config('role', 'anon', true)")
                rows = await (await self.conn.execute(RESULTS_SQL, (poll_ids,))).fetchall()
        except psycopg.OperationalError:
            await self.conn.close()
            raise
        return {poll_id: results for poll_id, results in rows}

    async def publish(self, watch: Watch, results: Any) -> None:
        watch.seq = max(watch.seq + 1, time.time_ns() // 1_000_000)
        body = json.dumps({"seq": watch.seq, "results": results}, separators=(",", ":"))
        answer = await self.nchan.post(f"/pub/{watch.poll_id}", content=body, headers={"Content-Type": "application/json"})
        answer.raise_for_status()
        watch.results = results

    async def check_channel(self, watch: Watch, now: float) -> None:
        """Keep a poll watched while its channel has subscribers; publish again if its message is gone."""
        watch.checked_at = now
        answer = await self.nchan.get(f"/pub/{watch.poll_id}")
        info = answer.json() if answer.status_code == 200 else {}  # 404: no such channel
        if info.get("messages", 0) == 0:
            watch.results = None  # nothing kept for the next subscriber (nginx restarted): post it again
        if info.get("subscribers", 0) > 0:
            watch.wanted_at = now
        if now - watch.wanted_at > PRUNE_AFTER:
            del self.watches[watch.poll_id]
            self.save()

    def save(self) -> None:
        tmp = self.watch_file.with_name(f".{self.watch_file.name}.tmp")
        tmp.write_text(json.dumps(sorted(self.watches)) + "\n")
        tmp.replace(self.watch_file)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with self.lock:
                    current = await self.read_results(list(self.watches)) if self.watches else {}
                    now = time.monotonic()
                    for poll_id, results in current.items():
                        watch = self.watches[poll_id]
                        if results != watch.results:
                            await self.publish(watch, results)
                        if now - watch.checked_at >= CHECK_EVERY:
                            await self.check_channel(watch, now)
            except (psycopg.Error, httpx.HTTPError, OSError) as exc:
                log(f"tick failed, retrying: {type(exc).__name__}: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, TICK - (time.monotonic() - started)))

    async def authorize(self, poll_id: str) -> tuple[int, dict[str, Any] | None]:
        """200 and the poll becomes watched (its current results published first), or the API's error."""
        async with self.lock:
            if (watch := self.watches.get(poll_id)) is not None:
                # a newcomer: the next tick checks that nchan still keeps the current message (lost if nginx restarted)
                watch.wanted_at, watch.checked_at = time.monotonic(), 0.0
                return 200, None
            try:
                results = (await self.read_results([poll_id]))[poll_id]
            except psycopg.Error as exc:
                if exc.sqlstate != "PGRST" or exc.diag.message_primary is None:
                    raise
                error = json.loads(exc.diag.message_primary)
                status = json.loads(exc.diag.message_detail or "{}").get("status", 400)
                return status, {**error, "details": None, "hint": None}
            watch = self.watches[poll_id] = Watch(poll_id, wanted_at=time.monotonic())
            self.save()
            await self.publish(watch, results)
            return 200, None

    async def serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 server for nginx (keep-alive GETs without body): /authorize/<id>, /health."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("ascii", "replace")
                status: int = 404
                body: dict[str, Any] | None = {"code": "not_found", "message": "No such endpoint."}
                if path == "/health":
                    status, body = 200, {"watched": len(self.watches)}
                elif path.startswith("/authorize/"):
                    try:
                        status, body = await self.authorize(path.removeprefix("/authorize/"))
                    except (psycopg.Error, httpx.HTTPError, OSError) as exc:
                        log(f"authorize failed: {type(exc).__name__}: {exc}")
                        status, body = 503, {"code": "service_unavailable", "message": "Retry in a moment."}
                payload = json.dumps(body).encode() if body is not None else b""
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


async def main_async(args: argparse.Namespace) -> int:
    publisher = Publisher(args.database_url, args.nchan_url, Path(args.watch_file))
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(publisher.serve_http, host, int(port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log(f"publisher listening on {args.listen}, {len(publisher.watches)} polls watched (pid {os.getpid()})")
    async with server:
        await publisher.run(stop)
    await publisher.nchan.aclose()
    if publisher.conn is not None:
        await publisher.conn.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgvote.publisher", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="libpq URL of the authenticator login (PgBouncer)")
    parser.add_argument("--nchan-url", required=True, help="base URL of nginx's nchan publisher endpoint")
    parser.add_argument("--listen", required=True, help="host:port of the authorization endpoint nginx calls")
    parser.add_argument("--watch-file", required=True, help="where the set of watched polls is kept")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
