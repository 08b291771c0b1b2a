"""Restart and pause under k6 load through nginx (PgBouncer's own suite names: test_database_restart,
test_pause_resume, test_reconnect): a PostgreSQL fast restart gives bounded, retryable client errors and
nothing acknowledged is lost; PgBouncer PAUSE/RESUME and RECONNECT give no client error, except (during a
pause) the clean overload answer of a call that waited past the configured queue wait.
"""
from __future__ import annotations

import time

import pytest

from .checks import assert_no_errors, fault_round, overload_wait, unexplained_errors
from .k6round import Live
from .profile import PROFILE

PAUSE_SECONDS = 3.0


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_postgres_fast_restart_under_load(killable_stack, cluster, profile, figures, round_no) -> None:
    def restart(live: Live) -> None:
        live.after_acks(profile.fault_votes // 4)
        live.mark("restart")
        cluster.restart_fast()  # pg_ctl stop -m fast; pg_ctl start (PgBouncer stays)
        live.mark("restarted")

    name = f"postgres_fast_restart[{round_no}]"
    result, _ = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus, fault=restart,
                            figures=figures, seed=201 + 10 * round_no)
    figures[name].update(result.around("restart", "restarted"))
    # every error was retryable (checked by fault_round) and they stop once the service answers again
    recovered = result.marks["restarted"] + 1.0
    late = [a.kind for a in result.attempts if not a.acked and a.started > recovered]
    figures[name]["errors_1s_after_restart"] = len(late)
    assert not late, f"{len(late)} calls failed after the service had recovered: {late[:3]}"


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_pgbouncer_pause_resume_under_load_only_delays_calls(killable_stack, cluster, bouncer, profile,
                                                               figures, round_no) -> None:
    def pause(live: Live) -> None:
        live.after_acks(profile.fault_votes // 4)
        live.mark("pause")
        bouncer.command("PAUSE pgvote")  # returns once every server connection is released
        live.mark("paused")
        time.sleep(PAUSE_SECONDS)
        live.mark("resume")
        bouncer.command("RESUME pgvote")

    name = f"pgbouncer_pause_resume[{round_no}]"
    result, _ = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus, fault=pause,
                            figures=figures, seed=202 + 10 * round_no)
    figures[name].update(result.around("pause", "resume"),
                         pause_took_s=round(result.marks["paused"] - result.marks["pause"], 3),
                         first_ack_after_resume_s=result.first_ack_after("resume"),
                         latency_ms_after_resume=result.latency_ms(since=result.marks["resume"]))
    # calls only wait; one that waited past PostgREST's pool wait (10 s) got the clean, retryable 504
    unexplained = unexplained_errors(result, overload_wait(killable_stack))
    assert not unexplained, unexplained


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_pgbouncer_reconnect_under_load_has_no_client_error(killable_stack, cluster, bouncer, profile, figures,
                                                            round_no) -> None:
    def reconnect(live: Live) -> None:
        live.after_acks(profile.fault_votes // 4)
        live.notes["server_connections_active_at_reconnect"] = bouncer.pool().get("sv_active", 0)
        live.mark("reconnect")
        bouncer.command("RECONNECT pgvote")  # close each server connection once it is released

    name = f"pgbouncer_reconnect[{round_no}]"
    result, _ = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus,
                            fault=reconnect, figures=figures, seed=203 + 10 * round_no)
    figures[name].update(result.around("reconnect"),
                         latency_ms_after_reconnect=result.latency_ms(since=result.marks["reconnect"]))
    assert_no_errors(result)
