"""``pgvote loadtest``: the 50,000-vote spike against one poll, measured and verified exactly once. Over
HTTP by default (k6 through the stack's nginx, ``k6``: the product's real interface); ``--sql`` (and
``--bulk`` / ``--with-bulk``) the database path: pgbench through PgBouncer (``scenarios``). How the load
is made and measured: docs/benchmarks.md."""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from pgvote.loadtest.k6 import HttpTarget, run_burst, run_ramp
from pgvote.loadtest.report import checks, environment, print_report, timeline_panels, write_chart
from pgvote.loadtest.scenarios import run_bare, run_bulk_scenario, run_single
from pgvote.loadtest.servers import local_ports, server_ports

#: The guide's 50,000 peak users / 25: this machine's 20,000 open files hold k6's sockets, nginx's
#: two per request and the servers' own (``--vus`` changes it).
DEFAULT_RAMP_VUS = 2_000
DEFAULT_CLIENTS, DEFAULT_BULK_CLIENTS = 2_000, 4  # bulk: concurrent batches, more only queue on 2 cores
MAX_BATCH = 1_000  # api.cast_votes answers 400 to a larger batch


@dataclass(frozen=True)
class LoadtestConfig:
    database_url: str  # authenticator through PgBouncer (what PostgREST logs in as)
    admin_url: str  # superuser, direct: setup and verification
    bouncer_admin_url: str | None = None  # PgBouncer's admin console (pool figures; its port finds the pid)
    voters: int = 50_000
    clients: int = DEFAULT_CLIENTS  # SQL path: pgbench clients (connections through PgBouncer)
    bulk: bool = False
    batch: int = 500  # at most this many ballots per cast_votes call
    http: HttpTarget | None = None  # vote over HTTP with k6 (burst, or the ramp); None: the SQL path
    vus: int | None = None  # HTTP: k6 VUs (default: the fewest the per-address burst allows; ramp: 2,000)
    ramp: bool = False
    ramp_time_scale: float = 0.25
    baseline: bool = True  # first the same transactions against the bare-insert reference (drain ratio)
    with_bulk: bool = False  # single-vote mode: also ingest the same number of ballots through the bulk path
    bulk_clients: int = DEFAULT_BULK_CLIENTS  # connections of the bulk path next to the burst (with_bulk)
    sample_interval: float = 0.25  # memory sampling period


def run_loadtest(cfg: LoadtestConfig, console: Console | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run what ``cfg`` asks for and return the report (scenarios, checks, environment)."""
    console = console or Console()
    started, load_before = time.time(), os.getloadavg()
    scenarios: list[dict[str, Any]] = []
    if cfg.http is not None:
        scenarios.append(run_ramp(cfg.http, cfg.vus or DEFAULT_RAMP_VUS, cfg.ramp_time_scale, console, quiet=quiet)
                         if cfg.ramp else run_burst(cfg.http, cfg.voters, cfg.vus, console, quiet=quiet))
    elif cfg.bulk:
        scenarios.append(run_bulk_scenario(cfg, console, quiet))
    else:
        if cfg.baseline:
            scenarios.append(run_bare(cfg, console, quiet))
            time.sleep(1)  # the servers finish the previous scenario's tail (autovacuum wakeups, closing clients)
        scenarios.append(run_single(cfg, console, quiet))
        if cfg.with_bulk:
            time.sleep(1)
            scenarios.append(run_bulk_scenario(replace(cfg, clients=cfg.bulk_clients), console, quiet))
    config = {k: v for k, v in cfg.__dict__.items() if k != "http"} | {"http_url": cfg.http.base_url if cfg.http else None}
    report: dict[str, Any] = {"started": started, "config": config, "scenarios": scenarios, "environment": {
        **environment(cfg), "load_average_before": load_before, "load_average_after": os.getloadavg()}}
    report["checks"] = checks(report)
    return report


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voters", type=int, default=50_000, help="distinct voters, one ballot each (default 50,000)")
    p.add_argument("--sql", action="store_true", help="the SQL path: pgbench sends PostgREST's statements through PgBouncer, "
                   "first against a bare-insert reference (the drain ratio); what a lost connection left unanswered is re-cast")
    p.add_argument("--clients", type=int, help=f"SQL path: pgbench clients, connected first and released together (default "
                   f"{DEFAULT_CLIENTS:,}; bulk: {DEFAULT_BULK_CLIENTS}); each casts the same number, so --voters is rounded up "
                   "to a multiple of them")
    p.add_argument("--bulk", action="store_true", help="SQL path: ingest through api.cast_votes as role ingest")
    p.add_argument("--batch", type=int, default=500,
                   help="at most this many ballots per cast_votes call (default 500), split evenly among the clients")
    p.add_argument("--http", metavar="URL", nargs="?", const="", help="the default: vote over HTTP with k6, POST "
                   "URL/rpc/cast_vote (default URL: the local stack's nginx), one source address per VU, production rate "
                   "limits on; the poll is created and verified through --admin-url, the database behind it")
    p.add_argument("--vus", type=int, help="HTTP: k6 VUs (default: the fewest that stay within the per-address "
                                           "burst, e.g. 2,500 for 50,000 voters; with --ramp: 2,000)")
    p.add_argument("--ramp", action="store_true", help="HTTP: the guide's k6 scenario (stages, thresholds), peak users --vus")
    p.add_argument("--ramp-time-scale", type=float, default=0.25, help="stage durations x this (default 0.25: 210 s become 52 s)")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare-insert reference burst")
    p.add_argument("--with-bulk", action="store_true", help="SQL path: then as many ballots by the bulk path (one report)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--chart", metavar="FILE.png", help="write throughput and latency over time (PNG)")
    p.add_argument("--database-url", help="authenticator through PgBouncer (default: the local stack's)")
    p.add_argument("--admin-url", help="superuser, direct, for setup and verification (default: the local stack's)")
    p.add_argument("--bouncer-admin-url", help="PgBouncer admin console (default: the local stack's)")
    p.add_argument("--quiet", action="store_true", help="no live progress")


def config_from_args(args: argparse.Namespace, stack: Any | None) -> LoadtestConfig:
    database_url = args.database_url or (stack.api_url if stack else None)
    admin_url = args.admin_url or (stack.admin_url if stack else None)
    bouncer_admin_url = args.bouncer_admin_url or (stack.bouncer_admin_url if stack else None)
    if not database_url or not admin_url:
        raise ValueError("give --database-url and --admin-url, or start the local stack (`pgvote up`)")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ValueError(f"--batch {args.batch}: cast_votes takes 1 to {MAX_BATCH:,} ballots a call")
    sql = args.sql or args.bulk or args.with_bulk
    if sql and (args.http is not None or args.ramp):
        raise ValueError("--http and --ramp are HTTP; --sql, --bulk and --with-bulk the SQL path: pick one")
    http = None
    if not sql:
        status = stack.status() if stack else {}
        base = args.http or status.get("urls", {}).get("http") or status.get("urls", {}).get("postgrest_url")
        if not base:
            raise ValueError("the HTTP load (the default) needs --http URL or a running local stack (`pgvote up`); "
                             "--sql runs the database path instead")
        # no stack: the servers behind the URLs, when they listen on this machine
        servers = server_ports(status) or local_ports(http=base, postgres=admin_url)
        http = HttpTarget(base.rstrip("/"), admin_url, servers, bouncer_admin_url)
    return LoadtestConfig(database_url=database_url, admin_url=admin_url, bouncer_admin_url=bouncer_admin_url,
                          voters=args.voters, bulk=args.bulk, batch=args.batch, http=http, vus=args.vus,
                          clients=args.clients or (DEFAULT_BULK_CLIENTS if args.bulk else DEFAULT_CLIENTS),
                          ramp=args.ramp, ramp_time_scale=args.ramp_time_scale, baseline=not args.no_baseline,
                          with_bulk=args.with_bulk)


def run(args: argparse.Namespace, stack: Any | None, console: Console) -> int:
    """Run, print the report, write the files; exit code 0 when every exactly-once check holds."""
    report = run_loadtest(config_from_args(args, stack), console, quiet=args.quiet)
    print_report(report, console)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"report written to {args.json}")
    if args.chart:
        write_chart(Path(args.chart), timeline_panels(report))
        console.print(f"chart written to {args.chart}")
    return 0 if all(s["verification"]["exactly_once"] for s in report["scenarios"]) else 1
