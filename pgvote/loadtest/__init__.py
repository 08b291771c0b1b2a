"""``pgvote loadtest``: the 50,000-vote spike against one poll, measured and verified exactly once: k6 over
HTTP (``k6``), pgbench at the SQL level (``scenarios``). How the load is made and measured:
docs/benchmarks.md."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console

from pgvote.loadtest.k6 import HttpTarget, run_burst, run_ramp
from pgvote.loadtest.report import checks, environment
from pgvote.loadtest.scenarios import run_bare, run_bulk_scenario, run_single, settle

__all__ = ["HttpTarget", "LoadtestConfig", "Targets", "run_loadtest"]

#: The guide's 50,000 peak users / 25: this machine's 20,000 open files hold k6's sockets, nginx's
#: two per request and the servers' own (``--vus`` changes it).
DEFAULT_RAMP_VUS = 2_000


@dataclass(frozen=True)
class Targets:
    """Pass/fail thresholds: the guide's (k6 thresholds and "performance guarantees") and ours."""

    spike_success: float = 0.95  # guide: >= 95% success under spike load
    p95_ms: float = 500.0  # guide: http_req_duration p(95) < 500 ms
    votes_per_second: float = 50_000.0  # guide: 50,000+ votes/s
    memory_bytes: int = 2 * 1024**3  # guide: 1-2 GB of memory
    memory_beyond_shared_bytes: int = 1024**3  # ours: <= 1 GB beyond shared_buffers
    drain_ratio: float = 0.8  # ours: single-vote drain rate >= 0.8 x bare-insert rate, same run
    bulk_seconds: float = 1.0  # ours: 50,000 ballots in <= 1 s through the bulk path


@dataclass(frozen=True)
class LoadtestConfig:
    database_url: str  # authenticator through PgBouncer (what PostgREST logs in as)
    admin_url: str  # superuser, direct: setup and verification
    bouncer_admin_url: str | None = None  # PgBouncer's admin console (pool figures; its port finds the pid)
    voters: int = 50_000
    clients: int = 2_000  # SQL path: pgbench clients (connections through PgBouncer)
    bulk: bool = False
    batch: int = 500  # at most this many ballots per cast_votes call
    http: HttpTarget | None = None  # vote over HTTP with k6 (burst, or the ramp); None: the SQL path
    vus: int | None = None  # HTTP: k6 VUs (default: the fewest the per-address burst allows; ramp: 2,000)
    ramp: bool = False
    ramp_time_scale: float = 0.25
    baseline: bool = True  # first the same transactions against the bare-insert reference (drain ratio)
    with_bulk: bool = False  # single-vote mode: also ingest the same number of ballots through the bulk path
    bulk_clients: int = 4  # connections of the bulk path when it runs next to the burst (with_bulk)
    sample_interval: float = 0.25  # memory sampling period
    targets: Targets = field(default_factory=Targets)


def run_loadtest(cfg: LoadtestConfig, console: Console | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run what ``cfg`` asks for and return the report (scenarios, checks, environment)."""
    console = console or Console()
    started = time.time()
    load_before = os.getloadavg()
    scenarios: list[dict[str, Any]] = []
    if cfg.http is not None:
        scenarios.append(run_ramp(cfg.http, cfg.vus or DEFAULT_RAMP_VUS, cfg.ramp_time_scale, console, quiet=quiet)
                         if cfg.ramp else run_burst(cfg.http, cfg.voters, cfg.vus, console, quiet=quiet))
    elif cfg.bulk:
        scenarios.append(run_bulk_scenario(cfg, console, quiet))
    else:
        if cfg.baseline:
            scenarios.append(run_bare(cfg, console, quiet))
            settle()
        scenarios.append(run_single(cfg, console, quiet))
        if cfg.with_bulk:
            settle()
            scenarios.append(run_bulk_scenario(replace(cfg, clients=cfg.bulk_clients), console, quiet))
    report: dict[str, Any] = {"started": started, "config": {k: v for k, v in cfg.__dict__.items()
                                                             if k not in ("targets", "http")}
                              | {"http_url": cfg.http.base_url if cfg.http else None},
                              "environment": {**environment(cfg), "load_average_before": load_before,
                                              "load_average_after": os.getloadavg()},
                              "scenarios": scenarios}
    report["checks"] = checks(report, cfg.targets)
    return report
