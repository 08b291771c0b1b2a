"""`pgvote demo`: create a poll, cast a few thousand ballots from distinct voters through
PgBouncer exactly as PostgREST would, then print the results next to the stored truth.
Then the 50,000-vote spike (:func:`run_spike`): the `pgvote loadtest` burst with its default
settings, its bare-insert reference and the bulk path, verified exactly once, with its report."""
from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pgvote.postgrest_emulation import connect_emulator

OPTIONS = ["PostgreSQL", "PgBouncer", "PostgREST", "psycopg"]


@dataclass(frozen=True)
class DemoReport:
    poll_id: str
    accepted: int
    rejected: int
    seconds: float
    results: dict


def run_demo(api_url: str, admin_url: str, voters: int = 3000, connections: int = 32,
             console: Console | None = None) -> DemoReport:
    console = console or Console()
    creator = connect_emulator(api_url)
    created = creator.rpc("create_poll", {"question": "Which part of the stack do you trust most?",
                                          "options": OPTIONS, "max_choices": 2},
                          claims={"role": "authenticated", "sub": f"demo-creator-{uuid.uuid4()}"})
    if created.status != 200:
        raise RuntimeError(f"create_poll failed: {created.status} {created.body}")
    poll_id, option_ids = created.body["poll_id"], created.body["option_ids"]
    console.print(f"Created poll [bold]{poll_id}[/] with {len(OPTIONS)} options; "
                  f"casting {voters:,} ballots from {connections} connections through PgBouncer...")

    def cast_share(worker: int) -> tuple[int, int]:
        api = connect_emulator(api_url)
        rng = random.Random(worker)
        accepted = rejected = 0
        try:
            for n in range(worker, voters, connections):
                choice = rng.sample(option_ids, rng.choice([1, 1, 2]))
                claims = None if n % 2 else {"role": "authenticated", "sub": f"demo-voter-{poll_id}-{n}"}
                body = {"poll_id": poll_id, "option_ids": choice}
                if claims is None:
                    body["voter_fingerprint"] = f"demo-device-{n}"
                r = api.rpc("cast_vote", body, claims=claims)
                accepted, rejected = (accepted + 1, rejected) if r.status == 200 else (accepted, rejected + 1)
                progress.advance(task)
        finally:
            api.conn.close()
        return accepted, rejected

    started = time.perf_counter()
    with Progress(TextColumn("votes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("votes", total=voters)
        with ThreadPoolExecutor(max_workers=connections) as pool:
            outcomes = [f.result() for f in as_completed([pool.submit(cast_share, w) for w in range(connections)])]
    seconds = time.perf_counter() - started
    accepted, rejected = sum(a for a, _ in outcomes), sum(r for _, r in outcomes)

    results = creator.rpc("poll_results", {"poll_id": poll_id}, method="GET").body
    creator.conn.close()
    with psycopg.connect(admin_url) as admin:
        stored = admin.execute("select count(*) from voting.ballots where poll_id = %s", (poll_id,)).fetchone()[0]

    table = Table(title=f"Results of {poll_id}")
    table.add_column("option")
    table.add_column("votes", justify="right")
    for option in results["options"]:
        table.add_row(option["label"], f"{option['votes']:,}")
    console.print(table)
    console.print(f"accepted {accepted:,}, rejected {rejected:,} in {seconds:.1f} s "
                  f"({accepted / seconds:,.0f} votes/s, one transaction per vote, {connections} connections); "
                  f"ballots stored: {stored:,}; results total_ballots: {results['total_ballots']:,}")
    if not (stored == accepted == results["total_ballots"]):
        raise RuntimeError("stored ballots, accepted calls and poll_results disagree")
    return DemoReport(poll_id, accepted, rejected, seconds, results)


#: Voters of the demo's bare-insert reference burst: its drain rate is a steady rate, as well measured by
#: 10,000 voters as by 50,000 (same clients, same path), and the shorter burst keeps `make demo` short.
DEMO_BASELINE_VOTERS = 10_000


def run_spike(api_url: str, admin_url: str, bouncer_admin_url: str | None, voters: int = 50_000,
              clients: int = 2_000, console: Console | None = None) -> dict:
    """`pgvote loadtest --with-bulk --baseline-voters 10000`: the bare-insert reference, the single-vote
    burst with default settings, the bulk path; prints the report (docs/benchmarks.md, "50,000-vote spike")."""
    from pgvote.loadtest import LoadtestConfig, run_loadtest
    from pgvote.loadtest.report import print_report

    console = console or Console()
    console.rule(f"The {voters:,}-vote spike: {voters:,} distinct voters on one poll, {clients:,} connections")
    cfg = LoadtestConfig(database_url=api_url, admin_url=admin_url, bouncer_admin_url=bouncer_admin_url,
                         voters=voters, clients=clients, with_bulk=True,
                         baseline_voters=min(voters, DEMO_BASELINE_VOTERS))
    report = run_loadtest(cfg, console)
    print_report(report, console)
    if "drain_ratio" in report:
        console.print(f"single-vote drain rate = {report['drain_ratio']:.2f} x the bare-insert rate of the same run")
    if not all(s["verification"]["exactly_once"] for s in report["scenarios"]):
        raise RuntimeError("the spike lost or duplicated votes: see the report above")
    return report
