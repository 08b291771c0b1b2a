"""Present a benchmark run: a terminal table, JSON, the markdown section of
docs/benchmarks.md, and a PNG chart of votes/s against clients."""
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
from rich.table import Table

from pgvote.bench.pgbench import pgbench_binary
from pgvote.bench.scenarios import Measured, Results

START, END = "<!-- pgvote bench: start -->", "<!-- pgvote bench: end -->"


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    total = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    memory_kb = int(total.group(1)) if total else 0
    pgbench = subprocess.run([pgbench_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    bouncer = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpu": f"{os.cpu_count()} x {cpu}", "memory": f"{memory_kb / 1024 / 1024:.0f} GiB",
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


def print_tables(results: Results, console: Console) -> None:
    table = Table(title="Scenarios (same run)")
    for column in ("scenario", "path", "clients", "votes/s", "p50 ms", "p95 ms", "p99 ms", "lock waits seen"):
        table.add_column(column, justify="right" if column not in ("scenario", "path", "lock waits seen") else "left")
    for m in results.measured.values():
        f = m.figures
        table.add_row(m.name, m.path, str(m.clients), f"{f.per_second:,.0f}", f"{f.p50_ms:.1f}", f"{f.p95_ms:.1f}",
                      f"{f.p99_ms:.1f}", _waits(m))
    console.print(table)
    ratios = Table(title="Ratios")
    for column in ("ratio", "what", "value", "goal", "met"):
        ratios.add_column(column)
    for r in results.ratios:
        ratios.add_row(r.name, r.description, f"{r.value:.2f}", r.goal_text, "yes" if r.met else "NO")
    if results.reads_warm:
        f = results.reads_warm.figures
        ratios.add_row("reads", "poll_results p95 on the 1M-ballot poll, warm", f"{f.p95_ms:.2f} ms",
                       "<= 5 ms", "yes" if f.p95_ms <= 5 else "NO")
    if results.reads_under_writes:
        f = results.reads_under_writes.figures
        ratios.add_row("R5", "poll_results p95 on the 1M-ballot poll under hot-poll writes", f"{f.p95_ms:.2f} ms",
                       "(reported)", "")
    console.print(ratios)


def _waits(m: Measured) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(m.lock_waits.items())) or "none"


def markdown(results: Results, server_version: str, command: str) -> str:
    mach = machine()
    lines = [START, "## Throughput (`pgvote bench`)", "",
             f"Machine: {mach['cpu']}, {mach['memory']}, {mach['os']}; {server_version}; {mach['pgbouncer']}; "
             f"{mach['pgbench']}. Run {mach['date']}, {results.seconds_per_run:g} s per scenario, "
             f"the load generator (pgbench) on the same 2 cores.", "", f"Command: `{command}`", "",
             "| ratio | what | value | goal | met |", "|---|---|---:|---:|---|"]
    for r in results.ratios:
        lines.append(f"| {r.name} | {r.description} | {r.value:.2f} | {r.goal_text} | {'yes' if r.met else '**no**'} |")
    if results.reads_warm:
        f = results.reads_warm.figures
        lines.append(f"| reads | poll_results p95 on the 1,000,000-ballot poll, warm, no other load "
                     f"| {f.p95_ms:.2f} ms | <= 5 ms | {'yes' if f.p95_ms <= 5 else '**no**'} |")
    if results.reads_under_writes:
        f = results.reads_under_writes.figures
        lines.append(f"| R5 | poll_results p95 on the 1,000,000-ballot poll while 64 clients vote on it "
                     f"(2 cores saturated by the writers and pgbench) | {f.p95_ms:.2f} ms | reported | |")
    lines += ["", "| scenario | path | clients | votes/s | p50 ms | p95 ms | p99 ms | lock waits seen (samples) |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for m in results.measured.values():
        f = m.figures
        lines.append(f"| {m.description} (`{m.name}`) | {m.path} | {m.clients} | {f.per_second:,.0f} | {f.p50_ms:.1f} "
                     f"| {f.p95_ms:.1f} | {f.p99_ms:.1f} | {_waits(m)} |")
    for reads in (results.reads_warm, results.reads_under_writes):
        if reads:
            f = reads.figures
            lines.append(f"| {reads.description} | direct, prepared | 4 | {f.per_second:,.0f} reads/s "
                         f"| {f.p50_ms:.2f} | {f.p95_ms:.2f} | {f.p99_ms:.2f} | |")
    lines += ["", "Locks held at the end of one call (one transaction, rolled back):", ""]
    for call, locks in results.locks_per_call.items():
        relations = sorted({rel for kind, rel, _ in locks if kind == "relation"})
        lines.append(f"- {call}: {len(locks)} locks — " + "; ".join(f"{k} {r} {m}".replace("  ", " ") for k, r, m in locks))
        lines.append(f"  (relations: {', '.join(relations)})")
    lines += ["", "![votes/s against clients](benchmarks.png)", "", END]
    return "\n".join(lines)


def write_markdown(path: Path, section: str, start: str = START, end: str = END) -> None:
    """Replace the section between ``start`` and ``end`` (a command's own), keeping every other section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def write_chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for m in results.measured.values():
        family = re.sub(r"_\d+$", "", m.name)
        if family in ("bare_insert", "cast_vote_hot", "postgrest"):
            label = {"bare_insert": "bare INSERT (direct, prepared)", "cast_vote_hot": "cast_vote (direct, prepared)",
                     "postgrest": "cast_vote as PostgREST sends it (PgBouncer, extended)"}[family]
            series.setdefault(label, []).append((m.clients, m.figures.per_second))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        points.sort()
        ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("votes/s (one transaction per vote)")
    ax.set_title("pgvote: votes/s against clients, one hot poll (same run)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(results: Results, server_version: str, command: str, path: Path) -> None:
    path.write_text(json.dumps(as_json(results, server_version, command), indent=2, default=str))
