"""`pgvote partitions status|create|verify|split` on $DATABASE_URL (wired into pgvote/cli.py).

Exit status: 0 done / healthy, 1 problems found or the operation failed, 2 refused (unsafe state
or bad request; nothing was changed by the refused step).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from partitions import catalog
from partitions.create import create_partitions
from partitions.split import SplitOptions, SplitResult, resume_splits, split_all, split_partition
from partitions.sqlexec import Refused
from partitions.status import collect, render
from partitions.verify import healthy, verify
from pgvote.database_url import MissingDatabaseUrl, database_url

OK, PROBLEMS, REFUSED = 0, 1, 2

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("pgvote.partitions")


class RichProgress:
    """A progress bar on stderr while rows are copied."""

    bar: Progress | None = None

    def start(self, description: str, total: int | None) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err)
        self.bar.start()
        self.bar.add_task(escape(description), total=total or None)

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            task = self.bar.tasks[0]
            if task.total is not None and task.completed + rows > task.total:
                self.bar.update(task.id, total=task.completed + rows)  # the estimate was low
            self.bar.advance(task.id, rows)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", default=catalog.DEFAULT_SCHEMA, help="schema of the partitioned tables (default voting)")
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
    sp.add_argument("--batch-size", type=int, default=SplitOptions.batch_size, help="rows per copy transaction")
    sp.add_argument("--pause", type=float, default=0.0, metavar="MS", help="sleep between copy batches (throttle)")
    sp.add_argument("--lock-timeout", type=float, default=SplitOptions.lock_timeout * 1000, metavar="MS",
                    help="longest wait for the switch locks per attempt (writers queue meanwhile); default 500")
    sp.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    sp.add_argument("--json", action="store_true", help="print the results as JSON")
    sp.set_defaults(partitions_handler=cmd_split)


def _setup_logging(verbose: bool) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def run(args: argparse.Namespace) -> int:
    """Entry point of `pgvote partitions ...`: one line on stderr for anything a DBA must act on."""
    _setup_logging(args.verbose)
    handler: Callable[[argparse.Namespace, psycopg.Connection], int] = args.partitions_handler
    try:
        with psycopg.connect(database_url(), autocommit=True, application_name="pgvote partitions") as conn:
            return handler(args, conn)
    except (Refused, MissingDatabaseUrl) as exc:
        err.print(f"[red]refused:[/] {escape(str(exc))}")
        return REFUSED
    except psycopg.Error as exc:
        if getattr(args, "debug", False):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err.print(f"[red]error:[/] {escape(type(exc).__name__)}: {escape(first)}")
        return PROBLEMS


def cmd_status(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    statuses = collect(conn, args.schema, exact=args.exact, top=args.top)
    if args.json:
        print(json.dumps({"schema": args.schema, "tables": [s.to_json() for s in statuses]}, indent=2))
    else:
        render(out, statuses, args.schema)
    return OK


def cmd_verify(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    findings = verify(conn, args.schema)
    ok = healthy(findings)
    if args.json:
        print(json.dumps({"healthy": ok, "findings": [f.to_json() for f in findings]}, indent=2))
    else:
        style = {"problem": "[red]problem[/]", "note": "[yellow]note[/]", "ok": "[green]ok[/]"}
        for f in findings:
            out.print(f"{style[f.severity]} {escape(f.table)}: {escape(f.message)}")
        out.print("[green]healthy[/]" if ok else "[red]problems found[/]")
    return OK if ok else PROBLEMS


def cmd_create(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    created = create_partitions(conn, args.table, args.modulus, dry_run=args.dry_run)
    if args.dry_run:
        print("-- dry run: nothing was changed")
    elif created:
        out.print(f"created {len(created)} partition(s): {escape(', '.join(created))}")
    else:
        out.print(f"{escape(args.table)} already has its {args.modulus} partitions: nothing to do")
    return OK


def _summary(r: SplitResult) -> str:
    return (f"split {r.source} -> {r.targets[0]} + {r.targets[1]}: {r.rows_copied:,} rows copied in "
            f"{r.copy_seconds:.1f} s, switch: lock wait {r.lock_wait_ms:.1f} ms + held {r.held_ms:.1f} ms "
            f"(writers waited at most ~{r.writer_wait_ms:.0f} ms), total {r.seconds:.1f} s")


def cmd_split(args: argparse.Namespace, conn: psycopg.Connection) -> int:
    chosen = sum([bool(args.all), bool(args.resume), bool(args.partition and not args.resume)])
    if chosen != 1 or (args.all and args.partition):
        raise Refused("say what to split: PARTITION, --all, or --resume [PARTITION]")
    if args.table and not args.all:
        raise Refused("--table goes with --all")
    if args.batch_size < 1 or args.lock_timeout <= 0 or args.pause < 0:
        raise Refused("--batch-size and --lock-timeout must be positive, --pause not negative")
    options = SplitOptions(batch_size=args.batch_size, pause=args.pause / 1000, lock_timeout=args.lock_timeout / 1000,
                           dry_run=args.dry_run)
    progress = None if args.dry_run else RichProgress()
    if args.resume:
        results = resume_splits(conn, args.partition, options, progress, args.schema)
    elif args.all:
        results = split_all(conn, args.table, options, progress, args.schema)
    else:
        results = [split_partition(conn, args.partition, options, progress)]
    if args.dry_run:
        print("-- dry run: nothing was changed")
    elif args.json:
        print(json.dumps([{**r.__dict__, "writer_wait_ms": r.writer_wait_ms} for r in results], indent=2))
    else:
        for r in results:
            out.print(escape(_summary(r)))
        if args.resume and not results:
            out.print("nothing to resume")
    return OK
