"""Run one pgbench scenario and read its figures: votes/s from pgbench's summary, latency
percentiles from its per-transaction log (-l)."""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def pgbench_binary() -> str:
    """pgbench of the newest installed server (Debian keeps it out of PATH), else PATH's."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), key=lambda p: int(p.parts[-3]))
    found = str(candidates[-1]) if candidates else shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench not found: install the PostgreSQL server package (it ships pgbench)")
    return found


@dataclass(frozen=True)
class Run:
    script: str
    url: str
    clients: int
    seconds: float
    protocol: str = "prepared"  # prepared | extended (what PostgREST uses without prepared statements)
    variables: dict[str, str] = field(default_factory=dict)
    transactions: int | None = None  # per client, instead of running for `seconds` (a fixed amount of work)
    replace: dict[str, str] = field(default_factory=dict)  # literal text replaced in the script (identifiers)


@dataclass(frozen=True)
class Figures:
    transactions: int
    per_second: float
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class PgbenchFailed(RuntimeError):
    pass


def run(r: Run) -> Figures:
    with tempfile.TemporaryDirectory(prefix="pgvote-bench-") as logs:
        prefix = Path(logs) / "tx"
        script = Path(logs) / r.script
        text = (SCRIPTS / r.script).read_text()
        for old, new in r.replace.items():
            if old not in text:
                raise ValueError(f"{r.script} has no {old!r} to replace")
            text = text.replace(old, new)
        script.write_text(text)
        length = ["-t", str(r.transactions)] if r.transactions else ["-T", str(max(1, round(r.seconds)))]
        command = [pgbench_binary(), "-n", *length, "-c", str(r.clients),
                   "-j", str(min(2, r.clients)), "-M", r.protocol, "-f", str(script),
                   "-l", f"--log-prefix={prefix}"]
        for name, value in r.variables.items():
            command += ["-D", f"{name}={value}"]
        done = subprocess.run([*command, r.url], capture_output=True, text=True, check=False)
        if done.returncode != 0 or "tps =" not in done.stdout:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise PgbenchFailed(f"pgbench {r.script} with {r.clients} clients failed:\n{tail}")
        latencies_ms = sorted(int(line.split()[2]) / 1000.0
                              for log in Path(logs).glob("tx.*") for line in log.read_text().splitlines() if line)
    tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout).group(1))
    processed = int(re.search(r"number of transactions actually processed: (\d+)", done.stdout).group(1))
    failed_match = re.search(r"number of failed transactions: (\d+)", done.stdout)
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive") if len(latencies_ms) > 1 else [0.0] * 99
    return Figures(processed, tps, int(failed_match.group(1)) if failed_match else 0,
                   cuts[49], cuts[94], cuts[98], latencies_ms[-1] if latencies_ms else 0.0)
