"""Run pgbench, the SQL-level load of both ``pgvote bench`` and ``pgvote loadtest --sql``, and read
what it did: its summary, every committed transaction from its per-transaction log (-l), the
clients it aborted (an error ends a pgbench client), and its progress lines (-P 1) as they come."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgvote.supervisor import raise_nofile_limit

SCRIPTS = Path(__file__).parent / "scripts"
#: POST /rpc/cast_vote or /rpc/cast_votes as PostgREST 12 sends it (its header lists the variables).
POSTGREST_RPC = "postgrest_rpc.sql"


def pgbench_binary() -> str:
    """pgbench of the newest installed server (Debian keeps it out of PATH), else PATH's."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), key=lambda p: int(p.parts[-3]))
    found = str(candidates[-1]) if candidates else shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench not found: install the PostgreSQL server package (it ships pgbench)")
    return found


def postgrest_variables(*, poll_id: str, patterns: Sequence[Sequence[str]] = (), prefix: str, per_client: int,
                        role: str = "anon", hook: bool = False, caller: str = "none",
                        bulk: bool = False) -> dict[str, str]:
    """The -D variables of ``POSTGREST_RPC`` (what each one means: the script's header)."""
    return {"role": role, "claims": json.dumps({"role": role}), "path": "/rpc/cast_votes" if bulk else "/rpc/cast_vote",
            "hook": str(int(hook)), "caller": caller, "bulk": str(int(bulk)), "poll": poll_id,
            "patterns": json.dumps([list(p) for p in patterns]), "npatterns": str(max(1, len(patterns))),
            "prefix": prefix, "per_client": str(per_client), "n": "0", "recast": "0"}


@dataclass(frozen=True)
class Run:
    script: str | Path  # a file of SCRIPTS by name, or a path
    url: str
    clients: int
    seconds: float = 0.0  # -T: this long, unless transactions says how many per client (-t)
    protocol: str = "prepared"  # prepared | extended (PostgREST without prepared statements) | simple
    variables: dict[str, str] = field(default_factory=dict)
    transactions: int = 0


@dataclass(frozen=True)
class Transaction:
    """One committed transaction, from pgbench's log."""

    client: int
    number: int  # the client's 0-based count: its slot is client * per_client + number
    end: float  # epoch seconds, when it committed
    seconds: float  # its latency


@dataclass(frozen=True)
class Figures:
    transactions: int
    per_second: float
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # 0; 2: some clients were aborted (an error ends a pgbench client)
    processed: int
    per_second: float  # pgbench's tps, without the initial connection time (none when every client aborted: 0)
    committed: list[Transaction]
    aborted: dict[int, str]  # client -> the error that ended it
    cpu_seconds: float  # pgbench's own user + system time
    output: str  # its summary

    def figures(self) -> Figures:
        latencies_ms = sorted(t.seconds * 1000 for t in self.committed)
        cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive") if len(latencies_ms) > 1 else [0.0] * 99
        return Figures(self.processed, self.per_second, len(self.aborted), cuts[49], cuts[94], cuts[98],
                       latencies_ms[-1] if latencies_ms else 0.0)


class PgbenchFailed(RuntimeError):
    pass


ABORTED = re.compile(r"client (\d+) (?:script \d+ )?aborted in command \d+[^:]*: (.*)")


def execute(r: Run, on_progress: Callable[[str], None] = lambda line: None) -> Outcome:
    """Run pgbench to its end; ``on_progress`` gets each of its -P 1 lines (one a second) as it prints it.

    A run whose clients were aborted is an outcome (``exit_code`` 2, ``aborted``), not an exception:
    the caller decides; a pgbench that could not run at all raises :class:`PgbenchFailed`.
    """
    script = r.script if isinstance(r.script, Path) else SCRIPTS / r.script
    with tempfile.TemporaryDirectory(prefix="pgvote-pgbench-") as tmp:
        logs, summary = Path(tmp) / "tx", Path(tmp) / "summary"
        command = [pgbench_binary(), "-n", "-M", r.protocol, "-c", str(r.clients),
                   "-j", str(min(os.cpu_count() or 2, r.clients)), "-f", str(script), "-P", "1",
                   "-l", f"--log-prefix={logs}"]
        command += ["-t", str(r.transactions)] if r.transactions else ["-T", str(max(1, round(r.seconds)))]
        for name, value in r.variables.items():
            command += ["-D", f"{name}={value}"]
        aborted: dict[int, str] = {}
        other: list[str] = []
        with summary.open("w") as out:
            proc = subprocess.Popen([*command, r.url], stdout=out, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=raise_nofile_limit)
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("progress:"):
                    on_progress(line.strip())
                elif match := ABORTED.search(line):
                    aborted[int(match[1])] = match[2].strip()
                else:
                    other.append(line.strip())
            _, status, usage = os.wait4(proc.pid, 0)  # rusage: pgbench's CPU
            proc.returncode = os.waitstatus_to_exitcode(status)
        text = summary.read_text()
        committed = [Transaction(int(f[0]), int(f[1]) - 1, int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1e6)
                     for log in Path(tmp).glob("tx*") for f in (line.split() for line in log.read_text().splitlines())
                     if f and f[2].isdigit()]
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    if proc.returncode not in (0, 2) or processed is None or (tps is None and proc.returncode == 0):
        tail = "\n".join([*other, *aborted.values()][-5:] or text.strip().splitlines()[-5:])
        raise PgbenchFailed(f"pgbench {script.name} with {r.clients} clients failed ({proc.returncode}):\n{tail}")
    return Outcome(proc.returncode, int(processed[1]), float(tps[1]) if tps else 0.0, committed, aborted,
                   usage.ru_utime + usage.ru_stime, text)


def run(r: Run) -> Figures:
    """A benchmark run: every client must finish, else :class:`PgbenchFailed`."""
    outcome = execute(r)
    if outcome.aborted:
        client, error = next(iter(outcome.aborted.items()))
        raise PgbenchFailed(f"pgbench {r.script}: {len(outcome.aborted)} of {r.clients} clients aborted "
                            f"(client {client}: {error})")
    return outcome.figures()
