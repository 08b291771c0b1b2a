"""`pgvote demo`: the main job on the local stack, over its real interface.

The 50,000-vote spike: the k6 burst of `pgvote loadtest` (distinct anonymous voters on one poll, every
VU from its own loopback address, production rate limits on) through nginx -> PostgREST -> PgBouncer,
verified exactly once against the stored ballots, with its report; then the bulk path (`cast_votes` as
the ingest role) for the same number of ballots; last, the spike poll's results as a client reads them.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console

from pgvote import tables
from pgvote.http import ApiClient
from pgvote.loadtest import LoadtestConfig, run_loadtest
from pgvote.loadtest.k6 import HttpTarget
from pgvote.loadtest.report import print_report
from pgvote.stack import LocalStack


def print_results(stack: LocalStack, poll_id: str, console: Console) -> None:
    results = ApiClient(stack.http_url).rpc("poll_results", {"poll_id": poll_id}, method="GET").body
    console.print(tables.table(f"GET {stack.http_url}/rpc/poll_results?poll_id={poll_id}", ("option", "votes"),
                               [(o["label"], f"{o['votes']:,}") for o in results["options"]], (1,)))
    console.print(f"total_ballots: {results['total_ballots']:,}")


def run_spike(stack: LocalStack, voters: int, console: Console) -> dict[str, Any]:
    """The k6 burst over HTTP (`pgvote loadtest`), then the bulk path; raises when a vote was lost or doubled."""
    reports: dict[str, dict[str, Any]] = {}
    for name, title, extra in (
            ("http", f"The {voters:,}-vote spike over HTTP: k6 through nginx, {voters:,} distinct voters on one poll",
             {"http": HttpTarget.for_stack(stack)}),
            ("bulk", f"The bulk path: {voters:,} ballots through cast_votes (role ingest, batches of 500)",
             {"clients": 4, "bulk": True})):
        console.rule(title)
        reports[name] = run_loadtest(LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                                                    bouncer_admin_url=stack.bouncer_admin_url, voters=voters,
                                                    baseline=False, **extra), console)
        print_report(reports[name], console)
    if not all(s["verification"]["exactly_once"] for r in reports.values() for s in r["scenarios"]):
        raise RuntimeError("the spike lost or duplicated votes: see the report above")
    return reports
