"""What the server processes use during a run, found by their listening ports: memory as PSS (shared
buffers counted once), CPU seconds (utime + stime, exited backends through the postmaster's cutime +
cstime) and PgBouncer's pool peaks (docs/benchmarks.md)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg


@dataclass(frozen=True)
class MemorySample:
    t: float  # time.monotonic()
    postgres_pss: int  # bytes, postmaster + every child
    postgres_shmem_pss: int  # bytes, the shared-memory part of it
    postgres_processes: int
    bouncer_pss: int  # bytes, every pgbouncer process listening on the port

    @property
    def total(self) -> int:
        return self.postgres_pss + self.bouncer_pss

    @property
    def beyond_shared(self) -> int:
        return self.total - self.postgres_shmem_pss


def listening_pids(port: int) -> list[int]:
    """Pids of the processes holding a TCP socket that listens on ``port`` (IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in wanted:
                    pids.append(int(entry.name))
                    break
        except OSError:
            continue
    return sorted(pids)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends are children of the postmaster)."""
    out: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def pss(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Shmem) of one process in bytes; (0, 0) when it is gone."""
    total = shmem = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total = int(line.split()[1]) * 1024
            elif line.startswith("Pss_Shmem:"):
                shmem = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return total, shmem


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _ticks(pid: int, reaped_children: bool) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    own = int(fields[11]) + int(fields[12])  # utime, stime
    return own + (int(fields[13]) + int(fields[14]) if reaped_children else 0)  # cutime, cstime


@dataclass
class CpuMeter:
    """``ports``: server name -> listening port; ``postgres`` names the postmaster's port."""

    ports: dict[str, int]
    postgres: str = "postgres"
    _before: dict[str, int] = field(default_factory=dict)

    def _snapshot(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, port in self.ports.items():
            pids = listening_pids(port)
            if name == self.postgres and pids:
                postmaster = pids[0]
                out[name] = _ticks(postmaster, True) + sum(_ticks(c, False) for c in children(postmaster))
            elif pids:
                out[name] = sum(_ticks(p, False) for p in pids)
        return out

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> dict[str, float]:
        """Seconds of CPU per server since ``start()`` (servers not found are left out)."""
        hz = os.sysconf("SC_CLK_TCK")
        after = self._snapshot()
        return {name: round((after[name] - self._before.get(name, after[name])) / hz, 2)
                for name in after if name in self._before}


@dataclass
class MemorySampler:
    """Samples every ``interval`` seconds in a thread, between ``start()`` and ``stop()``.

    With ``bouncer_admin_url`` it also reads PgBouncer's ``SHOW POOLS`` each tick and keeps the peaks
    (clients connected and waiting for a server connection, server connections in use, longest wait).
    """

    postmaster_pid: int | None
    bouncer_pids: list[int]
    interval: float = 0.25
    bouncer_admin_url: str | None = None
    samples: list[MemorySample] = field(default_factory=list)
    pool_peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def for_ports(cls, pg_port: int | None, bouncer_port: int | None, interval: float = 0.25,
                  bouncer_admin_url: str | None = None) -> MemorySampler:
        """Find the servers by their listening ports (only the postmaster listens; backends do not)."""
        pg = listening_pids(pg_port) if pg_port else []
        return cls(pg[0] if pg else None, listening_pids(bouncer_port) if bouncer_port else [], interval,
                   bouncer_admin_url)

    @property
    def available(self) -> bool:
        return self.postmaster_pid is not None and os.access(f"/proc/{self.postmaster_pid}/smaps_rollup", os.R_OK)

    def sample(self) -> MemorySample:
        pg_total = pg_shmem = count = 0
        if self.postmaster_pid is not None:
            for pid in [self.postmaster_pid, *children(self.postmaster_pid)]:
                total, shmem = pss(pid)
                if total:
                    pg_total, pg_shmem, count = pg_total + total, pg_shmem + shmem, count + 1
        bouncer = sum(pss(pid)[0] for pid in self.bouncer_pids)
        return MemorySample(time.monotonic(), pg_total, pg_shmem, count, bouncer)

    def start(self) -> None:
        if not self.available and not self.bouncer_admin_url:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        admin = None
        if self.bouncer_admin_url:
            try:
                admin = psycopg.connect(self.bouncer_admin_url, autocommit=True, connect_timeout=5)
            except psycopg.Error:
                admin = None
        try:
            while not self._stop.is_set():
                if self.available:
                    self.samples.append(self.sample())
                if admin is not None:
                    self._sample_pools(admin)
                self._stop.wait(self.interval)
        finally:
            if admin is not None:
                admin.close()

    def _sample_pools(self, admin: psycopg.Connection) -> None:
        try:
            cur = admin.execute("SHOW POOLS")
            names = [d.name for d in cur.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except psycopg.Error:
            return
        totals = {"cl_active": 0, "cl_waiting": 0, "sv_active": 0, "maxwait": 0}
        for row in rows:
            if row.get("database") == "pgbouncer":
                continue
            for key, total in totals.items():
                value = int(row.get(key) or 0)
                totals[key] = max(total, value) if key == "maxwait" else total + value
        totals["clients"] = totals["cl_active"] + totals["cl_waiting"]
        for key, value in totals.items():
            self.pool_peaks[key] = max(self.pool_peaks.get(key, 0), value)

    def peak(self) -> MemorySample | None:
        return max(self.samples, key=lambda s: s.total) if self.samples else None

    def figures(self) -> dict[str, Any]:
        """Peak memory of the run (MiB), and PgBouncer's pool peaks."""
        peak = self.peak()
        if peak is None:
            return {"memory": {"available": False}, "pool": dict(self.pool_peaks)}
        mib = 1024 * 1024
        return {"memory": {"available": True, "samples": len(self.samples),
                           "peak_total_mib": round(peak.total / mib, 1),
                           "peak_postgres_pss_mib": round(peak.postgres_pss / mib, 1),
                           "peak_postgres_shmem_pss_mib": round(peak.postgres_shmem_pss / mib, 1),
                           "peak_beyond_shared_mib": round(max(x.beyond_shared for x in self.samples) / mib, 1),
                           "peak_bouncer_pss_mib": round(max(x.bouncer_pss for x in self.samples) / mib, 1),
                           "postgres_processes": max(x.postgres_processes for x in self.samples)},
                "pool": dict(self.pool_peaks)}


@contextmanager
def measuring(servers: dict[str, int], bouncer_admin_url: str | None, figures: dict[str, Any],
              interval: float = 0.25) -> Iterator[None]:
    """Sample memory and PgBouncer's pools, and meter each server's CPU, while the block runs; then put
    ``memory``, ``pool`` and ``cpu_seconds`` into ``figures``. ``servers``: name -> listening port of each
    server process on this machine (``postgres`` and ``pgbouncer`` are also sampled for memory)."""
    meter = CpuMeter(servers)
    memory = MemorySampler.for_ports(servers.get("postgres"), servers.get("pgbouncer"), interval, bouncer_admin_url)
    meter.start()
    memory.start()
    try:
        yield
    finally:
        memory.stop()
        figures.update(memory.figures(), cpu_seconds=meter.stop())
