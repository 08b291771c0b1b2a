"""Live results through nchan in the stack's nginx: GET /live/polls/<poll_id> as EventSource and WebSocket.

What a watcher is promised: the current results at once, then every change (coalesced); totals never go
backwards; the last message after a burst is the exact final poll_results; unknown or malformed ids are
refused without creating a channel; nobody but the publisher can publish; a publisher restart or an nginx
reload loses no final state. Restarts and reloads run on a private stack, never the session's.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import pytest

from pgvote.http import ApiClient, random_loopback_address
from pgvote.live_client import LiveRefused, LiveSubscriber, Transport
from pgvote.publisher import TICK
from pgvote.stack import HOST, LocalStack

from helpers import Poll, PollFactory, fingerprint, user

WAIT = 20.0  # generous bound for a message to arrive (the goal is <= 1 s; benchmarks measure it)


class Watcher:
    """One subscriber in a background thread, collecting every message; reconnects when the stream ends."""

    def __init__(self, stack: LocalStack, poll_id: str, transport: Transport, source_ip: str | None = None) -> None:
        self.stack, self.poll_id, self.transport = stack, poll_id, transport
        self.source_ip = source_ip or random_loopback_address()
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.connections = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        self.wait_for(lambda m: True, "a first message")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)

    async def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    sub = await LiveSubscriber.connect(HOST, self.stack.http_port, self.poll_id, self.transport,
                                                       self.source_ip, timeout=5)
                except (OSError, LiveRefused, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.2)  # nginx reloading or restarting: come back, as a browser does
                    continue
                self.connections += 1
                await self._read(sub)
        except BaseException as exc:  # a bug in the client: make the waiting test say so at once
            self.error = exc
            with self.changed:
                self.changed.notify_all()
            raise

    async def _read(self, sub: LiveSubscriber) -> None:
        """Collect messages until the stream ends or the test is done. One read stays pending across
        the stop checks: cancelling it mid-message would lose the part already read."""
        reading = asyncio.ensure_future(sub.next())
        try:
            while not self.stopping.is_set():
                done, _ = await asyncio.wait({reading}, timeout=0.2)
                if not done:
                    continue
                try:
                    message = reading.result()
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                with self.changed:
                    self.messages.append(message)
                    self.received_at.append(time.monotonic())
                    self.changed.notify_all()
                reading = asyncio.ensure_future(sub.next())
        finally:
            reading.cancel()
            await sub.close()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        with self.changed:
            arrived = self.changed.wait_for(
                lambda: self.error is not None or (bool(self.messages) and predicate(self.messages[-1])), WAIT)
            if self.error is not None:
                raise AssertionError(f"the {self.transport} watcher failed") from self.error
            if not arrived:
                pytest.fail(f"{self.transport} watcher of {self.poll_id}: no message with {what} within "
                            f"{WAIT:.0f} s; last: {self.messages[-1] if self.messages else None}")
            return self.messages[-1]

    def assert_never_backwards(self) -> None:
        """seq strictly increases (repeats after a reconnect are dropped, as the page does) and no total
        decreases (the polls of these tests have no revotes)."""
        seen = [m for i, m in enumerate(self.messages) if i == 0 or m["seq"] > max(p["seq"] for p in self.messages[:i])]
        for before, after in itertools.pairwise(seen):
            assert after["results"]["total_ballots"] >= before["results"]["total_ballots"], (before, after)
            votes = zip(before["results"]["options"], after["results"]["options"], strict=True)
            assert all(b["votes"] <= a["votes"] for b, a in votes), (before, after)


def vote(api: ApiClient, poll: Poll, option: int = 0) -> None:
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[option]],
                              "voter_fingerprint": fingerprint()})
    assert r.status == 200, r.body


def final_results(api: ApiClient, poll: Poll) -> dict[str, Any]:
    r = api.rpc("poll_results", {"poll_id": poll.poll_id})  # POST: never served from nginx's cache
    assert r.status == 200, r.body
    body: dict[str, Any] = r.body
    return body


def channel_info(stack: LocalStack, poll_id: str) -> int:
    """HTTP status of nchan's channel info (200: the channel exists, 404: it does not)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{stack.ports.live_publish}/pub/{poll_id}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# ---- what a watcher sees -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_watcher_gets_the_current_results_at_once_then_every_change(stack, api, make_poll: PollFactory,
                                                                      transport: Transport) -> None:
    poll = make_poll(2)
    vote(api, poll)
    with Watcher(stack, poll.poll_id, transport) as watcher:
        first = watcher.wait_for(lambda m: m["results"]["total_ballots"] == 1, "the vote cast before")
        assert first["results"] == final_results(api, poll)
        vote(api, poll, 1)
        second = watcher.wait_for(lambda m: m["results"]["total_ballots"] == 2, "the second vote")
        assert second["results"] == final_results(api, poll)
        assert second["seq"] > first["seq"]


def test_a_burst_ends_on_the_exact_final_results_and_never_goes_backwards(stack, api, make_poll: PollFactory) -> None:
    poll = make_poll(3)
    voters = 300
    with Watcher(stack, poll.poll_id, "sse") as sse, Watcher(stack, poll.poll_id, "ws") as ws:
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: vote(api, poll, n % 3), range(voters)))
        committed = time.monotonic()
        final = final_results(api, poll)
        assert final["total_ballots"] == voters
        for watcher in (sse, ws):
            last = watcher.wait_for(lambda m: m["results"]["total_ballots"] == voters, "every vote")
            assert last["results"] == final
            watcher.assert_never_backwards()
            # coalesced: at most one message per tick, not one per vote
            during = [t for t in watcher.received_at if t >= started]
            assert len(during) <= (watcher.received_at[-1] - started) / TICK + 2, len(during)
            assert len(during) < voters
            assert watcher.received_at[-1] - committed < WAIT


def test_closing_a_poll_is_pushed(stack, api, make_poll: PollFactory) -> None:
    poll = make_poll(2)
    with Watcher(stack, poll.poll_id, "ws") as watcher:
        assert api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator).status == 200
        assert watcher.wait_for(lambda m: m["results"]["closed"], "closed: true")["results"] == final_results(api, poll)


# ---- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_an_unknown_poll_is_404_and_creates_no_channel(stack, transport: Transport) -> None:
    poll_id = str(uuid.uuid4())
    for _ in range(2):  # the second answer may come from nginx's one-second cache: the same
        with pytest.raises(LiveRefused) as refused:
            asyncio.run(LiveSubscriber.connect(HOST, stack.http_port, poll_id, transport))
        assert refused.value.status == 404 and '"poll_not_found"' in refused.value.body
    assert channel_info(stack, poll_id) == 404


@pytest.mark.parametrize("path", ["/live/polls/not-a-uuid", "/live/polls/" + str(uuid.uuid4()).upper(),
                                  "/live/polls/", "/live/" + str(uuid.uuid4())])
def test_a_malformed_poll_id_is_400(stack, path: str) -> None:
    with pytest.raises(LiveRefused) as refused:
        asyncio.run(LiveSubscriber.connect(HOST, stack.http_port, "", "sse", path=path))
    assert refused.value.status == 400 and '"invalid_poll_id"' in refused.value.body


def test_clients_cannot_publish(stack, api, make_poll: PollFactory) -> None:
    poll = make_poll(2)
    with Watcher(stack, poll.poll_id, "sse") as watcher:
        forged = b'{"seq": 99999999999999, "results": {"total_ballots": 1000000}}'
        for method in ("POST", "PUT", "DELETE"):
            r = api.request(method, f"/live/polls/{poll.poll_id}", forged, {"Content-Type": "application/json"})
            assert r.status == 405, (method, r.status, r.text)
        # nchan's publisher endpoint is not served on the public address
        assert api.request("POST", f"/pub/{poll.poll_id}", forged).status == 404
        time.sleep(3 * TICK)
        assert len(watcher.messages) == 1 and watcher.messages[0]["results"]["total_ballots"] == 0
    pgvote_conf = (stack.nginx_dir / "pgvote.conf").read_text()
    assert f"listen {HOST}:{stack.ports.live_publish};" in pgvote_conf, "publishing is on loopback only"


def test_concurrent_subscriptions_are_limited_per_address(stack, make_poll: PollFactory) -> None:
    poll = make_poll(2)
    address = random_loopback_address()

    async def scenario() -> None:
        held = [await LiveSubscriber.connect(HOST, stack.http_port, poll.poll_id, "sse", address) for _ in range(32)]
        try:
            with pytest.raises(LiveRefused) as refused:
                await LiveSubscriber.connect(HOST, stack.http_port, poll.poll_id, "ws", address)
            assert refused.value.status == 429
            other = await LiveSubscriber.connect(HOST, stack.http_port, poll.poll_id, "ws", random_loopback_address())
            assert (await asyncio.wait_for(other.next(), WAIT))["results"]["poll_id"] == poll.poll_id
            await other.close()
        finally:
            for sub in held:
                await sub.close()

    asyncio.run(scenario())


def test_status_shows_the_publisher(stack) -> None:
    publisher = stack.status()["components"]["publisher"]
    assert publisher["running"] and publisher["port"] == stack.ports.publisher, publisher


# ---- restarts ------------------------------------------------------------------------------------------


def _wait_restarted(stack: LocalStack, name: str, before: int) -> None:
    deadline = time.monotonic() + 30
    while stack.component_pid(name) in (None, before):
        assert time.monotonic() < deadline, f"{name} was not restarted"
        time.sleep(0.1)


def test_a_publisher_restart_loses_no_final_state(private_stack: LocalStack) -> None:
    api = ApiClient(private_stack.http_url, private_stack.jwt_secret)
    created = api.rpc("create_poll", {"question": "Restart?", "options": ["a", "b"]}, claims=user()).body
    poll = Poll(created["poll_id"], created["option_ids"], {})
    with Watcher(private_stack, poll.poll_id, "ws") as watcher:
        before = private_stack.component_pid("publisher")
        assert before is not None
        os.kill(before, signal.SIGKILL)
        for n in range(20):  # votes committed while no publisher runs
            vote(api, poll, n % 2)
        _wait_restarted(private_stack, "publisher", before)
        final = final_results(api, poll)
        assert watcher.wait_for(lambda m: m["results"]["total_ballots"] == 20, "the votes")["results"] == final
        watcher.assert_never_backwards()
    entry = private_stack.status()["components"]["publisher"]
    assert entry["restarts"] >= 1 and entry["last_exit"] == -signal.SIGKILL, entry


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_an_nginx_reload_loses_no_final_state(private_stack: LocalStack, transport: Transport) -> None:
    """A reload closes every subscription: the watcher comes back and gets the votes cast meanwhile."""
    api = ApiClient(private_stack.http_url, private_stack.jwt_secret)
    created = api.rpc("create_poll", {"question": "Reload?", "options": ["a", "b"]}, claims=user()).body
    poll = Poll(created["poll_id"], created["option_ids"], {})
    with Watcher(private_stack, poll.poll_id, transport) as watcher:
        vote(api, poll)
        watcher.wait_for(lambda m: m["results"]["total_ballots"] == 1, "the first vote")
        master = private_stack.component_pid("nginx")
        assert master is not None
        os.kill(master, signal.SIGHUP)
        for n in range(20):
            vote(api, poll, n % 2)
        final = final_results(api, poll)
        assert watcher.wait_for(lambda m: m["results"]["total_ballots"] == 21, "every vote")["results"] == final
        watcher.assert_never_backwards()


def test_an_nginx_restart_loses_no_final_state(private_stack: LocalStack) -> None:
    """A killed nginx (started again by the supervisor) loses every kept message: a watcher that comes
    back gets the final results anyway, although none changed since (the publisher posts them again)."""
    api = ApiClient(private_stack.http_url, private_stack.jwt_secret)
    created = api.rpc("create_poll", {"question": "Restart?", "options": ["a", "b"]}, claims=user()).body
    poll = Poll(created["poll_id"], created["option_ids"], {})
    with Watcher(private_stack, poll.poll_id, "ws") as watcher:
        for n in range(5):
            vote(api, poll, n % 2)
        final = final_results(api, poll)
        watcher.wait_for(lambda m: m["results"] == final, "the votes")
        seen = len(watcher.messages)
        master = private_stack.component_pid("nginx")
        assert master is not None
        os.kill(master, signal.SIGKILL)
        _wait_restarted(private_stack, "nginx", master)
        again = watcher.wait_for(lambda m: len(watcher.messages) > seen, "a message after the restart")
        assert again["results"] == final and watcher.connections >= 2
        watcher.assert_never_backwards()
