"""`pgvote stats`: the database's monitoring views and PgBouncer's pools (SHOW POOLS / STATS / DATABASES),
as a live dashboard or one sample (``--once --json``); see docs/operations.md."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import decimal
import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from pgvote import tables

SINGLE_ROW_VIEWS = ("vote_rate", "rollback_rate", "connections", "aggregation_backlog", "cache_hit_ratio")
MULTI_ROW_VIEWS = ("api_latency", "rate_limits")  # of the monitoring schema, like the single-row ones
T = TypeVar("T")


def collect_database(conn: psycopg.Connection[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """One sample of every monitoring view, as JSON (numbers, ISO 8601 times). A view that fails (e.g.
    pg_stat_statements not preloaded) is reported under errors; the others are still read."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with conn.transaction():  # one snapshot-consistent read-only transaction per sample
        conn.execute("set transaction read only")
        for view in SINGLE_ROW_VIEWS + MULTI_ROW_VIEWS:
            try:
                with conn.transaction():  # a savepoint: one failing view spares the others (names: constants)
                    row = conn.execute(f"select coalesce(json_agg(v), '[]') from monitoring.{view} v").fetchone()
                rows = row[0] if row else []
                out[view] = rows if view in MULTI_ROW_VIEWS else (rows[0] if rows else {})
            except psycopg.Error as exc:
                errors[view] = (exc.diag.message_primary or str(exc)).strip()
    return out, errors


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    """``SHOW <what>`` of PgBouncer's admin console (simple query protocol, no prepare), its own database
    left out; PgBouncer types its counters numeric: plain numbers here, for JSON and arithmetic."""
    cur = conn.cursor(binary=False).execute(f"SHOW {what}", prepare=False)
    names = [d.name for d in cur.description or []]
    rows = [{n: (int(v) if v == v.to_integral_value() else float(v)) if isinstance(v, decimal.Decimal) else v
             for n, v in zip(names, row)} for row in cur.fetchall()]
    return [row for row in rows if row.get("database", row.get("name")) != "pgbouncer"]


class Collector:
    """Keeps one connection to the database and one to the admin console; a connection that fails is the
    sample's error under its name ("database", "pgbouncer") and is made again for the next sample."""

    def __init__(self, database_url: str, bouncer_admin_url: str | None = None) -> None:
        self.urls = {"database": database_url, "pgbouncer": bouncer_admin_url}
        self.conns: dict[str, psycopg.Connection[Any]] = {}

    def _read(self, name: str, read: Callable[[psycopg.Connection[Any]], T], errors: dict[str, str]) -> T | None:
        try:
            if name not in self.conns or self.conns[name].closed:
                self.conns[name] = psycopg.connect(self.urls[name] or "", autocommit=True, connect_timeout=10)
            return read(self.conns[name])
        except psycopg.Error as exc:
            if name in self.conns:
                self.conns.pop(name).close()
            errors[name] = str(exc).strip()
            return None

    def sample(self) -> dict[str, Any]:
        """{"sampled_at", "database": {view: row or rows}, "pgbouncer": {...} or None, "errors": {...}}."""
        sampled_at, errors = dt.datetime.now(dt.UTC).isoformat(), dict[str, str]()
        database, view_errors = self._read("database", collect_database, errors) or ({}, {})
        bouncer = self._read("pgbouncer", lambda conn: {key: show(conn, key) for key in ("pools", "stats", "databases")},
                             errors) if self.urls["pgbouncer"] else None
        return {"sampled_at": sampled_at, "database": database, "pgbouncer": bouncer, "errors": view_errors | errors}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def rates(previous: dict[str, Any] | None, current: dict[str, Any], seconds: float) -> dict[str, float | None]:
    """Per-second rates of the cumulative counters between two samples (None without a previous one)."""
    def delta(view: str, column: str) -> float | None:
        a = ((previous or {}).get("database", {}).get(view) or {}).get(column)
        b = (current.get("database", {}).get(view) or {}).get(column)
        if previous is None or seconds <= 0 or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return None
        return max(b - a, 0) / seconds

    commits, rollbacks = delta("rollback_rate", "xact_commit"), delta("rollback_rate", "xact_rollback")
    out: dict[str, float | None] = {
        "ballots_inserted_per_s": delta("vote_rate", "ballots_inserted_total"),
        "ballots_updated_per_s": delta("vote_rate", "ballots_updated_total"), "commits_per_s": commits,
        "rollbacks_per_s": rollbacks, "rollback_ratio": rollbacks / (commits + rollbacks)
        if commits is not None and rollbacks is not None and commits + rollbacks > 0 else None}
    before = {r["database"]: r["total_xact_count"] for r in ((previous or {}).get("pgbouncer") or {}).get("stats", [])}
    return out | {f"pgbouncer_{r['database']}_xact_per_s": max(r["total_xact_count"] - before[r["database"]], 0) / seconds
                  for r in (current.get("pgbouncer") or {}).get("stats", []) if r["database"] in before and seconds > 0}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or isinstance(value, bool):
        return {None: "-", True: "yes", False: "no"}[value]
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


#: The dashboard's key-value panels: title -> (label, where the value is: "view.column" of the sample's
#: database, or "rate.name" of rates()).
PANELS = {
    "Votes": (("votes/s (last 10 s)", "vote_rate.votes_per_second"), ("ballots inserted/s", "rate.ballots_inserted_per_s"),
              ("revotes/s", "rate.ballots_updated_per_s"), ("ballots inserted (total)", "vote_rate.ballots_inserted_total")),
    "Transactions": (("commits/s", "rate.commits_per_s"), ("rollbacks/s", "rate.rollbacks_per_s"),
                     ("rollback ratio (now)", "rate.rollback_ratio"),
                     ("rollback ratio (since reset)", "rollback_rate.rollback_ratio")),
    "Connections": (("connections", "connections.connections"), ("active", "connections.active"),
                    ("waiting on a lock", "connections.waiting"), ("idle in transaction", "connections.idle_in_transaction"),
                    ("usage ratio", "connections.usage_ratio")),
    "Aggregation / cache": (("pending tally slots", "aggregation_backlog.pending_slots"),
                            ("polls pending", "aggregation_backlog.polls_pending"),
                            ("cache hit ratio", "cache_hit_ratio.cache_hit_ratio"),
                            ("longest transaction s", "connections.longest_transaction_seconds")),
}
#: The multi-row tables: title, where the rows are, (column, key in the row, digits).
LISTS = (("API latency (pg_stat_statements, execution only)", "api_latency",
          (("function", "function_name", 0), ("calls", "calls", 0), ("mean ms", "mean_exec_ms", 2),
           ("max ms", "max_exec_ms", 2), ("total ms", "total_exec_ms", 0))),
         ("Rate limits", "rate_limits",
          (("limit", "limit_name", 0), ("per minute", "requests_per_minute", 1), ("burst", "burst", 0),
           ("enabled", "enabled", 0), ("buckets", "buckets", 0), ("exhausted", "exhausted_buckets", 0))),
         ("PgBouncer pools", "pools",
          (("database", "database", 0), ("user", "user", 0), ("cl_active", "cl_active", 0),
           ("cl_waiting", "cl_waiting", 0), ("sv_active", "sv_active", 0), ("sv_idle", "sv_idle", 0),
           ("maxwait s", "maxwait", 0), ("xact/s", "xact_per_s", 1))))


def render(sample: dict[str, Any], rate: dict[str, float | None]) -> Group:
    db = sample.get("database", {})

    def value(where: str) -> Any:
        source, key = where.split(".")
        return rate.get(key) if source == "rate" else db.get(source, {}).get(key)

    top = Table.grid(padding=(0, 2))
    top.add_row(*(tables.table(title, ("metric", "value"), [(label, _fmt(value(where), 4 if "ratio" in label else 1))
                                                             for label, where in pairs], (1,))
                  for title, pairs in PANELS.items()))
    bouncer = sample.get("pgbouncer")
    rows = {**db, "pools": [{**row, "xact_per_s": rate.get(f"pgbouncer_{row['database']}_xact_per_s")}
                            for row in (bouncer or {}).get("pools", [])]}
    lists = [tables.table(title, [c for c, _, _ in columns], [[_fmt(row[k], d) for _, k, d in columns]
                                                              for row in rows.get(key, [])], range(1, len(columns)))
             for title, key, columns in LISTS if key != "pools" or bouncer is not None]
    middle = Table.grid(padding=(0, 2))
    middle.add_row(*lists[:2])
    return Group(top, middle, *lists[2:], *(f"[yellow]{name}: {message}[/]" for name, message in sample.get("errors", {}).items()),
                 f"[dim]sampled at {sample.get('sampled_at')}; Ctrl-C to quit[/]")


def live(database_url: str, bouncer_admin_url: str | None, interval: float, console: Console,
         max_samples: int | None = None) -> None:
    """Refresh the dashboard every `interval` seconds until Ctrl-C (or `max_samples`: `--once`, tests)."""
    previous: dict[str, Any] | None = None
    last, count = time.monotonic(), 0
    with contextlib.closing(Collector(database_url, bouncer_admin_url)) as collector, \
            Live(console=console, refresh_per_second=4, screen=False) as view:
        while max_samples is None or count < max_samples:
            if count:
                time.sleep(max(0.0, interval - (time.monotonic() - last)))
            sample = collector.sample()
            now = time.monotonic()
            view.update(render(sample, rates(previous, sample, now - last)))
            previous, last, count = sample, now, count + 1


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="take one sample and exit")
    p.add_argument("--json", action="store_true", help="print the sample as JSON (with --once)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--database-url", help="role with ops (or superuser); default $DATABASE_URL, else the local stack")
    p.add_argument("--bouncer-admin-url",
                   help="PgBouncer admin console (db 'pgbouncer'); default: the local stack's; 'none' to skip")


def run(args: argparse.Namespace, local_stack: Callable[[], Any], console: Console) -> int:
    """Resolve the URLs (options, $DATABASE_URL, the running local stack) and show or print the stats."""
    from pgvote.backends import require_running

    database_url = args.database_url or os.environ.get("DATABASE_URL")
    bouncer_url = args.bouncer_admin_url
    if not database_url or bouncer_url is None:
        stack = local_stack()
        if not database_url:
            require_running(stack, "postgres")
            database_url = stack.admin_url
        if bouncer_url is None and stack.status()["components"]["pgbouncer"]["running"]:
            bouncer_url = stack.bouncer_admin_url
    bouncer_url = None if bouncer_url in ("", "none") else bouncer_url
    if args.once and args.json:
        with contextlib.closing(Collector(database_url, bouncer_url)) as collector:
            sample = collector.sample()
        if "database" in sample["errors"]:  # a script gets a failure, not a sample without the database
            raise RuntimeError(sample["errors"]["database"])
        print(json.dumps(sample, indent=2, sort_keys=True))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        live(database_url, bouncer_url, max(args.interval, 0.2), console, 1 if args.once else None)
    return 0
