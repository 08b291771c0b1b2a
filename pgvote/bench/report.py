"""Present a benchmark run: terminal tables, JSON, the markdown section of docs/benchmarks.md, and a
PNG chart of votes/s against clients."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from pgvote import tables
from pgvote.bench.pgbench import pgbench_binary
from pgvote.bench.scenarios import Measured, Results

START, END = "<!-- pgvote bench: start -->", "<!-- pgvote bench: end -->"
RATIO_COLUMNS = ("ratio", "what", "value", "goal", "met")
SCENARIO_COLUMNS = ("scenario", "path", "clients", "votes/s", "p50 ms", "p95 ms", "p99 ms", "lock waits seen (samples)")


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    total = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    pgbench = subprocess.run([pgbench_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    bouncer = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpu": f"{os.cpu_count()} x {cpu}", "memory": f"{int(total[1]) / 1024 / 1024 if total else 0:.0f} GiB",
            "os": platform.platform(), "pgbench": pgbench, "pgbouncer": bouncer[0] if bouncer else "?",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def as_json(results: Results, server_version: str, command: str) -> dict[str, Any]:
    return {"machine": machine(), "server": server_version, "command": command,
            "seconds_per_run": results.seconds_per_run,
            "measured": {k: {**asdict(m), "figures": m.figures.as_dict()} for k, m in results.measured.items()},
            "ratios": [{**asdict(r), "met": r.met} for r in results.ratios],
            "reads_warm": results.reads_warm.figures.as_dict() if results.reads_warm else None,
            "reads_under_writes": results.reads_under_writes.figures.as_dict() if results.reads_under_writes else None,
            "locks_per_call": results.locks_per_call}


def ratio_rows(results: Results, no: str = "NO") -> list[tuple[str, ...]]:
    """The ratios, then the read latencies of the 1M-ballot poll (``no``: how a missed goal reads)."""
    rows: list[tuple[str, ...]] = [(r.name, r.description, f"{r.value:.2f}", r.goal_text, "yes" if r.met else no)
                                   for r in results.ratios]
    if results.reads_warm:
        p95 = results.reads_warm.figures.p95_ms
        rows.append(("reads", "poll_results p95 on the 1,000,000-ballot poll, warm, no other load", f"{p95:.2f} ms",
                     "<= 5 ms", "yes" if p95 <= 5 else no))
    if results.reads_under_writes:
        rows.append(("R5", "poll_results p95 on the 1,000,000-ballot poll while 64 clients vote on it (2 cores "
                     "saturated by the writers and pgbench)", f"{results.reads_under_writes.figures.p95_ms:.2f} ms",
                     "reported", ""))
    return rows


def scenario_rows(results: Results, label: bool = False) -> list[tuple[str, ...]]:
    """Every measured scenario, then the reads (``label``: the description with the name, for the docs)."""
    def waits(m: Measured) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(m.lock_waits.items())) or "none"

    rows: list[tuple[str, ...]] = [
        (f"{m.description} (`{m.name}`)" if label else m.name, m.path, str(m.clients), f"{m.figures.per_second:,.0f}",
         f"{m.figures.p50_ms:.1f}", f"{m.figures.p95_ms:.1f}", f"{m.figures.p99_ms:.1f}", waits(m))
        for m in results.measured.values()]
    for reads in (results.reads_warm, results.reads_under_writes):
        if reads:
            f = reads.figures
            rows.append((reads.description, reads.path, str(reads.clients), f"{f.per_second:,.0f} reads/s",
                         f"{f.p50_ms:.2f}", f"{f.p95_ms:.2f}", f"{f.p99_ms:.2f}", ""))
    return rows


def print_tables(results: Results, console: Console) -> None:
    console.print(tables.table("Scenarios (same run)", SCENARIO_COLUMNS, scenario_rows(results), range(2, 7)))
    console.print(tables.table("Ratios", RATIO_COLUMNS, ratio_rows(results)))


def markdown(results: Results, server_version: str, command: str) -> str:
    mach = machine()
    lines = [START, "## Throughput (`pgvote bench`)", "",
             f"Machine: {mach['cpu']}, {mach['memory']}, {mach['os']}; {server_version}; {mach['pgbouncer']}; "
             f"{mach['pgbench']}. Run {mach['date']}, {results.seconds_per_run:g} s per scenario, "
             f"the load generator (pgbench) on the same 2 cores.", "", f"Command: `{command}`", "",
             *tables.markdown(RATIO_COLUMNS, ratio_rows(results, "**no**"), (2, 3)), "",
             *tables.markdown(SCENARIO_COLUMNS, scenario_rows(results, label=True), range(2, 7)),
             "", "Locks held at the end of one call (one transaction, rolled back):", ""]
    for call, locks in results.locks_per_call.items():
        relations = sorted({rel for kind, rel, _ in locks if kind == "relation"})
        lines.append(f"- {call}: {len(locks)} locks — " + "; ".join(f"{k} {r} {m}".replace("  ", " ") for k, r, m in locks))
        lines.append(f"  (relations: {', '.join(relations)})")
    return "\n".join([*lines, "", "![votes/s against clients](benchmarks.png)", "", END])


def write_chart(results: Results, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("charts need matplotlib: pip install 'pgvote[chart]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"bare_insert": "bare INSERT (direct, prepared)", "cast_vote_hot": "cast_vote (direct, prepared)",
              "postgrest": "cast_vote as PostgREST sends it (PgBouncer, extended)"}
    series: dict[str, list[tuple[int, float]]] = {}
    for m in results.measured.values():
        family = re.sub(r"_\d+$", "", m.name)
        if family in labels:
            series.setdefault(labels[family], []).append((m.clients, m.figures.per_second))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        points.sort()
        ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set(xscale="log", xlabel="concurrent clients", ylabel="votes/s (one transaction per vote)",
           title="pgvote: votes/s against clients, one hot poll (same run)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: Results, server_version: str, command: str, path: Path) -> None:
    path.write_text(json.dumps(as_json(results, server_version, command), indent=2, default=str))
