"""Crash: SIGKILL the whole PostgreSQL (postmaster and every child at once), or one backend, in the middle
of a round of k6 votes through nginx -> PostgREST -> PgBouncer with >= 200 calls in flight. The stack's
supervisor starts PostgreSQL again (crash recovery); after a backend's death the postmaster resets and
recovers by itself. Clients see at worst a reset, 502, 503 or 504 and re-send the identical ballot; every
acknowledged vote is stored exactly once, and poll_results equals the stored ballots.
The kill waits, bounded, for the calls to be in flight: the cluster is frozen first (SIGSTOP, so nothing
is answered and every VU's next call stays pending), then killed once k6 reports enough sends unanswered.
A running load alone can fall short of the bar on a loaded machine, where k6's VUs spend part of their
time between calls.
Model: PostgreSQL's src/test/recovery/t/013_crash_restart.pl.
"""
from __future__ import annotations

import pytest

from .checks import fault_round
from .faults import wait_until
from .k6round import Live
from .profile import PROFILE


def _postgres_restarts(stack) -> int:
    return int(stack.status()["components"]["postgres"]["restarts"])


def _freeze_until_in_flight(cluster, live: Live, calls: int) -> list[int]:
    """Stop the whole cluster and wait (10 s at most) until k6 has ``calls`` calls in flight on it;
    returns the stopped pids. A shortfall is caught by the test's own check of the calls in flight."""
    frozen = cluster.freeze()
    live.until(lambda: live.in_flight >= calls, 10)
    return frozen


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_sigkill_whole_server_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile, figures,
                                                                   round_no) -> None:
    restarts_before = _postgres_restarts(killable_stack)

    def crash(live: Live) -> None:
        live.after_acks(profile.crash_votes // 3)
        _freeze_until_in_flight(cluster, live, profile.kill_in_flight)
        victims = cluster.kill_all()  # postmaster + every child, all stopped first: none runs in between
        live.mark("kill")
        live.notes["processes_killed"] = len(victims)
        cluster.wait_gone(victims)
        assert cluster.wait_ready(120), "the supervisor did not start PostgreSQL again"
        live.mark("restarted")

    name = f"crash_whole_server[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.crash_votes, vus=profile.vus,
                                  fault=crash, figures=figures, seed=round_no)
    figures[name].update(result.around("kill", "restarted"))
    assert _postgres_restarts(killable_stack) > restarts_before, "the supervisor restarted PostgreSQL"
    assert figures[name]["in_flight_at_fault"] >= profile.kill_in_flight
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_sigkill_one_backend_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile, figures,
                                                                  round_no) -> None:
    """A backend killed by SIGKILL makes the postmaster reset every backend and recover by itself."""
    def crash(live: Live) -> None:
        live.after_acks(profile.crash_votes // 3)
        # a busy backend is a sample of a moment: the load may be between commits when first looked at
        backends: list[int] = []
        assert wait_until(lambda: backends.extend(cluster.backend_pids(killable_stack.admin_url)) or backends, 10), \
            "no authenticator backend busy under load"
        master = cluster.postmaster_pid()
        frozen = _freeze_until_in_flight(cluster, live, profile.kill_in_flight)
        try:
            cluster.kill_backend(backends[0])
            live.mark("kill")
        finally:
            cluster.thaw(frozen)  # the postmaster sees its child's death now and resets the cluster
        cluster.wait_reaped(backends[0])  # the postmaster has started its reset
        assert cluster.wait_ready(120), "the cluster did not recover by itself"
        live.mark("restarted")
        assert cluster.postmaster_pid() == master, "the postmaster itself survives and resets the cluster"

    name = f"crash_one_backend[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.crash_votes, vus=profile.vus,
                                  fault=crash, figures=figures, seed=100 + round_no)
    figures[name].update(result.around("kill", "restarted"))  # restarted: the first admin login after the reset
    assert figures[name]["in_flight_at_fault"] >= profile.kill_in_flight
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
