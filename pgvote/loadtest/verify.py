"""Exactly-once verification after a run, against what is stored.

Voters are stored only as HMAC digests (``internal.voter_key``), so the expected key of every voter
is computed by the database itself, in one statement, from the identities the run used
(``fp:<fingerprint>`` or ``sub:<id>``). Then, for the run's poll:

- every acknowledged voter has exactly one stored ballot (missing = **lost**);
- no voter has two ballots (**duplicated**), and no ballot belongs to a voter the run never cast for
  or never acknowledged;
- each stored ballot holds exactly the options that voter cast (**mismatched**);
- stored ballots == accepted, and ``poll_results`` (as the anonymous role) equals the counts
  derived from the stored ballots, option by option.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass(frozen=True)
class Verification:
    accepted: int  # acknowledged voters (expected ballots)
    stored: int  # ballots stored for the poll
    lost: int  # acknowledged but not stored
    duplicated: int  # ballots beyond the first of one voter
    unexpected: int  # stored ballots of voters the run never cast for
    unacknowledged: int  # stored ballots of voters whose calls all failed (stored, but never acknowledged)
    mismatched: int  # stored options differ from what the voter cast
    results_total: int | None  # poll_results.total_ballots
    tallies_match: bool  # poll_results == counts derived from stored ballots (per option)
    tallies_expected_match: bool  # ... == counts derived from the acknowledged ballots
    problems: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "exactly_once": self.exactly_once}


def voter_keys(admin: psycopg.Connection, identities: Sequence[str]) -> dict[bytes, str]:
    """HMAC voter key -> identity, computed by ``internal.voter_key`` in one round trip."""
    rows = admin.execute("select i, internal.voter_key(i) from unnest(%s::text[]) as i", (list(identities),)).fetchall()
    return {bytes(key): ident for ident, key in rows}


def poll_results(admin: psycopg.Connection, poll_id: str) -> dict[str, Any] | None:
    """``api.poll_results`` as an anonymous reader calls it (straight from the database: an HTTP cache
    in front may serve a result up to a second old); None when the poll does not exist."""
    try:
        with admin.transaction():
            admin.execute("select set_config('role', 'anon', true)")
            row = admin.execute("select api.poll_results(%s)", (poll_id,)).fetchone()
    except psycopg.Error:  # poll_not_found (SQLSTATE PGRST): the transaction is rolled back
        return None
    return row[0] if row else None


def verify_poll(admin_url: str, poll_id: str, acknowledged: Mapping[str, Sequence[str]],
                attempted: Sequence[str] = ()) -> Verification:
    """``acknowledged``: identity -> option ids that voter cast and got a 200 for; ``attempted``: other
    identities the run tried (not acknowledged: their ballot may or may not be stored)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        keys = voter_keys(admin, [*acknowledged, *(a for a in attempted if a not in acknowledged)])
        stored_rows = admin.execute(
            "select voter_key, option_ids::text[] from voting.ballots where poll_id = %s", (poll_id,)).fetchall()
        results = poll_results(admin, poll_id)
    stored_by_voter = Counter(bytes(k) for k, _ in stored_rows)
    ident_of = {bytes(k): keys.get(bytes(k)) for k, _ in stored_rows}
    expected_keys = {key for key, ident in keys.items() if ident in acknowledged}

    lost = len(expected_keys - set(stored_by_voter))
    duplicated = sum(n - 1 for n in stored_by_voter.values() if n > 1)
    unexpected = sum(1 for k, _ in stored_rows if ident_of[bytes(k)] is None)
    unacknowledged = sum(1 for k, _ in stored_rows
                         if ident_of[bytes(k)] is not None and ident_of[bytes(k)] not in acknowledged)
    mismatched = 0
    for k, options in stored_rows:
        ident = ident_of[bytes(k)]
        if ident is not None and ident in acknowledged and set(options) != set(acknowledged[ident]):
            mismatched += 1

    derived = Counter(o for _, options in stored_rows for o in options)
    expected_counts = Counter(o for options in acknowledged.values() for o in options)
    total = results.get("total_ballots") if results else None
    reported = {o["option_id"]: o["votes"] for o in results.get("options", [])} if results else {}
    tallies_match = results is not None and all(reported.get(o, 0) == n for o, n in derived.items()) \
        and sum(reported.values()) == sum(derived.values())
    tallies_expected = all(reported.get(o, 0) == n for o, n in expected_counts.items()) \
        and sum(reported.values()) == sum(expected_counts.values())

    problems = []
    if lost:
        problems.append(f"{lost} acknowledged ballots are not stored")
    if duplicated:
        problems.append(f"{duplicated} voters have more than one ballot")
    if unexpected:
        problems.append(f"{unexpected} stored ballots belong to voters this run never cast for")
    if unacknowledged:
        problems.append(f"{unacknowledged} ballots were stored but never acknowledged to their voter")
    if mismatched:
        problems.append(f"{mismatched} stored ballots differ from what the voter cast")
    if len(stored_rows) != len(acknowledged):
        problems.append(f"stored {len(stored_rows)} != accepted {len(acknowledged)}")
    if results is None:
        problems.append("poll_results found no such poll")
    elif total != len(stored_rows):
        problems.append(f"poll_results total_ballots {total} != stored {len(stored_rows)}")
    if not tallies_match:
        problems.append("poll_results per-option counts differ from the stored ballots")
    if not tallies_expected:
        problems.append("poll_results per-option counts differ from the acknowledged ballots")
    return Verification(len(acknowledged), len(stored_rows), lost, duplicated, unexpected, unacknowledged,
                        mismatched, total,
                        tallies_match, tallies_expected, problems)
