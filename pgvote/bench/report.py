"""``pgvote bench [--quick]`` (``run_bench``: every scenario in one invocation, then the report), and how
every ``pgvote bench`` mode presents its run: terminal tables, JSON, the
command's markdown section of docs/benchmarks.md (``run_mode``), the alternating A/B rounds behind the
same-run ratios (``alternate``), and the PNG chart of votes/s against clients."""
from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from rich.console import Console

from pgvote import tables
from pgvote.bench.scenarios import HOT_POLL_BALLOTS, SPREAD_POLLS, Measured, Results, bench_database, run_all
from pgvote.loadtest.report import machine
from pgvote.loadtest.report import write_chart as chart
from pgvote.paths import PROJECT_ROOT

T = TypeVar("T")
#: One table of a report: title, columns, rows, the indexes of right-aligned columns.
Table = tuple[str, Sequence[str], Sequence[Sequence[str]], Sequence[int]]
RATIO_COLUMNS = ("ratio", "what", "value", "goal", "met")
SCENARIO_COLUMNS = ("scenario", "path", "clients", "votes/s", "p50 ms", "p95 ms", "p99 ms", "lock waits seen (samples)")

#: ``pgvote bench --<mode>``: the module whose ``bench(stack, args, ...)`` runs it, and the stack it needs (module,
#: class, how to start it)
BENCH_MODES: dict[str, tuple[str, tuple[str, str, str] | None]] = {
    "http": ("pgvote.bench.http_bench", None),
    "router": ("pgvote.bench.router", ("pgvote.shards", "ShardedStack", "a sharded stack: `pgvote up --shards N` first")),
    "ha": ("pgvote.bench.ha_bench", ("pgvote.ha", "HaStack", "the HA stack: start it with `pgvote up --ha`")),
    "live": ("pgvote.bench.live", None),
}


def stamp(console: Console) -> Callable[[str], None]:
    """A progress printer: each message after the seconds since the run started."""
    started = time.monotonic()
    return lambda message: console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {message}")


def alternate(rounds: int, sides: dict[str, Callable[[], T]]) -> dict[str, list[T]]:
    """``rounds`` of every side in turn (A, B, A, B ...): the other work of a shared machine weighs on each
    side alike, so the ratio of their medians holds where their absolute figures drift."""
    out: dict[str, list[T]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, measure in sides.items():
            out[side].append(measure())
    return out


def median_ratio(values: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return round(statistics.median(values[numerator]) / statistics.median(values[denominator]), 3)


@dataclass(frozen=True)
class Section:
    """What a benchmark run shows: its tables, where and how it ran (after its command line, from its own
    separator: "; sizes ...", " on the HA stack ..."), its ``## ...`` heading if any, lines after the tables."""

    tables: Sequence[Table]
    setting: str
    heading: str = ""
    more: Sequence[str] = ()


def command_line(mode: str, args: Any, options: Sequence[str]) -> str:
    """``pgvote bench --<mode>`` with the ``options`` that change what it measures, as given."""
    given = [f"--{o} {v:g}" if isinstance(v, float) else f"--{o} {v}" for o in options
             if (v := getattr(args, o, None)) not in (None, False, True)]
    return " ".join(["pgvote bench", f"--{mode}", *given, *(["--quick"] if getattr(args, "quick", False) else [])])


def run_mode(name: str, measure: Callable[[], tuple[dict[str, Any], Section]], *, command: str,
             report_path: Path | None, json_path: Path | None, console: Console) -> dict[str, Any]:
    """The one shape of every benchmark (``pgvote bench`` and its modes, the partition benchmark): ``measure()``
    (its figures and their section); the machine, the command, the date and the 1-minute load average before
    and after it added to the figures; the tables printed, the figures written as JSON to ``json_path`` and, to
    ``report_path``, the section ``pgvote <name>`` (between its markers ``<!-- pgvote <name>: start/end -->``)."""
    before = os.getloadavg()[0]
    result, s = measure()
    load = result["load_average"] = [round(before, 1), round(os.getloadavg()[0], 1)]
    m = result.setdefault("machine", machine())
    result |= {"command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    for title, columns, rows, right in s.tables:
        console.print(tables.table(title, columns, rows, right))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"JSON: {json_path}")
    if report_path:
        start, end = f"<!-- pgvote {name}: start -->", f"<!-- pgvote {name}: end -->"
        lines = [start, *([s.heading, ""] if s.heading else []),
                 f"Command: `{command}`, {result['date']}, {m['cpu']}, {m['memory']}{s.setting}; "
                 f"1-minute load average {load[0]} at the start, {load[1]} at the end."]
        for title, columns, rows, right in s.tables:
            lines += ["", *([f"{title}:", ""] if len(s.tables) > 1 else []), *tables.markdown(columns, rows, right)]
        tables.write_section(report_path, "\n".join([*lines, *s.more, "", end]), start, end)
        console.print(f"report: {report_path}")
    return result


def as_json(results: Results, server_version: str) -> dict[str, Any]:
    return {"machine": machine(), "server": server_version,
            "seconds_per_run": results.seconds_per_run,
            "measured": {k: asdict(m) for k, m in results.measured.items()},
            "ratios": [{**asdict(r), "met": r.met} for r in results.ratios],
            **{k: asdict(m.figures) if m else None for k, m in (("reads_warm", results.reads_warm),
                                                                 ("reads_under_writes", results.reads_under_writes))},
            "locks_per_call": results.locks_per_call}


def ratio_rows(results: Results) -> list[tuple[str, ...]]:
    """The ratios, then the read latencies of the 1M-ballot poll."""
    rows: list[tuple[str, ...]] = [(r.name, r.description, f"{r.value:.2f}", r.goal_text, tables.yes(r.met))
                                   for r in results.ratios]
    if results.reads_warm:
        p95 = results.reads_warm.figures.p95_ms
        rows.append(("reads", "poll_results p95 on the 1,000,000-ballot poll, warm, no other load", f"{p95:.2f} ms",
                     "<= 5 ms", tables.yes(p95 <= 5)))
    if results.reads_under_writes:
        rows.append(("R5", "poll_results p95 on the 1,000,000-ballot poll while 64 clients vote on it (2 cores "
                     "saturated by the writers and pgbench)", f"{results.reads_under_writes.figures.p95_ms:.2f} ms",
                     "reported", ""))
    return rows


def scenario_rows(results: Results) -> list[tuple[str, ...]]:
    """Every measured scenario, then the reads."""
    def waits(m: Measured) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(m.lock_waits.items())) or "none"

    rows: list[tuple[str, ...]] = [
        (f"{m.description} (`{m.name}`)", m.path, str(m.clients), f"{m.figures.per_second:,.0f}",
         f"{m.figures.p50_ms:.1f}", f"{m.figures.p95_ms:.1f}", f"{m.figures.p99_ms:.1f}", waits(m))
        for m in results.measured.values()]
    for reads in (results.reads_warm, results.reads_under_writes):
        if reads:
            f = reads.figures
            rows.append((reads.description, reads.path, str(reads.clients), f"{f.per_second:,.0f} reads/s",
                         f"{f.p50_ms:.2f}", f"{f.p95_ms:.2f}", f"{f.p99_ms:.2f}", ""))
    return rows


def write_chart(results: Results, path: Path) -> None:
    """votes/s against clients of each scenario family swept."""
    labels = {"bare_insert": "bare INSERT (direct, prepared)", "cast_vote_hot": "cast_vote (direct, prepared)",
              "postgrest": "cast_vote as PostgREST sends it (PgBouncer, extended)"}
    points: dict[str, list[tuple[int, float]]] = {}
    for m in results.measured.values():
        if (family := re.sub(r"_\d+$", "", m.name)) in labels:
            points.setdefault(labels[family], []).append((m.clients, m.figures.per_second))
    series = {label: ([float(c) for c, _ in sorted(p)], [v for _, v in sorted(p)]) for label, p in points.items()}
    chart(path, [("pgvote: votes/s against clients, one hot poll (same run)", "concurrent clients", True,
                  "votes/s (one transaction per vote)", series, "", {})])


QUICK_SECONDS, FULL_SECONDS = 3.0, 15.0


def run_bench(admin_url: str, bouncer_url: str, *, quick: bool, seconds: float | None, json_path: Path | None,
              chart_path: Path | None, report_path: Path | None, command: str, console: Console) -> Results:
    per_run, progress = seconds or (QUICK_SECONDS if quick else FULL_SECONDS), stamp(console)
    done: list[Results] = []  # what measure() ran, for the chart

    def measure() -> tuple[dict[str, Any], Section]:
        with psycopg.connect(admin_url) as conn:
            server = str(conn.execute("select version()").fetchone()[0]).split(" on ")[0]  # type: ignore[index]
        with bench_database(admin_url, bouncer_url, HOT_POLL_BALLOTS, SPREAD_POLLS, progress) as db:
            results = run_all(db, per_run, progress, quick=quick)
        progress("done; the bench database is dropped")
        done.append(results)
        m = machine()  # the tools' versions in the setting too: the ratios depend on them
        locks = ["", "Locks held at the end of one call (one transaction, rolled back):", ""]
        for call, held in results.locks_per_call.items():
            relations = sorted({rel for kind, rel, _ in held if kind == "relation"})
            locks += [f"- {call}: {len(held)} locks — " + "; ".join(f"{k} {r} {mode}".replace("  ", " ")
                                                                 for k, r, mode in held),
                      f"  (relations: {', '.join(relations)})"]
        return as_json(results, server), Section(
            [("Ratios", RATIO_COLUMNS, ratio_rows(results), (2, 3)),
             ("Scenarios (same run)", SCENARIO_COLUMNS, scenario_rows(results), range(2, 7))],
            f", {m['os']}; {server}; {m['pgbouncer']}; {m['pgbench']}; "
            f"{results.seconds_per_run:g} s per scenario, the load generator (pgbench) on the same 2 cores",
            "## Throughput (`pgvote bench`)", [*locks, "", "![votes/s against clients](benchmarks.png)"])

    run_mode("bench", measure, command=command, report_path=report_path, json_path=json_path, console=console)
    if chart_path:
        write_chart(done[0], chart_path)
        console.print(f"chart: {chart_path}")
    return done[0]


DEFAULT_REPORT = PROJECT_ROOT / "docs" / "benchmarks.md"
DEFAULT_CHART = PROJECT_ROOT / "docs" / "benchmarks.png"
