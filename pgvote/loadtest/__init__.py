"""``pgvote loadtest``: the 50,000-vote spike against one poll, measured and verified.

Two load paths:

- over HTTP, k6 (``k6/*.js``, run and read by ``k6``; ``http_scenarios``: the burst and the guide's
  ramp through the stack's nginx, one source address per VU within the production rate limits);
- at the SQL level, PostgREST's exact statements through PgBouncer from Python processes
  (``callers``: one connection, ``worker``: a process of many on one event loop, ``runner``:
  processes released together; ``scenarios``: single-vote burst, bare-insert reference, bulk;
  ``baseline``: the bare-insert reference schema; ``bulk``: ``api.cast_votes`` batches).

Shared: ``config`` (what to run, targets), ``ballots`` (who votes what), ``verify`` (exactly-once
checks against the stored ballots), ``memory`` (PSS and PgBouncer pool sampling), ``cpu`` (CPU
seconds per server process), ``stats``, ``report``, ``chart``.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from rich.console import Console

from pgvote.loadtest import http_scenarios
from pgvote.loadtest.config import LoadtestConfig, Targets
from pgvote.loadtest.report import checks, environment
from pgvote.loadtest.scenarios import run_bare, run_bulk_scenario, run_single, settle
from pgvote.loadtest.worker import raise_nofile_limit

__all__ = ["LoadtestConfig", "Targets", "run_loadtest"]

#: The guide's 50,000 peak users / 25: this machine's 20,000 open files hold k6's sockets, nginx's
#: two per request and the servers' own (``--vus`` changes it).
DEFAULT_RAMP_VUS = 2_000


def run_loadtest(cfg: LoadtestConfig, console: Console | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run what ``cfg`` asks for and return the report (scenarios, checks, environment)."""
    console = console or Console()
    nofile = raise_nofile_limit()
    if cfg.http is None and not cfg.bulk and cfg.clients + 100 > nofile:
        raise ValueError(f"{cfg.clients:,} clients need more than the {nofile:,} open files this process may have")
    started = time.time()
    load_before = os.getloadavg()
    scenarios: list[dict[str, Any]] = []
    if cfg.http is not None:
        if cfg.ramp:
            scenarios.append(http_scenarios.run_ramp(cfg.http, cfg.vus or DEFAULT_RAMP_VUS, cfg.ramp_time_scale,
                                                     console, quiet=quiet))
        else:
            scenarios.append(http_scenarios.run_burst(cfg.http, cfg.voters, cfg.vus, console, quiet=quiet))
    elif cfg.bulk:
        scenarios.append(run_bulk_scenario(cfg, console, quiet))
    else:
        if cfg.baseline:
            scenarios.append(run_bare(replace(cfg, voters=cfg.baseline_voters or cfg.voters), console, quiet))
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
