"""Fault injectors for the reliability suite, each bound to ONE private stack.

- :class:`Cluster`: SIGKILL / SIGSTOP / SIGCONT the PostgreSQL cluster of a private LocalStack, or one of
  its backends; fast restart. Processes are found from that stack's data directory (postmaster.pid)
  and checked before any signal: the postmaster's command line must name the data dir and every
  process signalled must be the postmaster or its child. Other clusters on the machine are never
  touched.
- :class:`Supervised`: SIGKILL of a process the stack's supervisor runs (a PostgREST replica, PgBouncer),
  and the wait for the supervisor to bring it back.
- :class:`Bouncer`: PgBouncer's admin console (PAUSE, RESUME, RECONNECT, SHOW).
- :class:`TcpProxy`: the breakable proxy process of ``tcp_proxy.py`` between PgBouncer and PostgreSQL.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from pgvote.stack import LocalStack, wait_until
from pgvote.supervisor import children

PROXY_SCRIPT = Path(__file__).with_name("tcp_proxy.py")


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Cluster:
    """The PostgreSQL processes of one private LocalStack."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.data_dir = stack.data_dir.resolve()

    # ---- finding our processes -------------------------------------------------------------------
    def postmaster_pid(self) -> int:
        """The live postmaster of THIS data dir (checked against its command line)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError) as exc:
            raise AssertionError(f"no postmaster.pid in {self.data_dir}") from exc
        stat = _proc_stat(pid)
        cmd = _cmdline(pid)
        if stat is None or stat[0] in ("Z", "X") or f"-D {self.data_dir}" not in cmd:
            raise AssertionError(f"pid {pid} from {self.data_dir}/postmaster.pid is not its postmaster: {cmd!r}")
        return pid

    def pids(self) -> list[int]:
        """Postmaster first, then all its children (backends, checkpointer, walwriter, ...)."""
        master = self.postmaster_pid()
        return [master, *children(master)]

    def backend_pids(self, admin_url: str, usename: str = "authenticator", active_only: bool = True) -> list[int]:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "select pid from pg_stat_activity where usename = %s and pid <> pg_backend_pid()"
                + (" and state in ('active', 'idle in transaction')" if active_only else ""), (usename,)
            ).fetchall()
        children = set(self.pids()[1:])
        return [r[0] for r in rows if r[0] in children]

    # ---- faults ----------------------------------------------------------------------------------------
    def _stop_all(self) -> list[int]:
        """SIGSTOP the postmaster (so it can neither fork nor react), then every child: from here on
        none of them runs. Every child is its own process group (PostgreSQL calls setsid() in each
        child), so there is no single group to signal. Returns the stopped pids, postmaster first."""
        master = self.postmaster_pid()
        os.kill(master, signal.SIGSTOP)
        victims = self.pids()
        for pid in victims[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return victims

    def kill_all(self) -> list[int]:
        """SIGKILL the postmaster and all its children at once, as a machine crash would: all are
        stopped first, then killed, so none runs in between. Returns the pids; pair with wait_gone().
        Fast: safe to call from an event loop."""
        victims = self._stop_all()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return victims

    def wait_gone(self, pids: list[int], timeout: float = 30) -> None:
        """Wait until the killed processes are gone. An orphaned postmaster is reaped by init, which
        may take a moment; until then its pid still answers kill(pid, 0) and PostgreSQL would refuse
        to start ("lock file postmaster.pid already exists")."""
        def dead(pid: int) -> bool:
            return (st := _proc_stat(pid)) is None or st[0] in ("Z", "X")

        assert wait_until(lambda: all(dead(p) for p in pids), timeout), f"processes survived SIGKILL: {pids}"
        master = pids[0]
        if not wait_until(lambda: _proc_stat(master) is None, timeout):
            # a zombie nobody reaps: it is dead, so its lock file is stale (PostgreSQL's own rule)
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    @staticmethod
    def wait_reaped(pid: int, timeout: float = 30) -> None:
        """Wait until pid is gone, zombie included: for a backend, until the postmaster has reaped it and so
        begun its crash reset (before that, a new login can still succeed and would be reset too)."""
        assert wait_until(lambda: _proc_stat(pid) is None, timeout), f"{pid} was not reaped"

    def kill_backend(self, pid: int) -> None:
        """SIGKILL one backend of this cluster (the postmaster then resets the whole cluster and recovers)."""
        assert pid in self.pids()[1:], f"{pid} is not a backend of {self.data_dir}"
        os.kill(pid, signal.SIGKILL)

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and every child; returns the stopped pids (pass them to thaw())."""
        return self._stop_all()

    def thaw(self, frozen: list[int] | None = None) -> None:
        """SIGCONT the cluster (idempotent; safe in a finally block)."""
        pids = list(frozen or [])
        with contextlib.suppress(AssertionError):
            pids += self.pids()
        for pid in reversed(dict.fromkeys(pids)):  # children first, the postmaster last
            with contextlib.suppress(ProcessLookupError):
                if (st := _proc_stat(pid)) is not None and st[0] == "T":
                    os.kill(pid, signal.SIGCONT)

    def restart_fast(self) -> None:
        """PostgreSQL only (PgBouncer stays up): fast shutdown, then start. The launcher's lock is held
        throughout, as `pgvote up` holds it, so the supervisor (which restarts a postmaster that is
        gone) waits instead of starting PostgreSQL between the two steps."""
        self.stack.restart_postgres()

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.stack.admin_url, autocommit=True, connect_timeout=2) as conn:
                conn.execute("select 1")
            return True
        except psycopg.Error:
            return False

    def wait_ready(self, timeout: float = 60) -> bool:
        return wait_until(self.ready, timeout, 0.1)

    def running(self) -> bool:
        try:
            self.postmaster_pid()
            return True
        except AssertionError:
            return False


class Supervised:
    """The processes the stack's supervisor keeps alive (PgBouncer, the PostgREST replicas, nginx)."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def restarts(self, name: str) -> int:
        """How often the supervisor has restarted the component (pgvote status)."""
        components = self.stack.status()["components"]
        entries = {"pgbouncer": components["pgbouncer"], "nginx": components["nginx"],
                   **{r["name"]: r for r in components["postgrest"]}}
        return int(entries[name]["restarts"])

    def kill(self, name: str) -> int:
        """SIGKILL the component (by the pid the supervisor recorded for it); returns that pid."""
        pid = self.stack.component_pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, ready: Any, timeout: float = 60) -> None:
        """Wait until the supervisor runs `name` again under a new pid and ready() holds."""
        def back() -> bool:
            pid = self.stack.component_pid(name)
            return pid is not None and pid != old_pid and bool(ready())

        assert wait_until(back, timeout, 0.02), f"the supervisor did not bring {name} back within {timeout} s"


class Bouncer:
    """PgBouncer's admin console of one stack."""

    def __init__(self, stack: LocalStack) -> None:
        self.url = stack.bouncer_admin_url

    def command(self, text: str) -> list[tuple[Any, ...]]:
        """A console command; PAUSE returns once every server connection is released."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            with conn.cursor(binary=False) as cur:
                cur.execute(text, prepare=False)
                return cur.fetchall() if cur.description else []

    def show(self, what: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            with conn.cursor(binary=False) as cur:
                cur.execute(f"SHOW {what}", prepare=False)
                names = [d.name for d in cur.description or []]
                return [dict(zip(names, row)) for row in cur.fetchall()]

    def setting(self, key: str) -> str:
        """A running PgBouncer setting (SHOW CONFIG), e.g. query_wait_timeout."""
        for row in self.show("CONFIG"):
            if row.get("key") == key:
                return str(row["value"])
        raise KeyError(key)

    def pool(self, database: str = "pgvote", user: str = "authenticator") -> dict[str, Any]:
        for row in self.show("POOLS"):
            if row.get("database") == database and row.get("user") == user:
                return row
        return {}


class TcpProxy:
    """Controller of one ``tcp_proxy.py`` process (127.0.0.1:listen_port -> 127.0.0.1:target_port)."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROXY_SCRIPT), str(self.listen_port), str(self.target_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        first = self._readline(10)
        assert first.startswith("ok listening"), f"proxy did not start: {first!r}"

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"proxy did not answer within {timeout} s")
        return self.proc.stdout.readline().strip()

    def send(self, command: str, timeout: float = 10) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.poll() is None, "proxy not running"
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self._readline(timeout)
        assert reply.startswith("ok"), f"proxy refused {command!r}: {reply!r}"
        return reply

    def passthrough(self) -> None:
        self.send("pass")

    def delay(self, ms: float) -> None:
        self.send(f"delay {ms}")

    def stall(self) -> None:
        self.send("stall")

    def cut(self) -> None:
        self.send("cut")

    def refuse(self) -> None:
        self.send("refuse")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its pid
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
