"""Issue 6, point 2 - restart and pause under load (PgBouncer's own suite names: test_database_restart,
test_pause_resume, test_reconnect): PostgreSQL fast restart gives bounded, retryable client errors and
nothing acknowledged is lost; PgBouncer PAUSE/RESUME and RECONNECT give no client error at all.
"""
from __future__ import annotations

import asyncio

from .checks import assert_no_errors, fault_round
from .loadgen import Load

PAUSE_SECONDS = 3.0


async def _a_quarter_in(load: Load, total: int) -> None:
    assert await load.until(lambda: load.acked >= total // 4, timeout=300), "load never got going"


def test_postgres_fast_restart_under_load(killable_stack, cluster, profile, figures) -> None:
    async def restart(load: Load) -> None:
        await _a_quarter_in(load, profile.fault_votes)
        load.notes["in_flight_at_restart"] = load.in_flight
        load.mark("restart")
        await asyncio.to_thread(cluster.restart_fast)  # pg_ctl stop -m fast; pg_ctl start (PgBouncer stays)
        load.mark("restarted")
        load.notes["restart_s"] = round(load.marks["restarted"] - load.marks["restart"], 3)

    result, verdict = fault_round(killable_stack, name="postgres_fast_restart", votes=profile.fault_votes,
                                  connections=profile.connections, fault=restart, figures=figures, seed=201)
    # retryable: every error is a lost connection (no answer), resolved above by an identical re-cast;
    # bounded: calls fail only around the restart, never after the service answers again
    assert not result.rejected()
    recovered = result.marks["restart"] + result.recovery_seconds("restart")
    late = [r for r in result.lost() if r.started > recovered]
    figures["postgres_fast_restart"].update(recovery_s=result.recovery_seconds("restart"),
                                            errors_after_recovery=len(late))
    assert not late, f"{len(late)} calls failed after the service had recovered: {late[:3]}"


def test_pgbouncer_pause_resume_under_load_has_no_client_error(killable_stack, cluster, bouncer, profile,
                                                               figures) -> None:
    async def pause(load: Load) -> None:
        await _a_quarter_in(load, profile.fault_votes)
        load.mark("pause")
        await bouncer.acommand("PAUSE pgvote", timeout=60)  # returns once every server connection is idle
        load.mark("paused")
        await asyncio.sleep(PAUSE_SECONDS)
        load.notes["in_flight_while_paused"] = load.in_flight
        load.mark("resume")
        await asyncio.to_thread(bouncer.command, "RESUME pgvote")

    result, _ = fault_round(killable_stack, name="pgbouncer_pause_resume", votes=profile.fault_votes,
                            connections=profile.connections, fault=pause, figures=figures, seed=202)
    figures["pgbouncer_pause_resume"].update(
        pause_took_s=round(result.marks["paused"] - result.marks["pause"], 3),
        paused_s=round(result.marks["resume"] - result.marks["paused"], 3),
        first_ack_after_resume_s=result.first_ack_after("resume"),
        latency_ms_after_resume=result.latency_ms(since=result.marks["resume"]))
    assert_no_errors(result)


def test_pgbouncer_reconnect_under_load_has_no_client_error(killable_stack, cluster, bouncer, profile,
                                                            figures) -> None:
    async def reconnect(load: Load) -> None:
        await _a_quarter_in(load, profile.fault_votes)
        before = (await asyncio.to_thread(bouncer.pool)).get("sv_active", 0)
        load.mark("reconnect")
        await asyncio.to_thread(bouncer.command, "RECONNECT pgvote")  # close each server conn once released
        load.notes["server_connections_active_at_reconnect"] = before

    result, _ = fault_round(killable_stack, name="pgbouncer_reconnect", votes=profile.fault_votes,
                            connections=profile.connections, fault=reconnect, figures=figures, seed=203)
    figures["pgbouncer_reconnect"]["latency_ms_after_reconnect"] = result.latency_ms(
        since=result.marks["reconnect"])
    assert_no_errors(result)
