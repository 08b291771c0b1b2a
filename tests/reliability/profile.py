"""The reliability suite's two profiles, chosen once, here, from ``PGVOTE_PROFILE``.

``ci`` (default, part of ``make test``): one round of each fault kind, loads sized to fit a few minutes on a
2-core box. ``long`` (``make reliability``): 5 rounds of each fault kind with larger loads (more VUs, more
calls in flight at every fault), >= 10,000 generated bad requests. The time, not the invariants, is what
shrinks in CI.

Every load runs through the stack's nginx from k6 VUs with one loopback address each, and the production
per-address limits stay on (a burst of 20 calls per address): a round casts at most 16 ballots per VU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int  # rounds of each fault kind
    vus: int  # k6 VUs of a fault round (each has its own source address)
    crash_votes: int  # votes per crash round (SIGKILL of the server or of one backend)
    kill_in_flight: int  # calls in flight (sent, unanswered) required at the moment of a kill
    fault_votes: int  # votes per round of the other faults
    network_votes: int  # votes per network-fault round (through the Python TCP proxy: slower)
    freeze_seconds: float
    storm_calls: int  # concurrent calls of one voter in a duplicate storm
    fuzz_examples: int  # hypothesis examples per property test (6 property tests)
    failover_votes: int  # votes per failover round of the HA stack (tests/reliability/test_failover.py)


PROFILES = {
    "ci": Profile(name="ci", rounds=1, vus=250, crash_votes=3_000, kill_in_flight=200, fault_votes=2_000,
                  network_votes=1_600, freeze_seconds=5.0, storm_calls=1_000, fuzz_examples=60,
                  failover_votes=4_000),
    "long": Profile(name="long", rounds=5, vus=400, crash_votes=6_000, kill_in_flight=200, fault_votes=5_000,
                    network_votes=4_000, freeze_seconds=5.0, storm_calls=1_000, fuzz_examples=1_700,
                    failover_votes=6_000),
}


def load_profile() -> Profile:
    name = os.environ.get("PGVOTE_PROFILE", "ci").strip().lower() or "ci"
    if name not in PROFILES:
        raise ValueError(f"PGVOTE_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


PROFILE = load_profile()
