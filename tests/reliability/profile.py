"""The reliability suite's two profiles, chosen once, here, from ``PGVOTE_PROFILE``.

``ci`` (default, part of ``make test``): every fault once, sized to fit a few minutes on a 2-core box - one
crash round of each kind with 8,000 votes instead of 20,000 (the time, not the invariants, is what shrinks).
``long`` (``make reliability``): the issue's numbers - 5 crash rounds of each kind with 20,000 votes and
>= 200 calls in flight at the kill, >= 10,000 generated bad requests, longer loads around every fault.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    crash_rounds: int  # rounds of each crash kind (whole server, one backend)
    crash_votes: int  # votes per crash round
    connections: int  # concurrent client connections through PgBouncer in the fault loads
    kill_in_flight: int  # calls in flight (sent, unanswered) required at the moment of a kill
    fault_votes: int  # votes per restart / pause / reconnect / freeze load
    network_votes: int  # votes per network-fault load (through the Python TCP proxy: slower)
    freeze_seconds: float
    storm_calls: int  # concurrent calls of one voter in a duplicate storm
    fuzz_examples: int  # hypothesis examples per property test (6 property tests)


PROFILES = {
    "ci": Profile(name="ci", crash_rounds=1, crash_votes=8_000, connections=250, kill_in_flight=200,
                  fault_votes=3_000, network_votes=2_000, freeze_seconds=5.0, storm_calls=1_000,
                  fuzz_examples=60),
    "long": Profile(name="long", crash_rounds=5, crash_votes=20_000, connections=250, kill_in_flight=200,
                    fault_votes=20_000, network_votes=8_000, freeze_seconds=5.0, storm_calls=1_000,
                    fuzz_examples=1_700),
}


def load_profile() -> Profile:
    name = os.environ.get("PGVOTE_PROFILE", "ci").strip().lower() or "ci"
    if name not in PROFILES:
        raise ValueError(f"PGVOTE_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


PROFILE = load_profile()
