"""``pgvote loadtest``: the 50,000-vote spike against one poll, measured and verified exactly once: k6 over
HTTP (``http_scenarios``, ``k6``), pgbench at the SQL level (``scenarios``, ``scratch``). How the load is made
and measured: docs/benchmarks.md."""
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

__all__ = ["LoadtestConfig", "Targets", "run_loadtest"]

#: The guide's 50,000 peak users / 25: this machine's 20,000 open files hold k6's sockets, nginx's
#: two per request and the servers' own (``--vus`` changes it).
DEFAULT_RAMP_VUS = 2_000


def run_loadtest(cfg: LoadtestConfig, console: Console | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run what ``cfg`` asks for and return the report (scenarios, checks, environment)."""
    console = console or Console()
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
