"""The SQL-level scenarios of ``pgvote loadtest --sql``: each creates its own poll, runs, and verifies
what is stored (the HTTP ones, k6's, are in ``http_scenarios``).

- ``single``: N distinct voters, one ``cast_vote`` each, from C connections released together;
- ``bare``: the same burst against the bare-insert reference (``baseline.py``): the drain ratio;
- ``bulk``: the same N ballots through ``api.cast_votes`` in batches.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import psycopg
from rich.console import Console

from pgvote.loadtest import baseline
from pgvote.loadtest.ballots import BallotSpec, identity
from pgvote.loadtest.bulk import acknowledged as bulk_acknowledged
from pgvote.loadtest.bulk import run_bulk
from pgvote.loadtest.callers import DbTarget
from pgvote.loadtest.config import LoadtestConfig
from pgvote.loadtest.memory import MemorySample, MemorySampler
from pgvote.loadtest.runner import ClientRun, run_workers
from pgvote.loadtest.stats import figures, latency_summary, timeline
from pgvote.loadtest.verify import verify_poll
from pgvote.loadtest.worker import WorkerSpec
from pgvote.paths import PROJECT_ROOT

OPTIONS = ("PostgreSQL", "PgBouncer", "PostgREST", "psycopg")
MAX_CHOICES = 2


def create_poll(admin_url: str, tag: str) -> BallotSpec:
    """A single-ballot poll (no revotes) open to anonymous voters, created by ``api.create_poll`` as a
    signed-in creator would call it (role and JWT claims set as PostgREST sets them)."""
    claims = json.dumps({"role": "authenticated", "sub": f"loadtest-creator-{tag}"})
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true), "
                     "set_config('request.jwt.claims', %s, true)", (claims,))
        row = conn.execute("select api.create_poll(%s, %s, max_choices => %s, allow_revote => false)",
                           (f"Load test {tag}: which part do you trust most?", list(OPTIONS), MAX_CHOICES)).fetchone()
    assert row is not None
    created: dict[str, Any] = row[0]
    return BallotSpec(created["poll_id"], tuple(created["option_ids"]), tag, MAX_CHOICES)


def pre_request_hook(admin_url: str) -> str | None:
    """``db-pre-request`` of the project's api/postgrest.conf, when that function exists in the database:
    PostgREST calls it in every request's transaction, so the load does too."""
    conf = PROJECT_ROOT / "api" / "postgrest.conf"
    match = re.search(r'^\s*db-pre-request\s*=\s*"([^"]+)"', conf.read_text(), re.MULTILINE) if conf.is_file() else None
    if not match:
        return None
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select to_regprocedure(%s) is not null", (match[1] + "()",)).fetchone()
    return match[1] if row and row[0] else None


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


def sampler(cfg: LoadtestConfig) -> MemorySampler:
    """PSS of the servers behind the URLs, when they run on this machine (found by listening port)."""
    admin, api = urlsplit(cfg.admin_url), urlsplit(cfg.database_url)
    local = {admin.hostname, api.hostname} <= {"127.0.0.1", "localhost", "::1"}
    return sampler_for_ports(admin.port or 5432 if local else None, api.port or 5432 if local else None,
                             cfg.bouncer_admin_url, cfg.sample_interval)


def sampler_for_ports(pg_port: int | None, bouncer_port: int | None, bouncer_admin_url: str | None,
                      interval: float = 0.25) -> MemorySampler:
    return MemorySampler.for_ports(pg_port, bouncer_port, interval, bouncer_admin_url)


def memory_figures(s: MemorySampler) -> dict[str, Any]:
    peak: MemorySample | None = s.peak()
    if peak is None:
        return {"available": False}
    mib = 1024 * 1024
    return {"available": True, "samples": len(s.samples),
            "peak_total_mib": round(peak.total / mib, 1),
            "peak_postgres_pss_mib": round(peak.postgres_pss / mib, 1),
            "peak_postgres_shmem_pss_mib": round(peak.postgres_shmem_pss / mib, 1),
            "peak_beyond_shared_mib": round(max(x.beyond_shared for x in s.samples) / mib, 1),
            "peak_bouncer_pss_mib": round(max(x.bouncer_pss for x in s.samples) / mib, 1),
            "postgres_processes": max(x.postgres_processes for x in s.samples)}


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _specs(cfg: LoadtestConfig, ballots: BallotSpec, target: DbTarget) -> list[WorkerSpec]:
    workers = max(1, min(cfg.workers, cfg.clients))
    return [WorkerSpec(w, ballots, clients, target=target,
                       voters=range(w, cfg.voters, workers), call_timeout=cfg.call_timeout,
                       max_attempts=cfg.max_attempts,
                       run_timeout=cfg.run_timeout)
            for w, clients in enumerate(_split(cfg.clients, workers))]


def _client_result(name: str, path: str, cfg: LoadtestConfig, run: ClientRun, s: MemorySampler,
                   extra: dict[str, Any]) -> dict[str, Any]:
    f = figures(run.records, run.t0, run.errors)
    return {"name": name, "path": path, "voters": cfg.voters,
            "clients": cfg.clients, "workers": max(1, min(cfg.workers, cfg.clients)),
            "connected": run.connected, "connect_failure": run.connect_failure,
            "figures": f.as_dict(), "memory": memory_figures(s), "pool": dict(s.pool_peaks),
            "cpu_seconds": {"load generator": round(run.client_cpu_seconds, 2), **s.cpu_seconds()},
            "timeline": timeline(run.records, run.t0), **extra}


def run_single(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """The burst through ``api.cast_vote`` as PostgREST calls it, through PgBouncer, then verification."""
    tag = new_tag()
    ballots = create_poll(cfg.admin_url, tag)
    hook = pre_request_hook(cfg.admin_url)
    target = DbTarget(cfg.database_url, pre_request=hook)
    s = sampler(cfg)
    s.start()
    try:
        run = run_workers(_specs(cfg, ballots, target), total=cfg.voters, console=console, quiet=quiet,
                          label="cast_vote")
    finally:
        s.stop()
    acked = {identity(r[0]): list(ballots.options_for(r[0])) for r in run.records if r[1] == "ack"}
    attempted = [identity(r[0]) for r in run.records]
    check = verify_poll(cfg.admin_url, ballots.poll_id, acked, attempted)
    return _client_result("single-vote burst", "db", cfg, run, s,
                          {"poll_id": ballots.poll_id, "pre_request": hook, "verification": check.as_dict()})


def run_bare(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """The same burst against the bare-insert reference function (see ``baseline.py``)."""
    tag = new_tag()
    ballots = BallotSpec(str(uuid.uuid4()), tuple(str(uuid.uuid4()) for _ in OPTIONS), tag, MAX_CHOICES)
    baseline.setup(cfg.admin_url)
    try:
        target = DbTarget(baseline.superuser_via_bouncer(cfg.database_url, cfg.admin_url), schema=baseline.SCHEMA,
                          anon_role="postgres")
        s = sampler(cfg)
        s.start()
        try:
            run = run_workers(_specs(cfg, ballots, target), total=cfg.voters, label="bare insert",
                              console=console, quiet=quiet)
        finally:
            s.stop()
        acked = [r[0] for r in run.records if r[1] == "ack"]
        stored, found = baseline.stored(cfg.admin_url, ballots.poll_id, acked)
    finally:
        baseline.teardown(cfg.admin_url)
    check = {"accepted": len(acked), "stored": stored, "lost": len(acked) - found,
             "duplicated": 0, "exactly_once": stored == found == len(acked)}  # the primary key forbids twins
    return _client_result("bare-insert reference", "bare", cfg, run, s, {"verification": check})


def run_bulk_scenario(cfg: LoadtestConfig, console: Console, quiet: bool = False) -> dict[str, Any]:
    """N ballots through ``api.cast_votes`` in batches of ``batch`` from ``clients`` connections."""
    tag = new_tag()
    ballots = create_poll(cfg.admin_url, tag)
    s = sampler(cfg)
    s.start()
    try:
        with console.status(f"bulk: {cfg.voters:,} ballots in batches of {cfg.batch}...") if not quiet \
                else _Quiet():
            run = asyncio.run(run_bulk(cfg.database_url, ballots, cfg.voters, cfg.batch, cfg.clients,
                                       call_timeout=max(cfg.call_timeout, 60), max_attempts=cfg.max_attempts,
                                       pre_request=pre_request_hook(cfg.admin_url)))
    finally:
        s.stop()
    acked = bulk_acknowledged(ballots, run)
    attempted = [("sub:" if n % 2 == 0 else "fp:") + ballots.fingerprint(n) for n in range(cfg.voters)]
    check = verify_poll(cfg.admin_url, ballots.poll_id, acked, attempted)
    wall = run.finished - run.t0
    statuses = Counter(st for st, _ in run.outcomes.values())
    rejected = Counter(code for st, code in run.outcomes.values() if st == "rejected")
    return {"name": "bulk ingestion", "path": "bulk", "poll_id": ballots.poll_id, "voters": cfg.voters,
            "batch": cfg.batch, "clients": min(cfg.clients, run.batches), "batches": run.batches,
            "calls": run.calls, "wall_seconds": wall, "ballots_per_second": len(acked) / wall if wall else math.nan,
            "answers": dict(statuses), "rejected": dict(rejected), "errors": dict(run.errors),
            "batch_errors": run.batch_errors, "batch_latency": latency_summary(run.call_latency),
            "success_rate": len(acked) / cfg.voters if cfg.voters else math.nan,
            "memory": memory_figures(s), "pool": dict(s.pool_peaks), "cpu_seconds": s.cpu_seconds(),
            "verification": check.as_dict()}


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def settle(seconds: float = 1.0) -> None:
    """Let the servers finish the previous scenario's tail (autovacuum wakeups, closing clients)."""
    time.sleep(seconds)
