"""Network faults between PgBouncer and PostgreSQL, through a TCP proxy the test controls (tcp_proxy.py;
PgBouncer's [databases] entry points at it), under k6 load through nginx: added latency, a silent link
(every packet held for a while, then delivered as TCP retransmits would), a cut link (every connection
reset) and a link that is down for a while. Clients see bounded, retryable errors at worst and re-send the
identical ballot; nothing acknowledged is lost, and the service recovers.
"""
from __future__ import annotations

import time

import pytest

from .checks import fault_round, overload_wait, unexplained_errors
from .k6round import Live
from .profile import PROFILE

FAULT_SECONDS = 5.0
LATENCY_MS = 20


def _stack(proxied_stack):
    return proxied_stack[0]


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_added_latency_only_slows_calls(proxied_stack, tcp_proxy, profile, figures, round_no) -> None:
    def latency(live: Live) -> None:
        live.after_acks(profile.network_votes // 4)
        live.mark("delay")
        tcp_proxy.delay(LATENCY_MS)
        time.sleep(FAULT_SECONDS)
        live.mark("undelay")
        tcp_proxy.passthrough()

    name = f"network_latency[{round_no}]"
    result, _ = fault_round(_stack(proxied_stack), name=name, votes=profile.network_votes, vus=profile.vus,
                            fault=latency, figures=figures, seed=401 + 10 * round_no)
    figures[name].update(
        result.around("delay", "undelay"), added_ms_per_packet=LATENCY_MS,
        latency_ms_before=result.latency_ms(until=result.marks["delay"]),
        latency_ms_during=result.latency_ms(since=result.marks["delay"] + 1, until=result.marks["undelay"]))
    # calls only slow down: no error but the clean overload answer past the configured queue wait
    unexplained = unexplained_errors(result, overload_wait(_stack(proxied_stack)))
    assert not unexplained, unexplained


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_silent_link_drops_no_acknowledged_vote(proxied_stack, tcp_proxy, profile, figures, round_no) -> None:
    """Every packet held for 5 s (as if dropped and retransmitted), then delivered."""
    def stall(live: Live) -> None:
        live.after_acks(profile.network_votes // 4)
        live.mark("stall")
        tcp_proxy.stall()
        time.sleep(FAULT_SECONDS)
        live.mark("flow")
        tcp_proxy.passthrough()

    name = f"network_silent_link[{round_no}]"
    result, _ = fault_round(_stack(proxied_stack), name=name, votes=profile.network_votes, vus=profile.vus,
                            fault=stall, figures=figures, seed=402 + 10 * round_no)
    figures[name].update(result.around("stall", "flow"), first_ack_after_link_back_s=result.first_ack_after("flow"))
    assert result.first_ack_after("flow") is not None, "service recovered"


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_cut_link_gives_retryable_errors_and_recovers(proxied_stack, tcp_proxy, profile, figures,
                                                      round_no) -> None:
    """Every PgBouncer-PostgreSQL connection reset at once; PgBouncer opens new ones."""
    def cut(live: Live) -> None:
        live.after_acks(profile.network_votes // 4)
        tcp_proxy.cut()
        live.mark("cut")

    name = f"network_cut_link[{round_no}]"
    result, _ = fault_round(_stack(proxied_stack), name=name, votes=profile.network_votes, vus=profile.vus,
                            fault=cut, figures=figures, seed=403 + 10 * round_no)
    figures[name].update(result.around("cut"))
    assert result.first_ack_after("cut") is not None, "service recovered"


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
def test_link_down_for_five_seconds_gives_retryable_errors_and_recovers(proxied_stack, tcp_proxy, profile,
                                                                        figures, round_no) -> None:
    """Every connection reset and new ones refused for 5 s, then the link is back."""
    def down(live: Live) -> None:
        live.after_acks(profile.network_votes // 4)
        tcp_proxy.refuse()
        tcp_proxy.cut()
        live.mark("down")
        time.sleep(FAULT_SECONDS)
        live.mark("up")
        tcp_proxy.passthrough()

    name = f"network_link_down[{round_no}]"
    result, _ = fault_round(_stack(proxied_stack), name=name, votes=profile.network_votes, vus=profile.vus,
                            fault=down, figures=figures, seed=404 + 10 * round_no)
    figures[name].update(result.around("down", "up"), first_ack_after_link_back_s=result.first_ack_after("up"))
    assert result.first_ack_after("up") is not None, "service recovered"
