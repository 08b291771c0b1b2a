"""The load of a fault round: k6 casting a list of ballots through the stack's nginx, read back per attempt.

Python writes the ballots (body and bearer token of each, in a file k6 shares between its VUs) and a
plan, starts ``fault_load.js`` with ``--out json=FILE`` and ``--local-ips`` (a /16 of loopback addresses
no earlier round of the run used, one address per VU, so no VU exceeds the per-address limits of nginx
and of the database, which stay on), follows the JSON output while k6 runs (the fault strikes at a chosen number of
acknowledgments) and reads every attempt back: ballot, attempt number, status, answer or error, start
and end. k6 re-sends a ballot identically after a reset, 502, 503 or 504, a bounded number of times;
whatever is still unanswered when k6 exits is settled here, by identical re-casts through the same nginx
(:func:`settle`), until every ballot has an answer. That bookkeeping of acknowledged and unanswered
calls is the one thing k6 alone cannot do.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pgvote import jwt
from pgvote.http import ApiClient
from pgvote.loadtest.k6 import K6Lines, k6_binary, source_addresses
from pgvote.supervisor import raise_nofile_limit

SCRIPT = Path(__file__).with_name("fault_load.js")
RETRYABLE = frozenset({0, 502, 503, 504})  # no HTTP answer, or the proxy's "retry it" answers
READ_ONLY_SERVER = "0A000"  # SQLSTATE of "cannot set transaction read-write mode during recovery"
BROKEN_CONNECTION = "400 with an empty code"  # PostgREST 12: a pooled connection broke under the request
MAX_ATTEMPTS = 30  # k6's attempts per ballot: 0.2 + 0.4 + 0.8 + 1 s ... = about 27 s of retrying
CALL_TIMEOUT_S = 30  # nginx's proxy_read_timeout: a longer wait is nginx's 504 anyway


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


@dataclass(frozen=True)
class Attempt:
    """One HTTP call of one ballot, as k6 (or the settle step) recorded it."""

    ballot: int  # index of the Vote in the round
    number: int  # 1, 2, ... per ballot (the settle step continues the count)
    status: int  # 0: no HTTP answer (reset, refused, timed out)
    detail: str  # the answer of a 200, the API's error code, or k6's error for status 0
    started: float  # epoch seconds
    finished: float
    by_settle: bool = False
    body: str = ""  # the body of an answer neither 200 nor retryable (what the client was told)
    options: tuple[str, ...] = ()  # the ballot a 200 reports, in poll order

    @property
    def acked(self) -> bool:
        return self.status == 200

    @property
    def broken_connection(self) -> bool:
        """PostgREST 12.0.2 answers 400 with an empty code (and message) when the pooled connection it
        used broke under the request (PostgREST/postgrest#4681): an infrastructure failure reported as a
        client error. No answer of the API has an empty code, so the client can tell and retries it."""
        return self.status == 400 and self.detail == ""

    @property
    def read_only_server(self) -> bool:
        """400 0A000: PostgREST's BEGIN READ WRITE reached a server that had just become a read-only
        standby (a leader demoting itself in the HA stack, before HAProxy stops sending it writes).
        Nothing ran, so the client retries it."""
        return self.status == 400 and self.detail == READ_ONLY_SERVER

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE or self.broken_connection or self.read_only_server

    @property
    def kind(self) -> str:
        """What the client saw: 'reset: <k6 error>' for no answer, '<status> <code>' for an error."""
        if self.status == 0:
            return f"reset: {self.detail}"
        if self.broken_connection:
            return BROKEN_CONNECTION
        return "200" if self.acked else f"{self.status} {self.detail}"


class Live:
    """What a running fault sees of the load: acknowledgments so far, and the moments it marks."""

    def __init__(self) -> None:
        self.acked = 0
        self.in_flight = 0  # calls sent and not yet answered, as far as k6's output has come
        self.marks: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.done = threading.Event()

    def mark(self, name: str) -> float:
        self.marks[name] = time.time()
        return self.marks[name]

    def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.done.is_set():
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def after_acks(self, n: int, timeout: float = 300) -> None:
        assert self.until(lambda: self.acked >= n, timeout), f"the load never reached {n} acknowledged votes"


Fault = Callable[[Live], None]


@dataclass
class Round:
    votes: list[Vote]
    attempts: list[Attempt]
    started: float  # the first call's start (epoch s)
    finished: float  # k6's exit
    marks: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    k6_cpu_s: float = 0.0

    def by_ballot(self) -> dict[int, list[Attempt]]:
        out: dict[int, list[Attempt]] = {}
        for a in sorted(self.attempts, key=lambda a: (a.ballot, a.number)):
            out.setdefault(a.ballot, []).append(a)
        return out

    def acks(self) -> list[Attempt]:
        return [a for a in self.attempts if a.acked]

    def errors_by_kind(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self.attempts if not a.acked).most_common())

    def in_flight_at(self, t: float) -> int:
        """Calls sent and not yet answered at t."""
        return sum(a.started <= t < a.finished for a in self.attempts)

    def longest_ack_gap(self) -> float:
        """Longest time (s) without any acknowledged vote while k6 ran."""
        times = sorted(a.finished for a in self.acks() if not a.by_settle)
        edges = [self.started, *[t for t in times if t <= self.finished], self.finished]
        return round(max(b - a for a, b in itertools.pairwise(edges)), 3)

    def first_ack_after(self, mark: str) -> float | None:
        """From the mark to the first acknowledgment of a call sent after it (None: none)."""
        t0 = self.marks[mark]
        after = [a.finished for a in self.acks() if a.started >= t0]
        return round(min(after) - t0, 3) if after else None

    def full_service(self, t0: float, t1: float) -> float | None:
        """From t0 (the fault began) to full service: the first second, starting after t1 (the fault
        ended) and after k6's last failed call, that acknowledges at least half as many votes as a
        second did before t0 (None: never, or too little load before t0 to tell)."""
        before = [a for a in self.acks() if a.finished < t0]
        if len(before) < 2:
            return None
        rate = len(before) / max(t0 - self.started, 1e-3)
        failed = [a.finished for a in self.attempts if not a.acked and not a.by_settle and a.finished >= t0]
        start = max([t1, *failed])
        acks = sorted(a.finished for a in self.acks() if a.finished >= start and not a.by_settle)
        for i, t in enumerate(acks):
            if bisect.bisect_left(acks, t + 1.0) - i >= rate / 2:
                return round(t - t0, 3)
        return None

    def around(self, start: str, end: str | None = None) -> dict[str, Any]:
        """The figures of a fault that began at mark `start` and ended at mark `end` (a fault that is one
        instant, like RECONNECT: none): calls in flight when it began, how long it lasted (for a kill:
        until the process was back), votes acknowledged meanwhile, the first acknowledgment of a call
        sent after it began, and the time to full service (:meth:`full_service`)."""
        t0 = self.marks[start]
        t1 = self.marks[end] if end is not None else t0
        return {"in_flight_at_fault": self.in_flight_at(t0), "fault_s": round(t1 - t0, 3),
                "acked_during_fault": sum(t0 <= a.finished < t1 for a in self.acks() if not a.by_settle),
                "first_ack_after_fault_s": self.first_ack_after(start),
                "full_service_s": self.full_service(t0, t1)}

    def latency_ms(self, since: float | None = None, until: float | None = None) -> dict[str, float]:
        """p50 / p99 / max (ms) of k6's acknowledged calls answered in [since, until)."""
        lat = sorted((a.finished - a.started) * 1000 for a in self.acks() if not a.by_settle
                     and (since is None or a.finished >= since) and (until is None or a.finished < until))
        if not lat:
            return {"n": 0}
        return {"n": len(lat), "p50": round(statistics.median(lat), 1),
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1), "max": round(lat[-1], 1)}

    @property
    def votes_per_s(self) -> int:
        acked = [a for a in self.acks() if not a.by_settle]
        return round(len(acked) / max(self.finished - self.started, 1e-3))


# ---- running k6 ----------------------------------------------------------------------------------

class _Follower(K6Lines):
    """Keeps the vote_attempts points."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.attempts: list[Attempt] = []
        self.acked = self.sends = 0

    def point(self, line: bytes) -> None:
        self.sends += line.startswith(b'{"metric":"vote_sends","type":"Point"')
        if line.startswith(b'{"metric":"vote_attempts","type":"Point"'):
            data = json.loads(line)["data"]
            tags = data["tags"]
            finished = datetime.fromisoformat(data["time"]).timestamp()  # RFC 3339, ns
            status = int(tags["status"])
            self.attempts.append(Attempt(
                int(tags["ballot"]), int(tags["attempt"]), status,
                tags.get("answer", "") if status == 200 else tags.get("error", ""),
                finished - data["value"] / 1000, finished, body=tags.get("body", ""),
                options=tuple(filter(None, tags.get("options", "").split(",")))))
            self.acked += status == 200


def bearer(stack: Any, vote: Vote) -> str:
    return "" if vote.claims is None else f"Bearer {jwt.sign(stack.jwt_secret, vote.claims)}"


def run_round(stack: Any, votes: Sequence[Vote], *, vus: int, fault: Fault | None = None,
              together: bool = False, timeout: float = 300) -> Round:
    """Cast every vote through k6 (``vus`` VUs released together, each casting its share of the votes one
    after another, or one VU per vote)
    while ``fault`` runs in a thread; then settle what is still unanswered. Bounded in time. k6's files
    are deleted after a good round and kept (plan, ballots, output, log) after a failed one."""
    workdir = Path(tempfile.mkdtemp(prefix="pgvote-k6-"))
    plan = _write_plan(stack, votes, workdir, vus=vus, together=together, timeout=timeout)
    command = [k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report", "--no-summary",
               "--out", f"json={workdir / 'k6.json'}", "--local-ips",
               source_addresses(len(votes) if together else vus), str(SCRIPT)]
    live = Live()
    errors: list[BaseException] = []

    def strike() -> None:
        try:
            assert fault is not None
            fault(live)
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    fault_thread = threading.Thread(target=strike, daemon=True) if fault is not None else None
    follower = _Follower(workdir / "k6.json")
    log = workdir / "k6.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PGVOTE_PLAN": str(plan)}, preexec_fn=raise_nofile_limit)
        try:
            if fault_thread is not None:
                fault_thread.start()
            cpu = _follow(proc, follower, live, timeout + CALL_TIMEOUT_S + 60)
        finally:
            if proc.poll() is None:
                proc.kill()  # our own child, by its pid
                proc.wait()
            live.done.set()
    finished = time.time()
    if fault_thread is not None:
        fault_thread.join(120)
        assert not fault_thread.is_alive(), "the fault did not finish within 120 s of the load"
    if errors:
        raise errors[0]
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-10:])
        raise AssertionError(f"k6 exited with {proc.returncode}; last lines of {log}:\n{tail}")
    started = min((a.started for a in follower.attempts), default=finished)
    result = Round(list(votes), follower.attempts, started, finished, live.marks, live.notes, cpu)
    result.attempts += settle(stack, result)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def _write_plan(stack: Any, votes: Sequence[Vote], workdir: Path, *, vus: int, together: bool,
                timeout: float) -> Path:
    """The ballots (body and bearer token of each) and the plan fault_load.js reads; returns the plan."""
    tokens: dict[str | None, str] = {}
    ballots = []
    for v in votes:
        if v.sub not in tokens:
            tokens[v.sub] = bearer(stack, v)
        ballots.append({"body": json.dumps(v.body()), "auth": tokens[v.sub]})
    (workdir / "ballots.json").write_text(json.dumps(ballots))
    plan = workdir / "plan.json"
    vus = len(votes) if together else vus
    plan.write_text(json.dumps({
        "base_url": stack.http_url, "ballots_path": str(workdir / "ballots.json"), "vus": vus,
        "per_vu": math.ceil(len(votes) / vus), "max_attempts": MAX_ATTEMPTS,
        "call_timeout_s": CALL_TIMEOUT_S, "max_duration_s": int(timeout)}))
    return plan


def _follow(proc: subprocess.Popen[bytes], follower: _Follower, live: Live, timeout: float) -> float:
    """Read k6's output while it runs (the fault watches live.acked); returns k6's CPU seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: k6's own CPU time
        follower.read()
        live.acked, live.in_flight = follower.acked, follower.sends - len(follower.attempts)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return round(usage.ru_utime + usage.ru_stime, 2)
        assert time.monotonic() < deadline, f"k6 still running after {timeout:.0f} s: stopped"
        time.sleep(0.1)


def settle(stack: Any, result: Round, *, attempts: int = 20) -> list[Attempt]:
    """Re-cast identically, through nginx, every ballot whose last answer was retryable (or that k6 never
    sent) until it gets a final answer; returns those calls."""
    api = ApiClient(stack.http_url, stack.jwt_secret, timeout=CALL_TIMEOUT_S)
    by_ballot = result.by_ballot()
    pending = [i for i in range(len(result.votes)) if i not in by_ballot or by_ballot[i][-1].retryable]
    calls: list[Attempt] = []
    for i in pending:
        number = len(by_ballot.get(i, []))
        vote = result.votes[i]
        for _ in range(attempts):
            number += 1
            call = _cast(api, vote, i, number)
            calls.append(call)
            if not call.retryable:
                break
            time.sleep(1)
    return calls


def _cast(api: ApiClient, vote: Vote, ballot: int, number: int) -> Attempt:
    started = time.time()
    try:
        r = api.rpc("cast_vote", vote.body(), claims=vote.claims)
    except OSError as exc:
        return Attempt(ballot, number, 0, type(exc).__name__, started, time.time(), by_settle=True)
    body = r.body if isinstance(r.body, dict) else {}
    if r.status == 200:
        return Attempt(ballot, number, 200, str(body.get("status", "")), started, time.time(), by_settle=True,
                       options=tuple(body.get("option_ids", ())))
    return Attempt(ballot, number, r.status, str(body.get("code", "")), started, time.time(), by_settle=True,
                   body=r.text[:300])
