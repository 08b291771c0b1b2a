"""`pgvote bench [--quick]`: every scenario in one invocation, then the report."""
from __future__ import annotations

from pathlib import Path

import psycopg
from rich.console import Console

from pgvote.bench import report
from pgvote.bench.fixtures import HOT_POLL_BALLOTS, SPREAD_POLLS, bench_database
from pgvote.bench.scenarios import Results, run_all
from pgvote.paths import PROJECT_ROOT

QUICK_SECONDS, FULL_SECONDS = 3.0, 15.0


def run_bench(admin_url: str, bouncer_url: str, *, quick: bool, seconds: float | None, json_path: Path | None,
              chart_path: Path | None, report_path: Path | None, command: str, console: Console) -> Results:
    per_run, progress = seconds or (QUICK_SECONDS if quick else FULL_SECONDS), report.stamp(console)

    with psycopg.connect(admin_url) as conn:
        version = conn.execute("select version()").fetchone()
        server_version = str(version[0] if version else "?").split(" on ")[0]
    with bench_database(admin_url, bouncer_url, HOT_POLL_BALLOTS, SPREAD_POLLS, progress) as db:
        results = run_all(db, per_run, progress, quick=quick)
    progress("done; the bench database is dropped")

    report.publish_bench(results, server_version, command, report_path=report_path, json_path=json_path,
                         console=console)
    if chart_path:
        report.write_chart(results, chart_path)
        console.print(f"chart: {chart_path}")
    return results


DEFAULT_REPORT = PROJECT_ROOT / "docs" / "benchmarks.md"
DEFAULT_CHART = PROJECT_ROOT / "docs" / "benchmarks.png"
