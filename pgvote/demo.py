"""`pgvote demo`: the main job on the local stack, over its real interface.

The 50,000-vote spike: the k6 burst of `pgvote loadtest` (distinct anonymous voters on one poll, every
VU from its own loopback address, production rate limits on) through nginx -> PostgREST -> PgBouncer,
verified exactly once against the stored ballots, with its report; then the bulk path (`cast_votes` as
the ingest role) for the same number of ballots; last, the spike poll's results as a client reads them.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pgvote.http import ApiClient
from pgvote.stack import LocalStack


def print_results(stack: LocalStack, poll_id: str, console: Console) -> None:
    results = ApiClient(stack.http_url).rpc("poll_results", {"poll_id": poll_id}, method="GET").body
    table = Table(title=f"GET {stack.http_url}/rpc/poll_results?poll_id={poll_id}")
    table.add_column("option")
    table.add_column("votes", justify="right")
    for option in results["options"]:
        table.add_row(option["label"], f"{option['votes']:,}")
    console.print(table)
    console.print(f"total_ballots: {results['total_ballots']:,}")


def run_spike(stack: LocalStack, voters: int = 50_000, console: Console | None = None) -> dict[str, Any]:
    """The k6 burst over HTTP (`pgvote loadtest`), then the bulk path; raises when a vote was lost or doubled."""
    from pgvote.loadtest import LoadtestConfig, run_loadtest
    from pgvote.loadtest.k6 import HttpTarget
    from pgvote.loadtest.report import print_report

    console = console or Console()
    reports = []
    console.rule(f"The {voters:,}-vote spike over HTTP: k6 through nginx, {voters:,} distinct voters on one poll")
    http = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                          bouncer_admin_url=stack.bouncer_admin_url, voters=voters,
                          http=HttpTarget.for_stack(stack), baseline=False)
    reports.append(run_loadtest(http, console))
    print_report(reports[-1], console)
    console.rule(f"The bulk path: {voters:,} ballots through cast_votes (role ingest, batches of 500)")
    bulk = LoadtestConfig(database_url=stack.api_url, admin_url=stack.admin_url,
                          bouncer_admin_url=stack.bouncer_admin_url, voters=voters, clients=4, bulk=True,
                          baseline=False)
    reports.append(run_loadtest(bulk, console))
    print_report(reports[-1], console)
    if not all(s["verification"]["exactly_once"] for r in reports for s in r["scenarios"]):
        raise RuntimeError("the spike lost or duplicated votes: see the report above")
    return {"http": reports[0], "bulk": reports[1]}
