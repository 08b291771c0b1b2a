"""The `pgvote` command line: each subcommand a function of the parsed arguments returning an exit code,
registered with its options by @command. Exit codes: 0 ok, 1 error (one line, a traceback with --debug).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import partitions.cli
from pgvote import jwt, loadtest, stats, tables
from pgvote.backends import Stack, make_stack, require_running
from pgvote.stack import API_ROLES, LocalStack, StackError

out = Console(soft_wrap=True)  # soft_wrap: never break URLs/paths in the middle
err = Console(stderr=True, soft_wrap=True)

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]
Option = tuple[str, dict[str, Any]]  # a flag and its add_argument keywords

PARSER = argparse.ArgumentParser(prog="pgvote", description="pgvote: nginx -> PostgREST -> PgBouncer -> PostgreSQL")
PARSER.add_argument("--state-dir", help="stack state directory (default: $PGVOTE_STATE_DIR or per checkout)")
PARSER.add_argument("--debug", action="store_true", help="show tracebacks")
SUBCOMMANDS = PARSER.add_subparsers(dest="command", required=True, metavar="COMMAND")


def command(name: str, help: str, *options: Option, configure: Configure | None = None) -> Callable[[Handler], Handler]:
    """Register a subcommand: its parser, its options (configure: those a module defines itself)."""

    def register(handler: Handler) -> Handler:
        p = SUBCOMMANDS.add_parser(name, help=help, description=help)
        for option, keywords in options:
            p.add_argument(option, **keywords)
        if configure:
            configure(p)
        p.set_defaults(handler=handler)
        return handler

    return register


def flag(name: str, help: str) -> Option:
    return name, {"action": "store_true", "help": help}


def _stack(args: argparse.Namespace, ha: bool = False, shards: int | None = None) -> Stack:
    """The stack of --state-dir, in the profile its state dir remembers (`up` passes --ha / --shards N)."""
    return make_stack(state_dir=Path(args.state_dir) if args.state_dir else None, ha=ha, shards=shards)


def _local_stack(args: argparse.Namespace) -> LocalStack:
    """The local stack: what the HTTP tools (demo, token, bench) need beyond the common interface."""
    stack = _stack(args)
    if not isinstance(stack, LocalStack):
        raise StackError(f"this command needs the local stack (PGVOTE_BACKEND=local), not {stack.backend}")
    return stack


def _redact(url: str) -> str:
    """Hide a password in a connection URL before printing it."""
    return re.sub(r"^(\w+://[^:/@]*):[^/]*@", r"\1:***@", url)


def _print_url_table(urls: dict[str, str | None]) -> None:
    for key, url in urls.items():
        out.print(f"{key:18} {escape(_redact(url) if url else '-')}")


def _print_urls(stack: Stack) -> None:
    out.print(f"state dir          {escape(str(stack.state_dir))}")
    _print_url_table(stack.status()["urls"])
    if not isinstance(stack, LocalStack):
        return
    # plain print: must stay copy-pasteable (no wrapping, no markup)
    pgvote = shutil.which("pgvote") or os.path.abspath(sys.argv[0])
    print(f"""
Try it (paste into a shell):
  export PGVOTE={stack.http_url}
  POLL=$(curl -s $PGVOTE/rpc/create_poll -H "Authorization: Bearer $({pgvote} token --sub alice)" \\
      -H 'Content-Type: application/json' -d '{{"question": "Tea or coffee?", "options": ["tea", "coffee"]}}')
  echo "$POLL"
  POLL_ID=$(echo "$POLL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["poll_id"])')
  OPTION=$(echo "$POLL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["option_ids"][0])')
  curl -s $PGVOTE/rpc/cast_vote -H 'Content-Type: application/json' \\
      -d "{{\\"poll_id\\": \\"$POLL_ID\\", \\"option_ids\\": [\\"$OPTION\\"], \\"voter_fingerprint\\": \\"device-1\\"}}"
  curl -s "$PGVOTE/rpc/poll_results?poll_id=$POLL_ID"
export DATABASE_URL={stack.admin_url}""")


# ---- subcommands -----------------------------------------------------------------------------------


@command("up", "start PostgreSQL, run migrations, start PgBouncer, two PostgREST replicas and nginx",
         flag("--no-migrate", "start without running migrations"),
         ("--shards", {"type": int, "metavar": "N",
                       "help": "N shard clusters (a power of two) behind a PL/Proxy router (docs/scaling.md)"}),
         flag("--ha", "the HA profile: etcd, two PostgreSQL members under Patroni (leader and synchronous standby) "
                      "behind HAProxy, results read from the standby (remembered by the state dir)"))
def cmd_up(args: argparse.Namespace) -> int:
    stack = _stack(args, ha=args.ha, shards=args.shards)
    with err.status("starting the stack..."):
        stack.up(migrate=not args.no_migrate)
    out.print("[green]stack is up[/]")
    _print_urls(stack)
    return 0


@command("down", "stop everything the stack started (fast shutdown)")
def cmd_down(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.down()
    out.print(f"[green]stack is down[/] (state kept in {escape(stack.status()['state_dir'])})")
    return 0


@command("grow", "double the shards of a sharded stack online: polls move with their ballots (docs/scaling.md)")
def cmd_grow(args: argparse.Namespace) -> int:
    from pgvote.grow import grow
    from pgvote.shards import ShardedStack

    stack = _stack(args)
    if not isinstance(stack, ShardedStack):
        raise StackError("grow needs a sharded stack: `pgvote up --shards N` first")
    require_running(stack)
    moved = grow(stack, progress=lambda message: err.print(f"[dim]{escape(message)}[/]"))
    out.print(f"[green]{len(stack.shards)} shards[/]: {moved} polls moved")
    return 0


@command("status", "show what runs (pids, ports, restarts), where the state lives, and the URLs",
         flag("--json", "machine-readable output"))
def cmd_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    rows = []
    for name, comp in status["components"].items():
        for entry in comp if isinstance(comp, list) else [comp]:
            label = entry.get("name", name) + ((" (live)" if entry.get("live") else " (idle)") if "colour" in entry else "")
            detail = entry.get("note") if not entry["running"] and entry.get("note") else entry.get("log", "")
            restarts = entry.get("restarts")
            rows.append((label, "[green]running[/]" if entry["running"] else "[red]stopped[/]", str(entry.get("pid") or "-"),
                         str(entry.get("port") or "-"), "-" if restarts is None else str(restarts), escape(detail or "")))
    out.print(tables.table(f"pgvote stack ({status['backend']})",
                           ("component", "state", "pid", "port", "restarts", "log / note"), rows))
    for m in status.get("ha", {}).get("members", []):
        lag = "-" if m["lag_bytes"] is None else f"{m['lag_bytes']} bytes behind"
        out.print(f"{m['name']}: {m['role'] or 'unknown'} ({m['state'] or 'no answer'}), PostgreSQL pid "
                  f"{m['pid'] or '-'} port {m['port']}, Patroni pid {m['patroni_pid'] or '-'} {m['url']}, lag {lag}")
    out.print(f"state dir: {escape(status['state_dir'])}")
    if "requested_state_dir" in status:
        out.print(f"(relocated from {escape(status['requested_state_dir'])}: the postgres user cannot reach it)")
    _print_url_table(status["urls"])
    return 0


@command("token", "print a JWT signed with the local stack's secret (only the token, on stdout)",
         ("--role", {"choices": API_ROLES, "default": "authenticated",
                     "help": "the JWT role claim (default authenticated)"}),
         ("--sub", {"help": "the JWT sub claim: the voter / creator id (default: a random user-<uuid>)"}),
         ("--exp", {"type": int, "default": 3600,
                    "help": "expiry in seconds from now (default 3600; negative: an expired token)"}))
def cmd_token(args: argparse.Namespace) -> int:
    stack = _local_stack(args)
    if not stack.jwt_secret_file.is_file():
        raise StackError(f"the local stack ({stack.state_dir}) has no JWT secret yet: run `pgvote up` first")
    sub = args.sub if args.sub is not None else (f"user-{uuid.uuid4()}" if args.role == "authenticated" else None)
    print(jwt.sign(stack.jwt_secret, jwt.claims_for(args.role, sub, args.exp)))
    return 0


def _target_database(args: argparse.Namespace) -> tuple[str, str]:
    """$DATABASE_URL, else the running local stack's admin URL; with where it came from."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, "DATABASE_URL"
    stack = _stack(args)
    require_running(stack, "postgres")
    return stack.admin_url, f"the local stack's admin_url (state dir {stack.state_dir})"


@command("migrate", "run migrations against $DATABASE_URL (or the local stack)")
def cmd_migrate(args: argparse.Namespace) -> int:
    from pgvote import migrate

    url, source = _target_database(args)
    out.print(f"migrating {escape(_redact(url))} (from {escape(source)})")
    migrate.upgrade(url)
    out.print("[green]migrations applied[/]")
    return 0


@command("schema", "rewrite db/schema.sql: the normalised schema a fresh `alembic upgrade head` builds "
                   "(in a scratch database of $DATABASE_URL's cluster, or of the local stack)",
         flag("--check", "only compare with db/schema.sql; exit 1 if it differs"))
def cmd_schema(args: argparse.Namespace) -> int:
    from pgvote.schema_dump import SCHEMA_FILE, migrated_schema

    url, _ = _target_database(args)
    schema = migrated_schema(url)
    if args.check:
        same = SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == schema
        (out if same else err).print(f"{SCHEMA_FILE}: {'up to date' if same else 'differs; run `pgvote schema`'}")
        return 0 if same else 1
    SCHEMA_FILE.write_text(schema)
    out.print(f"wrote {escape(str(SCHEMA_FILE))}")
    return 0


@command("clean", "stop the stack and delete its state dir (cluster data included)")
def cmd_clean(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.destroy()
    out.print(f"removed {escape(str(stack.state_dir))}")
    return 0


@command("demo", "the 50,000-vote spike over HTTP (k6 through nginx) and the bulk path on the local stack, "
                 "verified exactly once, with the report and the final results",
         ("--voters", {"type": int, "default": 50_000, "help": "voters of the spike (default 50,000)"}))
def cmd_demo(args: argparse.Namespace) -> int:
    from pgvote.demo import print_results, run_spike

    stack = _local_stack(args)
    require_running(stack)
    reports = run_spike(stack, voters=args.voters, console=out)
    poll_id = reports["http"]["scenarios"][0]["poll_id"]
    print_results(stack, poll_id, out)
    _print_urls(stack)
    print(f"\nResults page (live, open it in a browser): {stack.http_url}/polls/{poll_id}")
    return 0


@command("bench", "pgbench scenarios on a throw-away database of the local stack: votes/s, latency, same-run ratios",
         flag("--quick", "3 s per scenario (the whole run stays under 2 minutes)"),
         ("--seconds", {"type": float, "help": "seconds per scenario (default 15, or 3 with --quick)"}),
         ("--json", {"type": Path, "help": "write every figure as JSON to this file"}),
         ("--chart", {"type": Path, "help": "PNG chart of votes/s against clients (default docs/benchmarks.png)"}),
         ("--report", {"type": Path, "help": "markdown report to update (default docs/benchmarks.md)"}),
         flag("--no-report", "print the tables only: no report, no chart"),
         flag("--http", "the HTTP figures instead, k6 through the stack's nginx: cast_vote / a no-op RPC (H1), the "
                        "50,000-voter burst (H2), the guide's ramp (H3), the rate-limit hook, CPU per vote by process "
                        "(--quick: small sizes, a smoke run)"),
         flag("--live", "live results instead: watchers held, messages/s, update latency, votes/s with ÷ without"),
         flag("--router", "on a sharded stack: cast_vote and cast_votes through the PL/Proxy router / directly on the "
                          "shard, same run (ratio, CPU per ballot of each)"),
         ("--clients", {"type": int, "default": 4, "help": "--router: pgbench clients (default 4)"}),
         flag("--ha", "on the HA stack (`pgvote up --ha`): votes/s with the synchronous standby ÷ without (same run), "
                      "then the standby's replay lag and the age of the results clients see during the --votes burst"),
         ("--subscribers", {"type": int, "default": 10_000, "help": "--live: watchers of one poll (default 10,000)"}),
         ("--votes", {"type": int, "default": 50_000, "help": "--live, --ha: votes of each burst (default 50,000)"}))
def cmd_bench(args: argparse.Namespace) -> int:
    from pgvote.bench.report import BENCH_MODES, DEFAULT_CHART, DEFAULT_REPORT, run_bench

    stack = _local_stack(args)  # bench --ha names a benchmark: the state dir says what runs
    require_running(stack)
    files: dict[str, Any] = {"report_path": None if args.no_report else (args.report or DEFAULT_REPORT),
                             "json_path": args.json, "console": out}
    if mode := next((m for m in BENCH_MODES if getattr(args, m)), None):
        module, needs = BENCH_MODES[mode]
        if needs and not isinstance(stack, getattr(importlib.import_module(needs[0]), needs[1])):
            raise StackError(f"bench --{mode} needs {needs[2]}")
        importlib.import_module(module).bench(stack, args, **files)
    else:
        run_bench(stack.admin_url, stack.api_url, quick=args.quick, seconds=args.seconds,
                  chart_path=None if args.no_report else (args.chart or DEFAULT_CHART), **files,
                  command=f"pgvote bench{' --quick' if args.quick else ''}")
    return 0


@command("partitions", "inspect, verify, create and split the hash partitions of $DATABASE_URL",
         configure=partitions.cli.configure)
def cmd_partitions(args: argparse.Namespace) -> int:
    return partitions.cli.run(args)


@command("stats", "live dashboard of the monitoring views and PgBouncer pools (--once --json for scripts)",
         configure=stats.configure)
def cmd_stats(args: argparse.Namespace) -> int:
    return stats.run(args, lambda: _stack(args), console=out)


@command("loadtest", "the 50,000-vote spike on one poll, over HTTP with k6 (or --sql through PgBouncer), "
                     "verified exactly once", configure=loadtest.add_options)
def cmd_loadtest(args: argparse.Namespace) -> int:
    stack = None
    if not (args.database_url and args.admin_url):
        stack = _local_stack(args)
        require_running(stack)
    return loadtest.run(args, stack, out)


# ---- entry point -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = PARSER.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130
    except Exception as exc:  # one line, a traceback on demand; a StackError's says what to do itself
        if args.debug:
            raise
        err.print(f"[red]error:[/] {escape(str(exc))}" if isinstance(exc, StackError) else
                  f"[red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))} (run with --debug for details)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
