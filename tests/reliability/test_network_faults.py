"""Issue 6, point 4 - network faults between PgBouncer and PostgreSQL, through a TCP proxy the test controls
(tcp_proxy.py; PgBouncer's [databases] entry points at it): added latency, a silent link (every packet
dropped for a while, then delivered as TCP retransmits would), a cut link (every connection reset) and a
link that is down for a while. Clients see bounded, retryable errors at worst (lost connections, resolved by
an identical re-cast), nothing acknowledged is lost, and the service recovers.
"""
from __future__ import annotations

import asyncio

from .checks import fault_round, query_wait_timeout, unexplained_errors
from .loadgen import Load

FAULT_SECONDS = 5.0
LATENCY_MS = 20


async def _a_quarter_in(load: Load, total: int) -> None:
    assert await load.until(lambda: load.acked >= total // 4, timeout=300), "load never got going"


def _stack(proxied_stack):
    return proxied_stack[0]


def test_added_latency_only_slows_calls(proxied_stack, tcp_proxy, profile, figures) -> None:
    async def latency(load: Load) -> None:
        await _a_quarter_in(load, profile.network_votes)
        load.mark("delay")
        await asyncio.to_thread(tcp_proxy.delay, LATENCY_MS)
        await asyncio.sleep(FAULT_SECONDS)
        load.mark("undelay")
        await asyncio.to_thread(tcp_proxy.passthrough)

    result, _ = fault_round(_stack(proxied_stack), name="network_latency", votes=profile.network_votes,
                            connections=profile.connections, fault=latency, figures=figures, seed=401)
    figures["network_latency"].update(
        added_ms_per_packet=LATENCY_MS,
        latency_ms_before=result.latency_ms(until=result.marks["delay"]),
        latency_ms_during=result.latency_ms(since=result.marks["delay"] + 1, until=result.marks["undelay"]))
    # calls only slow down: no error but PgBouncer's clean overload answer past its configured wait
    assert not unexplained_errors(result.records, query_wait_timeout(_stack(proxied_stack))), \
        result.errors_by_kind()


def test_silent_link_drops_no_acknowledged_vote(proxied_stack, tcp_proxy, profile, figures) -> None:
    """Every packet dropped for 5 s (the proxy holds them; TCP would retransmit), then delivered."""
    async def stall(load: Load) -> None:
        await _a_quarter_in(load, profile.network_votes)
        load.mark("stall")
        await asyncio.to_thread(tcp_proxy.stall)
        await asyncio.sleep(FAULT_SECONDS)
        load.mark("flow")
        await asyncio.to_thread(tcp_proxy.passthrough)

    result, _ = fault_round(_stack(proxied_stack), name="network_silent_link", votes=profile.network_votes,
                            connections=profile.connections, fault=stall, figures=figures, seed=402)
    assert not result.rejected()
    figures["network_silent_link"].update(silent_s=FAULT_SECONDS,
                                          first_ack_after_link_back_s=result.first_ack_after("flow"))
    assert result.first_ack_after("flow") is not None, "service recovered"


def test_cut_link_gives_retryable_errors_and_recovers(proxied_stack, tcp_proxy, profile, figures) -> None:
    """Every PgBouncer-PostgreSQL connection reset at once; PgBouncer opens new ones."""
    async def cut(load: Load) -> None:
        await _a_quarter_in(load, profile.network_votes)
        load.notes["in_flight_at_cut"] = load.in_flight
        load.mark("cut")
        await asyncio.to_thread(tcp_proxy.cut)

    result, verdict = fault_round(_stack(proxied_stack), name="network_cut_link", votes=profile.network_votes,
                                  connections=profile.connections, fault=cut, figures=figures, seed=403)
    assert not result.rejected()
    figures["network_cut_link"]["recovery_s"] = result.recovery_seconds("cut")
    assert result.recovery_seconds("cut") is not None, "service recovered"


def test_link_down_for_five_seconds_gives_retryable_errors_and_recovers(proxied_stack, tcp_proxy, profile,
                                                                        figures) -> None:
    """Every connection reset and new ones refused for 5 s, then the link is back."""
    async def down(load: Load) -> None:
        await _a_quarter_in(load, profile.network_votes)
        load.notes["in_flight_at_cut"] = load.in_flight
        load.mark("down")
        await asyncio.to_thread(tcp_proxy.refuse)
        await asyncio.to_thread(tcp_proxy.cut)
        await asyncio.sleep(FAULT_SECONDS)
        load.mark("up")
        await asyncio.to_thread(tcp_proxy.passthrough)

    result, _ = fault_round(_stack(proxied_stack), name="network_link_down", votes=profile.network_votes,
                            connections=profile.connections, fault=down, figures=figures, seed=404)
    assert not result.rejected()
    figures["network_link_down"].update(down_s=FAULT_SECONDS, recovery_s=result.recovery_seconds("up"))
    assert result.recovery_seconds("up") is not None, "service recovered"
