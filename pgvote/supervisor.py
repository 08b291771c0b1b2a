"""Keeps the stack's long-running processes alive: PgBouncer, the PostgREST replicas, nginx, PostgreSQL.

`pgvote up` starts one detached supervisor per state dir. It reads ``supervisor/spec.json`` (written by
the launcher), runs every process component in the foreground as its child and restarts one that exits,
with a backoff when it keeps failing; PostgreSQL runs under pg_ctl (it daemonises) and is started again
when its postmaster is gone. Starts, exits and restarts go to ``supervisor/status.json`` (`pgvote status`).

Signals: SIGHUP re-reads the spec (components added are started, removed ones stopped: how blue-green
adds and retires PostgREST replicas); SIGTERM stops every child and exits. The supervisor also exits,
stopping its children, when its state dir disappears (a test's temp stack deleted under it).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.2
STOP_TIMEOUT = 10.0
MAX_BACKOFF = 5.0
STABLE_AFTER = 10.0  # a run this long resets the backoff


def spec_path(state_dir: Path) -> Path:
    return state_dir / "supervisor" / "spec.json"


def read_status(state_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads((state_dir / "supervisor" / "status.json").read_text()))
    return {}


@dataclass
class Component:
    """One supervised process, as described by the launcher's spec."""

    name: str
    argv: list[str]
    log: str
    cwd: str
    env: dict[str, str]
    uid: int | None = None
    gid: int | None = None
    stop_signal: int = signal.SIGTERM
    pidfile: str = ""  # kind "pg_ctl": argv starts it, the postmaster's pid is read from here
    kind: str = "process"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    started_at: float | None = None
    next_start: float = 0.0
    failures: int = 0
    state: str = "new"  # new | running | backoff


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE := hard limit: one descriptor per client connection (pgbench refuses to start
    more clients than it may open files; k6 holds a socket per VU, nginx one per watcher)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def alive(pid: int | None, name: str = "") -> bool:
    """True when pid is a live (non-zombie) process whose command line mentions name."""
    if not pid or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and name in cmdline


def live_pid(path: str | Path, name: str = "") -> int | None:
    """The pid on the first line of a pid file (a postmaster.pid too) while that process lives (and its
    command line mentions name)."""
    try:
        pid = int(Path(path).read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if alive(pid, name) else None


def children(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, parent = stat.read_text().rsplit(")", 1)[-1].split()[:2]
            if int(parent) == pid and state not in ("Z", "X"):
                found.append(int(stat.parent.name))
    return found


class Supervisor:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.components: dict[str, Component] = {}
        self.reload_wanted = True
        self.stop_wanted = False
        self.events: list[str] = []

    def load_spec(self) -> None:
        spec = json.loads(spec_path(self.state_dir).read_text())
        wanted = {c.name: c for c in (Component(**e) for e in spec["components"])}
        for name in [n for n, c in self.components.items()  # a changed command line, kind or user: another one
                     if n not in wanted or (c.argv, c.kind, c.uid) != (wanted[n].argv, wanted[n].kind, wanted[n].uid)]:
            self.stop(self.components.pop(name))
        for name, component in wanted.items():
            self.components.setdefault(name, component)

    def write_status(self) -> None:
        components = {c.name: {"pid": c.pid if alive(c.pid) else None, "restarts": c.restarts, "last_exit": c.last_exit,
                               "started_at": c.started_at} for c in self.components.values()}
        data = {"pid": os.getpid(), "updated_at": time.time(), "components": components, "events": self.events[-20:]}
        tmp = self.state_dir / "supervisor" / ".status.json.tmp"
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(tmp.with_name("status.json"))

    def note(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        self.events.append(line)
        print(line, flush=True)

    def start(self, c: Component) -> bool:
        """Start c; False (try again soon) while the launcher holds the state dir's lock: it is starting
        or stopping PostgreSQL itself, and a pg_ctl component must never race it."""
        with open(c.log, "ab") as log, open(self.state_dir / ".lock", "a+") as lock:
            spawn: Any = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT, "cwd": c.cwd, "env": c.env,
                          "user": c.uid, "group": c.gid, "extra_groups": [] if c.uid is not None else None}
            if c.kind != "pg_ctl":
                c.proc = subprocess.Popen(c.argv, preexec_fn=raise_nofile_limit, start_new_session=True, **spawn)
            else:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                if live_pid(c.pidfile) is None:
                    subprocess.run(c.argv, timeout=120, check=False, **spawn)
        c.pid = c.proc.pid if c.proc is not None else live_pid(c.pidfile)
        c.started_at = time.time()
        return True

    def running(self, c: Component) -> bool:
        if c.kind == "pg_ctl":
            c.pid = live_pid(c.pidfile)  # the launcher may have restarted it meanwhile
            return c.pid is not None
        return c.proc is not None and c.proc.poll() is None

    def check(self, c: Component, now: float) -> None:
        """One step of c's life: new -> running -> (exited) backoff -> running ..."""
        if c.state == "running":
            if self.running(c):
                if c.started_at and now - c.started_at > STABLE_AFTER:
                    c.failures = 0
                return
            c.last_exit = c.proc.returncode if c.proc is not None else None
            if c.proc is not None:
                # Children a killed component leaves behind (nginx's workers keep serving the old configuration
                # on the inherited socket) die with it: each component is its own process group (start_new_session).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
            c.failures += 1
            c.next_start = now + min(MAX_BACKOFF, 0.2 * 2 ** (c.failures - 1))
            c.state = "backoff"
            self.note(f"{c.name} exited (code {c.last_exit}); restarting in {c.next_start - now:.1f} s")
            self.write_status()
            return
        if now < c.next_start:
            return
        try:
            if not self.start(c):
                c.next_start = now + 0.5
                return
        except (OSError, subprocess.SubprocessError) as exc:
            c.failures += 1
            c.next_start = now + min(MAX_BACKOFF, 0.2 * 2 ** c.failures)
            self.note(f"{c.name} failed to start: {exc}")
            return
        if c.state == "backoff":
            c.restarts += 1
            self.note(f"{c.name} restarted (pid {c.pid}, restart #{c.restarts})")
        c.state = "running"
        self.write_status()

    def stop(self, c: Component) -> None:
        if c.kind == "pg_ctl" or c.proc is None or c.proc.poll() is not None:
            return  # PostgreSQL is stopped by the launcher (pg_ctl stop), after the supervisor exits
        with contextlib.suppress(ProcessLookupError):
            c.proc.send_signal(c.stop_signal)
        try:
            c.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(timeout=5)
        self.note(f"{c.name} stopped")

    def run(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_wanted", True))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stop_wanted", True))
        self.note(f"supervisor started (pid {os.getpid()})")
        while not self.stop_wanted:
            if not spec_path(self.state_dir).is_file():
                self.note("state dir gone: stopping")
                break
            if self.reload_wanted:
                self.reload_wanted = False
                self.load_spec()
                self.write_status()
            now = time.time()
            for c in list(self.components.values()):
                self.check(c, now)
            time.sleep(POLL_INTERVAL)
        for c in reversed(list(self.components.values())):
            self.stop(c)
        self.components = {n: c for n, c in self.components.items() if c.kind == "pg_ctl"}
        self.write_status()
        return 0


def main(argv: list[str]) -> int:
    """`python -m pgvote.supervisor <state dir> <pid file>` (run by the launcher): detach (the launcher's
    child exits at once, so no launcher ever holds a zombie), write the pid file, supervise."""
    state_dir, pid_file = argv
    if os.fork() > 0:
        return 0
    os.setsid()
    Path(pid_file).write_text(f"{os.getpid()}\n")
    return Supervisor(Path(state_dir)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
