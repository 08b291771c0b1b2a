"""The HTTP scenarios of ``pgvote loadtest``: k6 against one base URL (the stack's nginx), ``burst``
(``k6/burst.js``) and the guide's ``ramp`` (``k6/ramp.js``). Production rate limits stay on, so every VU
has its own loopback source address from a fresh ``127.B.0.0/16`` block per scenario, outside the
127.64.0.0/10 of ``pgvote.http.ApiClient`` (docs/benchmarks.md)."""
from __future__ import annotations

import ipaddress
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from rich.console import Console

from pgvote.loadtest.ballots import BallotSpec, identity
from pgvote.loadtest.config import scaled_stages
from pgvote.loadtest.k6 import K6Run, run_k6
from pgvote.loadtest.scenarios import create_poll, new_tag
from pgvote.loadtest.servers import measuring
from pgvote.loadtest.stats import figures, phase_figures, timeline
from pgvote.loadtest.verify import verify_poll

CALL_TIMEOUT_S = 30
MAX_ATTEMPTS = 20
RAMP_VOTERS_PER_VU = 1_000_000  # k6/ramp.js: VU v's iteration i is voter v * this + i


@dataclass(frozen=True)
class HttpTarget:
    """Where the load goes and what measures it.

    ``servers``: name -> listening TCP port of each server process on this machine (``nginx``,
    each PostgREST replica, ``pgbouncer``, ``postgres``), for CPU seconds; ``bouncer_admin_url``
    for PgBouncer's pool peaks.
    """

    base_url: str
    admin_url: str
    servers: dict[str, int] = field(default_factory=dict)
    bouncer_admin_url: str | None = None

    @classmethod
    def for_stack(cls, stack: Any) -> HttpTarget:
        """The stack's nginx, measured with every server process the stack runs."""
        return cls(stack.http_url, stack.admin_url, server_ports(stack.status()), stack.bouncer_admin_url)


def server_ports(status: dict[str, Any]) -> dict[str, int]:
    """Listening port of each running server process of a stack's ``status()``: nginx, every PostgREST
    replica (by name), PgBouncer, PostgreSQL, the live-results publisher."""
    components = status.get("components", {})
    ports = {r["name"]: int(r["port"]) for r in components.get("postgrest", []) if r.get("running")}
    return ports | {name: int(components[name]["port"]) for name in ("nginx", "pgbouncer", "postgres", "publisher")
                    if components.get(name, {}).get("port")}


class RateLimit(NamedTuple):
    burst: int
    per_minute: float


def request_limit(admin_url: str) -> RateLimit:
    """The database's per-caller limit (``rate_limit.limits`` 'request'); nginx's vote zone allows
    bursts of 20 at 10 r/s, which a VU voting one call at a time never reaches first."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select burst, requests_per_minute, enabled from rate_limit.limits "
                           "where name = 'request'").fetchone()
    if row is None or not row[2]:
        return RateLimit(1_000_000, 1e6)
    return RateLimit(int(row[0]), float(row[1]))


_used_blocks: set[int] = set()


def source_addresses(count: int) -> str:
    """A k6 ``--local-ips`` range of ``count`` loopback addresses in a /16 this process has not used."""
    if not 1 <= count <= 65_534:
        raise ValueError(f"{count} VUs: one /16 of loopback addresses holds at most 65,534")
    free = [b for b in (*range(1, 64), *range(128, 255)) if b not in _used_blocks]
    block = random.choice(free)
    _used_blocks.add(block)
    first = ipaddress.IPv4Address(f"127.{block}.0.1")
    return f"{first}-{first + count - 1}"


def vus_needed(voters: int, limit: RateLimit) -> int:
    """The fewest VUs (addresses) that cast ``voters`` ballots without one exceeding its burst."""
    return math.ceil(voters / limit.burst)


def _run(name: str, path: str, script: str, target: HttpTarget, plan: dict[str, Any], ballots: BallotSpec | None,
         vus: int, voter_of: Callable[[BallotSpec, int, int], int], total: int | None, label: str, console: Console,
         quiet: bool) -> tuple[dict[str, Any], K6Run]:
    """Run a k6 script on a poll (``ballots``, else a new one) from ``vus`` fresh source addresses while
    the servers are measured; verify what cast_vote stored. ``voter_of(ballots, vu, iter)``: the voter
    number an iteration casts, as the script counts."""
    fn = plan.get("fn", "cast_vote")
    ballots = ballots or create_poll(target.admin_url, new_tag())
    local_ips = source_addresses(vus)
    plan = {"base_url": target.base_url, "fn": fn, "caller_header": False, "poll_id": ballots.poll_id,
            "patterns": [list(p) for p in ballots.patterns], "tag": ballots.tag,
            "limit": request_limit(target.admin_url)._asdict(), "call_timeout_s": CALL_TIMEOUT_S,
            "max_attempts": MAX_ATTEMPTS, **plan}
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pgvote-k6-") as tmp, \
            measuring(target.servers, target.bouncer_admin_url, measured):
        run = run_k6(script, plan, Path(tmp), voter_of=lambda vu, it: ballots.fingerprint(voter_of(ballots, vu, it)),
                     local_ips=local_ips, total=total, label=label, console=console, quiet=quiet)
    f = figures(run.records, run.t0, run.errors)
    metrics = run.summary.get("metrics", {})
    acked = {identity(r[0]): list(ballots.options_for(r[0])) for r in run.records if r[1] == "ack"}
    verification = (verify_poll(target.admin_url, ballots.poll_id, acked, [identity(r[0]) for r in run.records]).as_dict()
                    if fn == "cast_vote" else {"exactly_once": True, "skipped": "no ballots stored"})
    return {"name": name, "path": path, "fn": fn, "base_url": target.base_url, "poll_id": ballots.poll_id,
            "voters": f["voters"], "clients": vus, "local_ips": local_ips, "figures": f, **measured,
            "cpu_seconds": {"k6": round(run.cpu_seconds, 2), **measured["cpu_seconds"]},
            "timeline": timeline(run.records, run.t0),
            "k6": {"exit_code": run.exit_code, "thresholds_crossed": run.thresholds_crossed,
                   "requests": run.requests, "retries": run.requests - f["voters"],
                   "peak_rss_mib": round(run.peak_rss_mib),
                   "http_req_duration_ms": metrics.get("http_req_duration", {}).get("values", {}),
                   "http_req_failed_rate": metrics.get("http_req_failed", {}).get("values", {}).get("rate")},
            "verification": verification}, run


def run_burst(target: HttpTarget, voters: int, vus: int | None, console: Console, *, quiet: bool = False,
              fn: str = "cast_vote", caller_header: bool = False, ballots: BallotSpec | None = None
              ) -> dict[str, Any]:
    """``voters`` distinct voters through ``POST /rpc/<fn>``, from ``vus`` VUs released together.

    ``fn`` other than cast_vote (the bench's no-op) stores nothing: verification is skipped.
    ``caller_header``: each VU sends its own ``X-Real-IP`` (for a target without nginx in front).
    ``ballots``: a poll the caller made (``create_poll``), e.g. to watch it before the burst starts.
    """
    limit = request_limit(target.admin_url)
    vus = vus or vus_needed(voters, limit)
    per_vu = math.ceil(voters / vus)
    if per_vu > limit.burst:
        raise ValueError(f"{vus:,} VUs would each cast {per_vu} ballots, more than the per-address burst of "
                         f"{limit.burst}: use at least {vus_needed(voters, limit):,}")
    plan = {"fn": fn, "caller_header": caller_header, "voters": voters, "vus": vus, "per_vu": per_vu,
            "max_duration_s": 1200}
    return _run(f"HTTP burst ({fn})", "http", "burst.js", target, plan, ballots, vus,
                lambda _, vu, it: (vu - 1) * per_vu + it, voters, f"{fn} over HTTP (k6, {vus:,} VUs)", console, quiet)[0]


def run_ramp(target: HttpTarget, peak_vus: int, time_scale: float, console: Console, *,
             quiet: bool = False) -> dict[str, Any]:
    """The guide's k6 stages, VUs scaled so that its 50,000 become ``peak_vus``, durations x ``time_scale``."""
    stages = scaled_stages(peak_vus, time_scale)
    result, run = _run("ramp (guide's k6 stages, scaled)", "ramp", "ramp.js", target,
                       {"stages": [{"seconds": s.seconds, "target": s.target} for s in stages]}, None, peak_vus,
                       lambda _, vu, it: vu * RAMP_VOTERS_PER_VU + it, None,
                       f"guide's ramp over HTTP (k6, peak {peak_vus:,} VUs)", console, quiet)
    result["stages"] = [{"seconds": s.seconds, "target": s.target, "phase": s.phase} for s in stages]
    result["phases"] = phase_figures(run.records, run.t0, stages)
    return result
