"""Freeze: SIGSTOP the postmaster and every backend of the cluster for 5 s under k6 load through nginx, then
SIGCONT. Calls only wait: no error, except the clean, retryable overload answer (503 / 504) for a call that
waited longer than the configured queue wait (PgBouncer's query_wait_timeout, PostgREST's
db-pool-acquisition-timeout: 10 s, above the 5 s freeze). Nothing acknowledged is lost; the latency spike is
measured and reported (not asserted).
"""
from __future__ import annotations

import time

import pytest

from .checks import fault_round, overload_wait, unexplained_errors
from .k6round import Live
from .profile import PROFILE


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_sigstop_cluster_for_five_seconds_under_load_only_delays_calls(killable_stack, cluster, profile,
                                                                      figures, round_no) -> None:
    def freeze(live: Live) -> None:
        live.after_acks(profile.fault_votes // 4)
        frozen = cluster.freeze()
        live.mark("freeze")
        try:
            time.sleep(profile.freeze_seconds)
        finally:
            cluster.thaw(frozen)
            live.mark("thaw")
        live.notes["processes_frozen"] = len(frozen)

    name = f"freeze[{round_no}]"
    result, _ = fault_round(killable_stack, name=name, votes=profile.fault_votes, vus=profile.vus, fault=freeze,
                            figures=figures, seed=301 + 10 * round_no)
    t_freeze, t_thaw = result.marks["freeze"], result.marks["thaw"]
    figures[name].update(  # acked during the fault: answers already on their way when it began
        result.around("freeze", "thaw"),
        latency_ms_before=result.latency_ms(until=t_freeze),
        latency_ms_spanning_freeze=result.latency_ms(since=t_thaw, until=t_thaw + 2),
        first_ack_after_thaw_s=result.first_ack_after("thaw"))
    unexplained = unexplained_errors(result, overload_wait(killable_stack))
    assert not unexplained, unexplained
