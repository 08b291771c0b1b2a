"""Issue 6, point 1 - crash: SIGKILL the whole server, or one backend, in the middle of a round of votes
through PgBouncer with >= 200 calls in flight; restart. Every acknowledged vote is stored exactly once,
every lost call is resolved by an identical re-cast (recorded / unchanged) and ends stored once, and
poll_results equals the stored ballots. Model: PostgreSQL's src/test/recovery/t/013_crash_restart.pl.
"""
from __future__ import annotations

import asyncio

import pytest

from .checks import fault_round
from .loadgen import Load
from .profile import PROFILE


async def _when_loaded(load: Load, total: int, in_flight: int) -> None:
    """Wait until a third of the round is acknowledged with at least `in_flight` calls unanswered."""
    peaked = await load.until(lambda: load.acked >= total // 3 and load.in_flight >= in_flight, timeout=300)
    assert peaked, f"load never reached {in_flight} calls in flight (acked {load.acked}, in flight {load.in_flight})"


@pytest.mark.parametrize("round_no", range(PROFILE.crash_rounds))
def test_sigkill_whole_server_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile, figures,
                                                                   round_no) -> None:
    async def crash(load: Load) -> None:
        await _when_loaded(load, profile.crash_votes, profile.kill_in_flight)
        in_flight, acked = load.in_flight, load.acked
        load.mark("kill")
        victims = cluster.kill_all()  # postmaster + every child; nothing awaited in between
        load.notes.update(in_flight_at_kill=in_flight, acked_at_kill=acked, processes_killed=len(victims))
        await asyncio.to_thread(cluster.wait_gone, victims)
        await asyncio.to_thread(killable_stack.up)  # PostgreSQL starts with crash recovery; PgBouncer stayed up
        load.mark("restarted")
        load.notes["restart_s"] = round(load.marks["restarted"] - load.marks["kill"], 3)

    name = f"crash_whole_server[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.crash_votes,
                                  connections=profile.connections, fault=crash, figures=figures, seed=round_no)
    assert result.notes["in_flight_at_kill"] >= profile.kill_in_flight
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
    figures[name]["recovery_s"] = result.recovery_seconds("kill")


@pytest.mark.parametrize("round_no", range(PROFILE.crash_rounds))
def test_sigkill_one_backend_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile, figures,
                                                                  round_no) -> None:
    """A backend killed by SIGKILL makes the postmaster reset every backend and recover by itself."""
    async def crash(load: Load) -> None:
        await _when_loaded(load, profile.crash_votes, profile.kill_in_flight)
        backends = await asyncio.to_thread(cluster.backend_pids, killable_stack.admin_url)
        assert backends, "no authenticator backend busy under load"
        master = cluster.postmaster_pid()
        in_flight, acked = load.in_flight, load.acked
        load.mark("kill")
        cluster.kill_backend(backends[0])
        load.notes.update(in_flight_at_kill=in_flight, acked_at_kill=acked)
        await asyncio.to_thread(cluster.wait_reaped, backends[0])  # the postmaster has started its reset
        assert await asyncio.to_thread(cluster.wait_ready, 120), "the cluster did not recover by itself"
        load.mark("restarted")
        load.notes["restart_s"] = round(load.marks["restarted"] - load.marks["kill"], 3)
        assert cluster.postmaster_pid() == master, "the postmaster itself survives and resets the cluster"

    name = f"crash_one_backend[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.crash_votes,
                                  connections=profile.connections, fault=crash, figures=figures,
                                  seed=100 + round_no)
    assert result.notes["in_flight_at_kill"] >= profile.kill_in_flight
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
    figures[name]["recovery_s"] = result.recovery_seconds("kill")
