"""What the server processes use during a run, found by their listening ports: memory as PSS (shared
buffers counted once), CPU seconds (utime + stime, exited backends through the postmaster's cutime +
cstime) and PgBouncer's pool peaks (docs/benchmarks.md)."""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from pgvote.stats import show
from pgvote.supervisor import children

MIB = 1024 * 1024


def server_ports(status: dict[str, Any]) -> dict[str, int]:
    """Listening port of each running server process of a stack's ``status()``: nginx, every PostgREST
    replica (by name), PgBouncer, PostgreSQL, the live-results publisher."""
    components = status.get("components", {})
    ports = {r["name"]: int(r["port"]) for r in components.get("postgrest", []) if r.get("running")}
    return ports | {name: int(components[name]["port"]) for name in ("nginx", "pgbouncer", "postgres", "publisher")
                    if components.get(name, {}).get("port")}


def local_ports(**urls: str) -> dict[str, int]:
    """name -> port of each URL that points at this machine (its servers can be measured)."""
    return {name: port for name, url in urls.items() if (u := urlsplit(url)).hostname in ("127.0.0.1", "localhost", "::1")
            and (port := u.port)}


def listening_pids(port: int) -> list[int]:
    """Pids of the processes holding a TCP socket that listens on ``port`` (IPv4 or IPv6)."""
    wanted = {f"socket:[{c[9]}]" for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")) if table.exists()
              for c in (line.split() for line in table.read_text().splitlines()[1:])
              if len(c) > 9 and c[3] == "0A" and int(c[1].rsplit(":", 1)[1], 16) == port}
    pids = []
    for entry in os.scandir("/proc") if wanted else ():
        with contextlib.suppress(OSError):  # a process that ended meanwhile, or one we may not read
            if entry.name.isdigit() and any(os.readlink(fd.path) in wanted for fd in os.scandir(f"{entry.path}/fd")):
                pids.append(int(entry.name))
    return sorted(pids)


def pss(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Shmem) of one process in bytes; (0, 0) when it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        return int(fields["Pss"].split()[0]) * 1024, int(fields["Pss_Shmem"].split()[0]) * 1024
    except (OSError, ValueError, KeyError):
        return 0, 0


def _ticks(pid: int, reaped_children: bool = False) -> int:
    try:
        f = [int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
    except (OSError, IndexError, ValueError):
        return 0
    return f[0] + f[1] + (f[2] + f[3] if reaped_children else 0)  # utime, stime (+ cutime, cstime)


def cluster_ticks(postmaster: int) -> int:
    """CPU ticks so far of a PostgreSQL cluster: its postmaster, the children it reaped, the live ones."""
    return _ticks(postmaster, True) + sum(_ticks(c) for c in children(postmaster))


def cpu_ticks(ports: dict[str, int]) -> dict[str, int]:
    """CPU ticks so far of each server found listening; ``postgres``: the postmaster with its children."""
    return {name: cluster_ticks(pids[0]) if name == "postgres" else sum(_ticks(p) for p in pids)
            for name, port in ports.items() if (pids := listening_pids(port))}


def pool_totals(admin: psycopg.Connection[Any]) -> dict[str, int]:
    """PgBouncer's SHOW POOLS over every pool but its own: clients connected, waiting, servers active, longest wait."""
    rows = show(admin, "pools")
    totals = {k: sum(int(r.get(k) or 0) for r in rows) for k in ("cl_active", "cl_waiting", "sv_active")}
    return {**totals, "clients": totals["cl_active"] + totals["cl_waiting"],
            "maxwait": max((int(r.get("maxwait") or 0) for r in rows), default=0)}


@contextmanager
def sampling(step: Callable[[], object], interval: float) -> Iterator[None]:
    """``step()`` every ``interval`` s in a thread of its own while the block runs (the load's clock readings
    never wait for it)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            step()
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@contextmanager
def measuring(servers: dict[str, int], bouncer_admin_url: str | None, figures: dict[str, Any],
              interval: float = 0.25) -> Iterator[None]:
    """While the block runs, sample the memory of ``postgres`` and ``pgbouncer`` and PgBouncer's pools every
    ``interval`` s, and meter each server's CPU; then put ``memory``, ``pool`` and ``cpu_seconds`` into
    ``figures``. ``servers``: name -> listening port of each server process on this machine."""
    pg, bouncers = (listening_pids(servers[name]) if name in servers else [] for name in ("postgres", "pgbouncer"))
    readable = bool(pg) and os.access(f"/proc/{pg[0]}/smaps_rollup", os.R_OK)
    samples: list[tuple[int, int, int, int]] = []  # postgres PSS, its shared part, its processes, PgBouncer PSS
    peaks: dict[str, int] = {}

    def sample(admin: psycopg.Connection[Any] | None) -> None:
        if readable:
            pgs = [pss(p) for p in [pg[0], *children(pg[0])]]
            samples.append((sum(t for t, _ in pgs), sum(s for _, s in pgs), sum(t > 0 for t, _ in pgs),
                            sum(pss(p)[0] for p in bouncers)))
        with contextlib.suppress(psycopg.Error):
            for key, value in (pool_totals(admin) if admin else {}).items():
                peaks[key] = max(peaks.get(key, 0), value)

    try:
        admin = psycopg.connect(bouncer_admin_url, autocommit=True, connect_timeout=5) if bouncer_admin_url else None
    except psycopg.Error:
        admin = None
    before = cpu_ticks(servers)
    try:
        with sampling(lambda: sample(admin), interval):
            yield
    finally:
        if admin is not None:
            admin.close()
        after, hz = cpu_ticks(servers), os.sysconf("SC_CLK_TCK")
        memory: dict[str, Any] = {"available": bool(samples)}
        if samples:
            peak = max(samples, key=lambda s: s[0] + s[3])
            memory |= {"samples": len(samples), "peak_total_mib": round((peak[0] + peak[3]) / MIB, 1),
                       "peak_postgres_pss_mib": round(peak[0] / MIB, 1),
                       "peak_postgres_shmem_pss_mib": round(peak[1] / MIB, 1),
                       "peak_beyond_shared_mib": round(max(s[0] + s[3] - s[1] for s in samples) / MIB, 1),
                       "peak_bouncer_pss_mib": round(max(s[3] for s in samples) / MIB, 1),
                       "postgres_processes": max(s[2] for s in samples)}
        figures.update(memory=memory, pool=peaks,
                       cpu_seconds={n: round((after[n] - before[n]) / hz, 2) for n in after if n in before})
