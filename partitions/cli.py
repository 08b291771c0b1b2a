"""`pgvote partitions status|create|verify|split` on $DATABASE_URL (wired into pgvote/cli.py).

A thin client of the schema partman (procedures/partman.*.sql), where the partition manager
lives: this module parses the arguments, calls the functions and procedures, turns their NOTICEs
into a progress bar, a dry-run script and results, and prints the reports.

Exit status: 0 done / healthy, 1 problems found or the operation failed, 2 refused (unsafe state
or bad request; nothing was changed by the refused step).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pgvote.database_url import MissingDatabaseUrl, database_url
from pgvote.tables import table

OK, PROBLEMS, REFUSED = 0, 1, 2
#: SQLSTATE of partman.refuse.
REFUSAL = "PM001"

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Refused(Exception):
    """A request the CLI refuses before calling the database."""


class Notices:
    """What the procedures report while they run, by DETAIL: 'progress <rows> <total>' (the bar),
    'sql' and 'note' (the dry-run script, on stdout), 'result <json>' (one per split); the rest is
    the log, on stderr ('ran': the statements, with -v)."""

    def __init__(self, verbose: bool = False) -> None:
        self.results: list[dict[str, Any]] = []
        self.bar: Progress | None = None
        self.verbose = verbose

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        message, detail = diag.message_primary or "", diag.message_detail or ""
        kind, _, rest = detail.partition(" ")
        if kind == "progress":
            done, total = map(int, rest.split())
            if self.bar is None:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(), console=err)
                self.bar.start()
                self.bar.add_task(escape(message), total=total or None)
            self.bar.update(self.bar.tasks[0].id, completed=done, total=max(total, done) or None)
            return
        if kind == "result":
            self.stop()
            self.results.append(json.loads(rest))
        if detail in ("sql", "note"):
            print(message.strip() + ";" if detail == "sql" else f"-- {message}")
        elif (detail != "ran" or self.verbose) and not message.endswith(", skipping"):
            err.print(("WARNING " if diag.severity == "WARNING" else "") + escape(message), highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def call(conn: psycopg.Connection, procedure: str, *args: Any, verbose: bool = False) -> list[dict[str, Any]]:
    """CALL partman.<procedure>(args) on an autocommit connection (it commits between its steps);
    returns the result of each split it made."""
    notices = Notices(verbose)
    conn.add_notice_handler(notices)
    try:
        # literals, not parameters: a CALL that commits must come as a simple query
        conn.execute(sql.SQL("call partman.{}({})").format(sql.Identifier(procedure),
                                                           sql.SQL(", ").join(map(sql.Literal, args))).as_string(conn))
    finally:
        notices.stop()
        conn.remove_notice_handler(notices)
    return notices.results


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", default="voting", help="schema of the partitioned tables (default voting)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every SQL statement")
    sub = p.add_subparsers(dest="partitions_command", required=True, metavar="ACTION")

    s = sub.add_parser("status", help="partitions, bounds, rows, sizes, skew, largest polls")
    s.add_argument("--exact", action="store_true", help="count rows (and largest polls) instead of estimating")
    s.add_argument("--top", type=int, default=3, help="largest polls shown per partition (default 3)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(partitions_handler=cmd_status)

    c = sub.add_parser("create", help="create the initial hash partitions of a table (idempotent)")
    c.add_argument("--modulus", type=int, required=True, help="partition count, a power of two")
    c.add_argument("--table", default="voting.ballots", help="partitioned table (default voting.ballots)")
    c.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    c.set_defaults(partitions_handler=cmd_create)

    v = sub.add_parser("verify", help="hash space covered exactly once, no default partition, no unfinished split")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(partitions_handler=cmd_verify)

    sp = sub.add_parser("split", help="double the modulus of a partition online (m,r -> 2m,r and 2m,r+m)")
    sp.add_argument("partition", nargs="?", help="the partition to split, e.g. voting.ballots_m16_r3")
    sp.add_argument("--all", action="store_true", help="double every partition, one at a time")
    sp.add_argument("--table", help="with --all: only this table (default: every hash-partitioned table)")
    sp.add_argument("--resume", action="store_true", help="finish unfinished splits (or the one of PARTITION)")
    sp.add_argument("--batch-size", type=int, default=5000, help="rows per copy transaction")
    sp.add_argument("--pause", type=float, default=0.0, metavar="MS", help="sleep between copy batches (throttle)")
    sp.add_argument("--lock-timeout", type=int, default=500, metavar="MS",
                    help="longest wait for the switch locks per attempt (writers queue meanwhile); default 500")
    sp.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    sp.add_argument("--json", action="store_true", help="print the results as JSON")
    sp.set_defaults(partitions_handler=cmd_split)


def run(args: argparse.Namespace) -> int:
    """Entry point of `pgvote partitions ...`: one line on stderr for anything a DBA must act on."""
    handler: Callable[[argparse.Namespace, psycopg.Connection], int] = args.partitions_handler
    try:
        with psycopg.connect(database_url(), autocommit=True, application_name="pgvote partitions") as conn:
            if args.verbose:
                conn.execute("select set_config('partman.verbose', 'on', false)")
            return handler(args, conn)
    except (Refused, MissingDatabaseUrl) as exc:
        err.print(f"[red]refused:[/] {escape(str(exc))}")
        return REFUSED
    except psycopg.Error as exc:
        first = (exc.diag.message_primary or str(exc).strip() or type(exc).__name__).splitlines()[0]
        if exc.sqlstate == REFUSAL:
            err.print(f"[red]refused:[/] {escape(first)}")
            return REFUSED
        err.print(f"[red]error:[/] {escape(type(exc).__name__)}: {escape(first)}")
        return PROBLEMS


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def cmd_status(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    row = conn.execute("select partman.status(%s, %s, %s)", (args.schema, args.exact, args.top)).fetchone()
    tables: list[dict[str, Any]] = row[0] if row else []
    if args.json:
        print(json.dumps({"schema": args.schema, "tables": tables}, indent=2))
        return OK
    if not tables:
        out.print(f"no partitioned table in schema {escape(args.schema)}")
    for st in tables:
        parts = st["partitions"]
        rows_kind = "rows (exact)" if parts and all(p["exact"] for p in parts) else "rows (est.)"
        title = f"{st['table']}: {st['strategy']} on ({', '.join(st['key'])}), {len(parts)} partitions"
        cells = [[escape(p["name"].rpartition(".")[2]) + ("[red]*[/]" if p["state"] != "attached" else ""),
                  str(p["modulus"] if p["modulus"] is not None else p["bound"]),
                  "" if p["remainder"] is None else str(p["remainder"]),
                  "?" if p["rows"] is None else f"{p['rows']:,}", human_bytes(p["bytes"]),
                  "-" if p["share"] is None else f"{p['share']:.1%}",
                  escape("\n".join(f"{v['value'][:8]} {v['rows']:,}" for v in p["largest"]) or "-")] for p in parts]
        cells.append(["total", "", "", "?" if st["total_rows"] is None else f"{st['total_rows']:,}",
                      human_bytes(st["total_bytes"]), "", f"skew {st['skew']:.2f} (largest / mean)" if st["skew"] else ""])
        report = table(escape(title), ["partition", "modulus", "rem.", rows_kind, "size", "share",
                                       f"largest {', '.join(st['key']) or 'key'}s (rows)"], cells, right=range(1, 6))
        report.columns[0].no_wrap, report.columns[0].min_width = True, max(len(c[0]) for c in cells) + 1
        out.print(report)
        if any(p["state"] != "attached" for p in parts):
            out.print("[red]*[/] DETACH PENDING: receives no rows, its slice is a gap (see `verify`)")
        if any(p["rows"] is None for p in parts):
            out.print("? = never analyzed: run ANALYZE or use --exact")
        for line in st["unfinished_splits"]:
            out.print(f"[yellow]unfinished:[/] {escape(line)}")
        for name in st["retired_tables"]:
            out.print(f"[yellow]left over:[/] {escape(name)}, the old partition of a finished split "
                      "(`split --resume` drops it)")
        for name in st["stray_tables"]:
            out.print(f"[yellow]stray table:[/] {escape(name)} is named like a partition but is not attached")
    return OK


def cmd_verify(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    findings = conn.execute("select tbl, severity, message from partman.verify(%s)", (args.schema,)).fetchall()
    ok = not any(severity == "problem" for _, severity, _ in findings)
    if args.json:
        print(json.dumps({"healthy": ok, "findings": [{"table": t, "severity": s, "message": m}
                                                      for t, s, m in findings]}, indent=2))
    else:
        style = {"problem": "[red]problem[/]", "note": "[yellow]note[/]", "ok": "[green]ok[/]"}
        for t, s, m in findings:
            out.print(f"{style[s]} {escape(t)}: {escape(m)}")
        out.print("[green]healthy[/]" if ok else "[red]problems found[/]")
    return OK if ok else PROBLEMS


def cmd_create(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    conn.add_notice_handler(Notices(args.verbose))
    created = [r[0] for r in conn.execute("select partition from partman.create_partitions(%s, %s, %s)",
                                          (args.table, args.modulus, args.dry_run))]
    if args.dry_run:
        print("-- dry run: nothing was changed")
    elif created:
        out.print(f"created {len(created)} partition(s): {escape(', '.join(created))}")
    else:
        out.print(f"{escape(args.table)} already has its {args.modulus} partitions: nothing to do")
    return OK


def cmd_split(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    if args.all and (args.resume or args.partition) or not (args.all or args.resume or args.partition):
        raise Refused("say what to split: PARTITION, --all, or --resume [PARTITION]")
    if args.table and not args.all:
        raise Refused("--table goes with --all")
    if args.batch_size < 1 or args.lock_timeout <= 0 or args.pause < 0:
        raise Refused("--batch-size and --lock-timeout must be positive, --pause not negative")
    procedure, target = (("resume", (args.partition, args.schema)) if args.resume else
                         ("split_all", (args.table, args.schema)) if args.all else ("split", (args.partition,)))
    results = call(conn, procedure, *target, args.batch_size, args.pause, args.lock_timeout, args.dry_run,
                   verbose=args.verbose)
    if args.dry_run:
        print("-- dry run: nothing was changed")
    elif args.json:
        print(json.dumps([{**r, "writer_wait_ms": r["lock_wait_ms"] + r["held_ms"]} for r in results], indent=2))
    else:
        for r in results:
            out.print(escape(f"split {r['source']} -> {r['targets'][0]} + {r['targets'][1]}: {r['rows_copied']:,} rows "
                             f"copied in {r['copy_seconds']:.1f} s, switch: lock wait {r['lock_wait_ms']:.1f} ms + held "
                             f"{r['held_ms']:.1f} ms (writers waited at most ~{r['lock_wait_ms'] + r['held_ms']:.0f} ms), "
                             f"total {r['seconds']:.1f} s"))
        if args.resume and not results:
            out.print("nothing to resume")
    return OK
