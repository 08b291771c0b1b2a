"""Failover of the HA stack (`pgvote up --ha`: etcd, two Patroni members, HAProxy) under k6 load through
nginx -> PostgREST -> PgBouncer -> HAProxy -> the leader. Three ways to lose the leader:

- its whole PostgreSQL killed (SIGKILL of the postmaster and every child at once): its Patroni sees
  PostgreSQL gone and, with master_start_timeout 0, hands the leader key over instead of restarting it;
- its Patroni stopped (SIGTERM, as a service manager stops it): Patroni stops PostgreSQL and gives the
  key up; the supervisor starts Patroni again, which rejoins as a standby;
- cut off from etcd (its own HAProxy frontend to etcd disabled through HAProxy's runtime API, open
  sessions shut): it cannot renew the key, demotes itself after retry_timeout; the key expires (ttl)
  and the synchronous standby takes it; etcd given back, the old leader rejoins.

In every round Patroni promotes the synchronous standby; clients see only retryable failures and re-send
the identical ballot; afterwards every acknowledged vote is on the new leader exactly once, tallies equal
ballots, and the old leader is back as the synchronous standby (pg_rewind where its WAL went further).
Figures: time without an acknowledged vote, time to the first acknowledgment and to full service after
the fault, errors by kind (docs/reliability.md, the failover table).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgvote.ha import HaStack

from .checks import fault_round
from .faults import wait_until
from .k6round import Live
from .profile import PROFILE
from fixtures.ha import MemberProcesses, cut_from_etcd, member, reconnect_to_etcd

PROMOTION_TIMEOUT = 60.0


def _promoted(stack: HaStack, old: str) -> Callable[[], bool]:
    """The other member leads (Patroni's /primary and PostgreSQL's role) and HAProxy's write port reaches it."""
    def check() -> bool:
        leader = stack.leader()
        if leader is None or leader.name == old:
            return False
        try:
            with psycopg.connect(stack.admin_url, connect_timeout=2, autocommit=True) as conn:
                return conn.execute("select inet_server_port()").fetchone() == (leader.pg_port,)
        except psycopg.Error:
            return False
    return check


def _kill_postgres(stack: HaStack, leader: MemberProcesses, live: Live) -> None:
    victims = leader.kill_all()
    live.mark("fault")
    leader.wait_gone(victims)
    live.mark("fault_over")


def _stop_patroni(stack: HaStack, leader: MemberProcesses, live: Live) -> None:
    os.kill(leader.patroni_pid(), signal.SIGTERM)
    live.mark("fault")
    live.mark("fault_over")


def _cut_from_etcd(stack: HaStack, leader: MemberProcesses, live: Live) -> None:
    cut_from_etcd(stack, leader.member)
    live.mark("fault")
    assert wait_until(_promoted(stack, leader.member.name), PROMOTION_TIMEOUT, 0.1), \
        f"no promotion while cut off: {stack.cluster()}\n{_logs(stack)}"
    reconnect_to_etcd(stack, leader.member)
    live.mark("fault_over")


FAULTS: dict[str, Callable[[HaStack, MemberProcesses, Live], None]] = {
    "kill_leader_postgres": _kill_postgres,
    "stop_leader_patroni": _stop_patroni,
    "cut_leader_from_etcd": _cut_from_etcd,
}


@pytest.mark.parametrize("round_no", range(PROFILE.rounds))
@pytest.mark.parametrize("kind", list(FAULTS))
def test_failover_mid_load_loses_no_acknowledged_vote(ha: HaStack, profile, figures, kind: str,
                                                      round_no: int) -> None:
    old = member(ha, "leader")
    rewinds_before = _rewinds(ha, old)

    def fault(live: Live) -> None:
        # early: the cut-off leader goes on committing until it demotes itself, and the load must
        # outlast the promotion
        live.after_acks(profile.failover_votes // 10)
        FAULTS[kind](ha, old, live)
        assert wait_until(_promoted(ha, old.member.name), PROMOTION_TIMEOUT, 0.1), f"no promotion: {ha.cluster()}\n{_logs(ha)}"
        live.mark("promoted")
        # the round is checked once the old leader is back as the synchronous standby
        assert ha.wait_healthy(), f"the old leader did not rejoin: {ha.cluster()}\n{_logs(ha)}"
        live.mark("rejoined")

    name = f"failover_{kind}[{round_no}]"
    result, verdict = fault_round(ha, name=name, votes=profile.failover_votes, vus=profile.vus, fault=fault,
                                  figures=figures, seed=900 + 10 * round_no + list(FAULTS).index(kind))
    new = member(ha, "leader")
    assert new.member != old.member, "the synchronous standby was promoted"
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
    assert ha.wait_healthy(), f"the old leader did not rejoin as the synchronous standby: {ha.cluster()}"
    assert member(ha, "sync_standby").member == old.member
    figures[name].update(result.around("fault", "fault_over"),
                         promotion_s=round(result.marks["promoted"] - result.marks["fault"], 3),
                         rejoined_s=round(result.marks["rejoined"] - result.marks["fault"], 3),
                         new_leader=new.member.name, old_leader_pg_rewind=_rewinds(ha, old) > rewinds_before)


def _rewinds(stack: HaStack, m: MemberProcesses) -> int:
    """How often the member's Patroni has run pg_rewind (its log says so)."""
    log = stack.log_dir / f"{m.member.name}.log"
    return log.read_text(errors="replace").count("running pg_rewind") if log.is_file() else 0


def _logs(stack: HaStack) -> str:
    def lines(path: Path) -> str:
        return "\n".join([line for line in path.read_text(errors="replace").splitlines()
                          if " INFO: " in line or " WARNING: " in line or " ERROR: " in line][-40:])

    return "\n".join(f"{m.name}:\n{lines(stack.log_dir / f'{m.name}.log')}" for m in stack.members)
