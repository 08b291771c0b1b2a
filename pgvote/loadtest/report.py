"""The figures and report of a run: per-voter records (k6's or pgbench's) into outcomes, rates, latency
percentiles and a timeline; the live progress of k6; pass/fail against the targets; a table per
scenario, JSON, and the PNG chart (the ``chart`` extra)."""
from __future__ import annotations

import math
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgvote import tables
from pgvote.bench.pgbench import pgbench_binary
from pgvote.stats import show

if TYPE_CHECKING:
    from pgvote.loadtest import LoadtestConfig

#: One voter's fate: (fingerprint, outcome, status, answer-or-error, t_start, t_end, attempts, first_ok); outcome:
#: "ack" (acknowledged), "rejected" (a final error), "gave_up" (retries exhausted); times in epoch seconds.
Record = tuple[str, str, int, str, float, float, int, bool]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary(values: Sequence[float], scale: float = 1000, unit: str = "_ms") -> dict[str, float]:
    """p50/p95/p99/max of ``values`` × ``scale``, keys ending in ``unit``: seconds in, milliseconds out."""
    out = sorted(v * scale for v in values)
    return {f"p{q}{unit}": percentile(out, q) for q in (50, 95, 99)} | {f"max{unit}": out[-1] if out else math.nan}


def figures(records: Sequence[Record], t0: float, errors: Counter[str]) -> dict[str, Any]:
    """The figures of a run from its records; ``errors``: every non-200 attempt, by "status code"."""
    acked = [r for r in records if r[1] == "ack"]
    drain = max((r[5] for r in acked), default=t0) - t0  # release -> last acknowledgment
    requests = sum(r[6] for r in records)  # every attempt, retries included
    return {"voters": len(records), "accepted": len(acked), "answers": dict(Counter(r[3] for r in acked)),
            "rejected": dict(Counter(f"{r[2]} {r[3]}" for r in records if r[1] == "rejected")),  # final answers
            "gave_up": sum(r[1] == "gave_up" for r in records), "requests": requests, "retried_errors": dict(errors),
            "drain_seconds": drain, "votes_per_second": len(acked) / drain if drain > 0 else math.nan,
            # one voter's calls: first attempt sent -> acknowledged; release -> acknowledged (what a user waits)
            "request_latency": latency_summary([r[5] - r[4] for r in acked]),
            "time_to_ack": latency_summary([r[5] - t0 for r in acked]),
            "success_rate": len(acked) / requests if requests else math.nan}  # 200 answers / requests (k6's)


def timeline(records: Sequence[Record], t0: float, bins: int = 60) -> list[dict[str, float]]:
    """Per time bin (by acknowledgment time): acknowledgments/s and request latency (ms)."""
    acked = [r for r in records if r[1] == "ack"]
    width = max(0.1, (max((r[5] for r in acked), default=t0) - t0) / bins)
    buckets: dict[int, list[float]] = {}
    for r in acked:
        buckets.setdefault(int((r[5] - t0) / width), []).append(r[5] - r[4])
    return [{"t": round((i + 0.5) * width, 3), "votes_per_s": len(buckets.get(i, [])) / width,
             **latency_summary(buckets.get(i, []))} for i in range(max(buckets, default=-1) + 1)]


def progress(proc: subprocess.Popen[bytes], label: str, total: int | None, console: Console, quiet: bool,
             timeout: float, poll: Callable[[], tuple[int, int, Counter[str]]]) -> tuple[int, resource.struct_rusage]:
    """Show voters done, acknowledged, the rate of the last second and the errors until ``proc`` exits;
    ``poll()``: (done, acknowledged, errors) so far. Returns its exit code and resource usage."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("acked {task.fields[acked]:,}"), TextColumn("{task.fields[rate]:>7,.0f} votes/s"),
               TimeElapsedColumn(), TextColumn("[red]{task.fields[errors]}"))
    window: deque[tuple[float, int]] = deque()
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, disable=quiet, refresh_per_second=4) as bar:
        task = bar.add_task(label, total=total, acked=0, rate=0.0, errors="")
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: the child's CPU, not ours
            done, acked, errors = poll()
            now = time.monotonic()
            window.append((now, acked))
            while now - window[0][0] > 1.0:
                window.popleft()
            bar.update(task, completed=done, acked=acked, rate=(acked - window[0][1]) / max(1e-3, now - window[0][0]),
                       errors=_counts(dict(errors.most_common(4))))
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage
            if now > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{label}: still running after {timeout:.0f} s: stopped")
            time.sleep(0.25)


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with the measured value and pass/fail: the guide's (its k6 thresholds and "performance
    guarantees") and ours."""
    rows: list[tuple[str, str, str, bool]] = []

    def every_once(label: str, s: dict[str, Any]) -> None:
        f, v = s["figures"], s["verification"]
        rows.append(("ours", f"{label}100% accepted, exactly once", f"{f['accepted']:,}/{s['voters']:,}, lost {v['lost']}, "
                     f"duplicated {v['duplicated']}", f["accepted"] == s["voters"] and v["exactly_once"]))

    by_path = {s["path"]: s for s in report["scenarios"]}
    if single := by_path.get("db") or by_path.get("http"):
        f, mem, lat = single["figures"], single["memory"], single["figures"]["request_latency"]["p95_ms"]
        rows += [("guide", "success >= 95% under spike (the burst)", f"{f['success_rate']:.2%}", f["success_rate"] >= 0.95),
                 ("guide", "p95 < 500 ms", f"{lat:,.0f} ms", lat < 500),
                 ("guide", "50,000 votes/s (single-vote path)", f"{f['votes_per_second']:,.0f}/s", f["votes_per_second"] >= 50_000)]
        if mem.get("available"):
            rows += [("guide", "memory 1-2 GB (PostgreSQL + PgBouncer PSS)", f"{mem['peak_total_mib']:,.0f} MiB",
                      mem["peak_total_mib"] <= 2048),
                     ("ours", "<= 1 GB beyond shared memory", f"{mem['peak_beyond_shared_mib']:,.0f} MiB",
                      mem["peak_beyond_shared_mib"] <= 1024)]
        every_once("", single)
        if single["path"] == "db" and (bare := by_path.get("bare")):  # the same transactions, same run
            ratio = report["drain_ratio"] = f["votes_per_second"] / bare["figures"]["votes_per_second"]
            rows.append(("ours", "drain rate >= 0.8 x bare insert (same run)", f"{ratio:.2f}", ratio >= 0.8))
    if ramp := by_path.get("ramp"):
        crossed, v = ramp["k6"]["thresholds_crossed"], ramp["verification"]  # the guide's targets: ramp.js's thresholds
        rows += [("guide", "k6 thresholds (k6/ramp.js): p(95) < 500 ms overall and per phase, errors < 5% overall and under "
                  "the spike, < 1% under normal load", ", ".join(crossed) + " crossed (k6 exit 99)" if crossed else
                  "none crossed", not crossed),
                 ("ours", "ramp: every acknowledged vote stored exactly once", f"lost {v['lost']}, dup {v['duplicated']}",
                  v["exactly_once"])]
    if bulk := by_path.get("bulk"):
        drain = bulk["figures"]["drain_seconds"]
        rows.append(("ours", f"bulk: {bulk['voters']:,} ballots in <= 1 s", f"{drain:.2f} s", drain <= 1.0))
        every_once("bulk: ", bulk)
    return [dict(zip(("source", "target", "value", "pass"), row)) for row in rows]


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    total = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    pgbench = subprocess.run([pgbench_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    bouncer = (subprocess.run([found, "--version"], capture_output=True, text=True).stdout.splitlines()
               if Path(found).exists() else [])
    return {"cpu": f"{os.cpu_count()} x {cpu}", "memory": f"{int(total[1]) / 1024 / 1024 if total else 0:.0f} GiB",
            "os": platform.platform(), "pgbench": pgbench, "pgbouncer": bouncer[0] if bouncer else "?",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def environment(cfg: LoadtestConfig) -> dict[str, Any]:
    env: dict[str, Any] = {**machine(), "python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                           "psycopg": psycopg.__version__}
    try:
        with psycopg.connect(cfg.admin_url, autocommit=True, connect_timeout=5) as conn:
            env["postgresql"], env["shared_buffers"] = conn.execute(
                "select current_setting('server_version'), current_setting('shared_buffers')").fetchone() or ("?", "?")
        if cfg.bouncer_admin_url:
            with psycopg.connect(cfg.bouncer_admin_url, autocommit=True, connect_timeout=5) as c:
                conf = {row["key"]: row["value"] for row in show(c, "config")}
            env["pgbouncer_config"] = {k: conf.get(k) for k in ("pool_mode", "default_pool_size", "max_db_connections",
                                                                 "reserve_pool_size", "max_client_conn", "query_wait_timeout")}
    except psycopg.Error:
        pass
    return env


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    for s in report["scenarios"]:
        v, f, k6, p, mem, pool = (s.get(k) or {} for k in ("verification", "figures", "k6", "pgbench", "memory", "pool"))
        lat, tta = f["request_latency"], f["time_to_ack"]
        rows = [("accepted", f"{f['accepted']:,} of {f['voters']:,} ({f['answers'] and _counts(f['answers'])})"),
                ("rejected by status", _counts(f["rejected"]) or "0"), ("gave up", str(f["gave_up"])),
                ("lost", str(v["lost"])), ("duplicated", str(v["duplicated"])),
                ("drain time", f"{f['drain_seconds']:.2f} s"), ("votes/s", f"{f['votes_per_second']:,.0f}"),
                ("latency p50/p95/p99/max", "/".join(_ms(lat[f"{q}_ms"]) for q in ("p50", "p95", "p99", "max")) + " ms"),
                ("time to ack since release p50/p95", f"{_ms(tta['p50_ms'])}/{_ms(tta['p95_ms'])} ms"),
                ("success rate (200 / requests)", f"{f['success_rate']:.2%} of {f['requests']:,}"),
                ("errors (re-cast when retryable)", _counts(f["retried_errors"]) or "0")]
        if k6:
            rows += [("k6 requests (identical retries)", f"{k6['requests']:,} ({k6['retries']:,})"),
                     ("k6 peak memory (RSS)", f"{k6['peak_rss_mib']:,} MiB"),
                     ("k6 exit, thresholds crossed", f"{k6['exit_code']}, {', '.join(k6['thresholds_crossed']) or 'none'}"),
                     ("source addresses (one per VU)", s["local_ips"])]
        rows += [(f"{phase} load: success, p95", f"{pf['success_rate']:.2%}, {_ms(pf['p95_ms'])} ms")
                 for phase, pf in s.get("phases", {}).items()]
        if s["path"] == "bulk":
            rows.append(("batches (at most), committed", f"{s['batches']} ({s['batch']} ballots), {s['committed_batches']}"))
        if p:
            rows.append(("pgbench: first pass tps, clients aborted; re-cast passes (transactions)",
                         f"{p['tps']:,.0f}, {p['aborted_clients']}; {p['recast_passes']} ({p['recast_transactions']:,})"))
        if mem.get("available"):
            rows.append(("peak PSS PostgreSQL + PgBouncer", f"{mem['peak_total_mib']:,.0f} MiB ({mem['peak_postgres_pss_mib']:,.0f}"
                         f" + {mem['peak_bouncer_pss_mib']:,.0f}; {mem['peak_beyond_shared_mib']:,.0f} beyond shm)"))
        if pool:
            rows.append(("PgBouncer peaks", f"{pool.get('clients', 0):,} clients, {pool.get('cl_waiting', 0):,} waiting, "
                                            f"{pool.get('sv_active', 0)} servers, maxwait {pool.get('maxwait', 0)} s"))
        if s.get("cpu_seconds"):
            rows.append(("CPU seconds used", ", ".join(f"{k} {n:.1f}" for k, n in s["cpu_seconds"].items())))
        rows.append(("exactly once", "[green]yes[/]" if v["exactly_once"] else f"[red]NO[/] {v.get('problems')}"))
        console.print(tables.table(f"{s['name']} — {s['voters']:,} voters, {s.get('clients', '-')} "
                                   f"{'VUs' if k6 else 'clients'}", ("figure", "value"), rows, (1,)))
    env = report.get("environment", {})
    if "load_average_before" in env:
        console.print(f"machine: {env.get('cpus')} cores, PostgreSQL {env.get('postgresql', '?')}, "
                      f"{env.get('pgbouncer', 'PgBouncer ?')}; 1-minute load average "
                      f"{env['load_average_before'][0]:.1f} before, {env['load_average_after'][0]:.1f} after "
                      "(other work on the machine shifts every figure: compare same-run ratios)")
    if report.get("checks"):
        console.print(tables.table("targets", ("source", "target", "measured", "result"), [
            (c["source"], c["target"], str(c["value"]), "[green]pass[/]" if c["pass"] else "[red]FAIL[/]")
            for c in report["checks"]]))


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n:,}" for k, n in sorted(d.items(), key=lambda kv: -kv[1]))


#: One panel of a chart: title, x label, log x, left-axis (label, ylabel), {series: (xs, ys)}, and the same for a
#: right axis (or None).
Series = dict[str, tuple[list[float], list[float]]]
Panel = tuple[str, str, bool, str, Series, str, Series]


def write_chart(path: Path, panels: Sequence[Panel]) -> None:
    """The one chart writer (the ``chart`` extra): a PNG of ``panels``, one above the other."""
    if not panels:
        return
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("charts need matplotlib: pip install 'pgvote[chart]'") from None
    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    for ax, (title, xlabel, log_x, left_label, left, right_label, right) in zip(axes[:, 0], panels, strict=True):
        ax.set(title=title, xlabel=xlabel, ylabel=left_label, xscale="log" if log_x else "linear")
        ax.grid(True, alpha=0.3)
        for label, (xs, ys) in left.items():
            ax.plot(xs, ys, marker="o" if log_x else None, label=label)
        handles, labels = ax.get_legend_handles_labels()
        if right:
            twin = ax.twinx()
            twin.set_ylabel(right_label)
            for (label, (xs, ys)), style in zip(right.items(), (":", "--", "-"), strict=False):
                twin.plot(xs, ys, color="tab:red", linestyle=style, label=label)
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def timeline_panels(report: dict[str, Any]) -> list[Panel]:
    """Throughput and p50/p95/p99 latency over time, one panel per scenario that has a timeline."""
    return [(f"{s['name']}: {s['voters']:,} voters, {s['clients']:,} {'VUs' if 'k6' in s else 'clients'}",
             "seconds since release", False, "votes/s", {"votes/s acknowledged": (
                 [b["t"] for b in s["timeline"]], [b["votes_per_s"] for b in s["timeline"]])}, "latency (ms)",
             {q: ([b["t"] for b in s["timeline"]], [b[f"{q}_ms"] for b in s["timeline"]]) for q in ("p50", "p95", "p99")})
            for s in report["scenarios"] if s.get("timeline")]
