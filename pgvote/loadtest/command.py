"""The ``pgvote loadtest`` command line: options, defaults from the local stack, output files.

Over HTTP by default (k6 through the stack's nginx: the product's real interface); ``--sql`` (and
``--bulk`` / ``--with-bulk``, which are SQL-level) selects the database path: pgbench through PgBouncer.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from pgvote.loadtest import LoadtestConfig, run_loadtest
from pgvote.loadtest.k6 import HttpTarget, server_ports
from pgvote.loadtest.report import print_report, timeline_panels, write_chart, write_json

DEFAULT_CLIENTS = 2_000
DEFAULT_BULK_CLIENTS = 4  # concurrent batches: more only queue on 2 cores
MAX_BATCH = 1_000  # api.cast_votes answers 400 to a larger batch


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voters", type=int, default=50_000, help="distinct voters, one ballot each (default 50,000)")
    p.add_argument("--sql", action="store_true",
                   help="the SQL path: pgbench sends PostgREST's statements through PgBouncer, first against a "
                        "bare-insert reference (the drain ratio); what a lost connection left unanswered is re-cast")
    p.add_argument("--clients", type=int, default=None,
                   help=f"SQL path: pgbench clients, connected first and released together (default "
                        f"{DEFAULT_CLIENTS:,}; bulk: {DEFAULT_BULK_CLIENTS}); each casts the same number, so "
                        "--voters is rounded up to a multiple of them")
    p.add_argument("--bulk", action="store_true", help="SQL path: ingest through api.cast_votes as role ingest")
    p.add_argument("--batch", type=int, default=500,
                   help="at most this many ballots per cast_votes call (default 500); the batches are split "
                        "evenly so that every client sends as many")
    p.add_argument("--http", metavar="URL", nargs="?", const="",
                   help="the default: vote over HTTP with k6, POST URL/rpc/cast_vote (default URL: the local stack's "
                        "nginx), one source address per VU, production rate limits on; the poll is created and "
                        "verified through --admin-url, the database behind it")
    p.add_argument("--vus", type=int,
                   help="HTTP: k6 VUs (default: the fewest that stay within the per-address burst, e.g. 2,500 "
                        "for 50,000 voters; with --ramp: 2,000, the guide's 50,000 / 25)")
    p.add_argument("--ramp", action="store_true",
                   help="HTTP: the guide's k6 scenario (its stages and thresholds), peak users --vus")
    p.add_argument("--ramp-time-scale", type=float, default=0.25,
                   help="stage durations x this (default 0.25: 210 s of stages become 52 s)")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare-insert reference burst")
    p.add_argument("--with-bulk", action="store_true",
                   help="SQL path: after the burst, ingest as many ballots through the bulk path (one report)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--chart", metavar="FILE.png", help="write throughput and latency over time (PNG)")
    p.add_argument("--database-url", help="authenticator through PgBouncer (default: the local stack's)")
    p.add_argument("--admin-url", help="superuser, direct, for setup and verification (default: the local stack's)")
    p.add_argument("--bouncer-admin-url", help="PgBouncer admin console (default: the local stack's)")
    p.add_argument("--quiet", action="store_true", help="no live progress")


def http_target(args: argparse.Namespace, stack: Any | None, admin_url: str,
                bouncer_admin_url: str | None) -> HttpTarget:
    status = stack.status() if stack else {}
    urls = status.get("urls", {})
    base = args.http or urls.get("http") or urls.get("postgrest_url")
    if not base:
        raise ValueError("the HTTP load (the default) needs --http URL or a running local stack (`pgvote up`); "
                         "--sql runs the database path instead")
    servers = server_ports(status)
    if not servers:  # no stack: the servers behind the URLs, when they listen on this machine
        for name, url in (("http", base), ("postgres", admin_url)):
            parts = urlsplit(url)
            if parts.hostname in ("127.0.0.1", "localhost") and parts.port:
                servers[name] = parts.port
    return HttpTarget(base.rstrip("/"), admin_url, servers, bouncer_admin_url)


def config_from_args(args: argparse.Namespace, stack: Any | None) -> LoadtestConfig:
    urls = {"database_url": args.database_url or (stack.api_url if stack else None),
            "admin_url": args.admin_url or (stack.admin_url if stack else None),
            "bouncer_admin_url": args.bouncer_admin_url or (stack.bouncer_admin_url if stack else None)}
    if not urls["database_url"] or not urls["admin_url"]:
        raise ValueError("give --database-url and --admin-url, or start the local stack (`pgvote up`)")
    clients = args.clients if args.clients is not None else (DEFAULT_BULK_CLIENTS if args.bulk else DEFAULT_CLIENTS)
    if not 1 <= args.batch <= MAX_BATCH:
        raise ValueError(f"--batch {args.batch}: cast_votes takes 1 to {MAX_BATCH:,} ballots a call")
    sql = args.sql or args.bulk or args.with_bulk
    if sql and (args.http is not None or args.ramp):
        raise ValueError("--http and --ramp are HTTP; --sql, --bulk and --with-bulk the SQL path: pick one")
    http = None if sql else http_target(args, stack, urls["admin_url"], urls["bouncer_admin_url"])
    return LoadtestConfig(database_url=urls["database_url"], admin_url=urls["admin_url"],
                          bouncer_admin_url=urls["bouncer_admin_url"], voters=args.voters, clients=clients,
                          bulk=args.bulk, batch=args.batch, http=http, vus=args.vus, ramp=args.ramp,
                          ramp_time_scale=args.ramp_time_scale, baseline=not args.no_baseline,
                          with_bulk=args.with_bulk)


def run(args: argparse.Namespace, stack: Any | None, console: Console) -> int:
    """Run, print the report, write the files; exit code 0 when every exactly-once check holds."""
    cfg = config_from_args(args, stack)
    report = run_loadtest(cfg, console, quiet=args.quiet)
    print_report(report, console)
    if args.json:
        write_json(report, Path(args.json))
        console.print(f"report written to {args.json}")
    if args.chart:
        write_chart(Path(args.chart), timeline_panels(report))
        console.print(f"chart written to {args.chart}")
    return 0 if all(s["verification"]["exactly_once"] for s in report["scenarios"]) else 1
