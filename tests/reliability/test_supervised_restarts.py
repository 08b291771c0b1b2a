"""SIGKILL of a process the stack's supervisor keeps alive, under k6 load through nginx: one PostgREST
replica (nginx sends the calls to the other one meanwhile) and PgBouncer. The supervisor starts the process
again; clients see at worst a reset, 502, 503 or 504 and re-send the identical ballot; every acknowledged
vote is stored exactly once and poll_results equals the stored ballots.
"""
from __future__ import annotations

import pytest

from .checks import fault_round
from .faults import Supervised
from .k6round import Live
from .profile import PROFILE

REPLICA = "postgrest-blue-1"


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_sigkill_one_postgrest_replica_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile,
                                                                           figures, round_no) -> None:
    supervised = Supervised(killable_stack)
    restarts_before = supervised.restarts(REPLICA)

    def kill(live: Live) -> None:
        live.after_acks(profile.fault_votes // 3)
        pid = supervised.kill(REPLICA)
        live.mark("kill")
        supervised.wait_restarted(REPLICA, pid, lambda: killable_stack.component_ready(REPLICA))
        live.mark("back")

    name = f"postgrest_replica_sigkill[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus,
                                  fault=kill, figures=figures, seed=501 + 10 * round_no)
    t_kill, t_back = result.marks["kill"], result.marks["back"]
    sent_meanwhile = [a for a in result.attempts if t_kill <= a.started < t_back and not a.by_settle]
    figures[name].update(result.around("kill", "back"), sent_while_replica_down=len(sent_meanwhile),
                         acked_of_those=sum(a.acked for a in sent_meanwhile))
    assert supervised.restarts(REPLICA) > restarts_before, "the supervisor restarted the replica"
    assert any(a.acked for a in sent_meanwhile), "nginx sent calls to the other replica while this one was down"
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_sigkill_pgbouncer_mid_load_loses_no_acknowledged_vote(killable_stack, cluster, profile, figures,
                                                               round_no) -> None:
    supervised = Supervised(killable_stack)
    restarts_before = supervised.restarts("pgbouncer")

    def kill(live: Live) -> None:
        live.after_acks(profile.fault_votes // 3)
        pid = supervised.kill("pgbouncer")
        live.mark("kill")
        supervised.wait_restarted("pgbouncer", pid, lambda: killable_stack.component_ready("pgbouncer"))
        live.mark("back")

    name = f"pgbouncer_sigkill[{round_no}]"
    result, verdict = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus,
                                  fault=kill, figures=figures, seed=502 + 10 * round_no)
    figures[name].update(result.around("kill", "back"))
    assert supervised.restarts("pgbouncer") > restarts_before, "the supervisor restarted PgBouncer"
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
