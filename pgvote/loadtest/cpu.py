"""CPU seconds each server process used during a run: ``/proc/<pid>/stat`` utime + stime, before and after.

Servers are found by the TCP port they listen on (``memory.listening_pids``): nginx's master and
workers all hold the listening socket, PostgREST and PgBouncer are one process each. PostgreSQL's
backends do not listen: the postmaster's children are added, and ``cutime + cstime`` of the
postmaster counts the backends that exited during the run (reaped children's time lands there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pgvote.loadtest.memory import children, listening_pids


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
