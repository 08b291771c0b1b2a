"""``pgvote loadtest``: the 50,000-vote spike against one poll, measured and verified.

Modules, one job each: ``config`` (what to run, targets), ``ballots`` (who votes what),
``callers`` (one client connection: PostgREST-exact database calls or HTTP), ``worker`` (a client
process: many connections on one event loop), ``runner`` (processes released together, live
progress), ``scenarios`` (single-vote burst, bare-insert reference, ramp, bulk), ``baseline``
(the bare-insert reference schema), ``bulk`` (``api.cast_votes`` batches), ``verify``
(exactly-once checks against the stored ballots), ``memory`` (PSS and PgBouncer pool sampling),
``stats``, ``report``, ``chart``.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from rich.console import Console

from pgvote.loadtest.config import LoadtestConfig, Targets
from pgvote.loadtest.report import checks, environment
from pgvote.loadtest.scenarios import run_bare, run_bulk_scenario, run_ramp, run_single, settle
from pgvote.loadtest.worker import raise_nofile_limit

__all__ = ["LoadtestConfig", "Targets", "run_loadtest"]


def run_loadtest(cfg: LoadtestConfig, console: Console | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run what ``cfg`` asks for and return the report (scenarios, checks, environment)."""
    console = console or Console()
    nofile = raise_nofile_limit()
    if not cfg.bulk and cfg.clients + 100 > nofile:
        raise ValueError(f"{cfg.clients:,} clients need more than the {nofile:,} open files this process may have")
    started = time.time()
    load_before = os.getloadavg()
    scenarios: list[dict[str, Any]] = []
    if cfg.bulk:
        scenarios.append(run_bulk_scenario(cfg, console, quiet))
    elif cfg.ramp:
        scenarios.append(run_ramp(cfg, console, quiet))
    else:
        if cfg.baseline and not cfg.http_url:
            scenarios.append(run_bare(replace(cfg, voters=cfg.baseline_voters or cfg.voters), console, quiet))
            settle()
        scenarios.append(run_single(cfg, console, quiet))
        if cfg.with_bulk and not cfg.http_url:
            settle()
            scenarios.append(run_bulk_scenario(replace(cfg, clients=cfg.bulk_clients), console, quiet))
    report: dict[str, Any] = {"started": started, "config": {k: v for k, v in cfg.__dict__.items()
                                                             if k != "targets"},
                              "environment": {**environment(cfg), "load_average_before": load_before,
                                              "load_average_after": os.getloadavg()},
                              "scenarios": scenarios}
    report["checks"] = checks(report, cfg.targets)
    return report
