"""Exactly-once verification after a run, against what is stored (the counts: sql/verify.sql)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

VERIFY_SQL = (Path(__file__).parent / "sql" / "verify.sql").read_text()
#: A problem per count that must be zero (or flag that must hold), in the order they are reported.
PROBLEMS = (("lost", "{} acknowledged ballots are not stored"), ("duplicated", "{} voters have more than one ballot"),
            ("unexpected", "{} stored ballots belong to voters this run never cast for"),
            ("unacknowledged", "{} ballots were stored but never acknowledged to their voter"),
            ("mismatched", "{} stored ballots differ from what the voter cast"))


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


def poll_results(admin: psycopg.Connection[Any], poll_id: str) -> dict[str, Any] | None:
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
        results = poll_results(admin, poll_id)
        with admin.cursor(row_factory=dict_row) as cur:
            row = cur.execute(VERIFY_SQL, {"poll": poll_id, "acked": json.dumps({k: list(v) for k, v in acknowledged.items()}),
                                           "attempted": list(attempted),
                                           "results": json.dumps(results) if results else None}).fetchone()
    assert row is not None
    problems = [message.format(row[key]) for key, message in PROBLEMS if row[key]]
    if row["stored"] != row["accepted"]:
        problems.append(f"stored {row['stored']} != accepted {row['accepted']}")
    if results is None:
        problems.append("poll_results found no such poll")
    elif row["results_total"] != row["stored"]:
        problems.append(f"poll_results total_ballots {row['results_total']} != stored {row['stored']}")
    problems += [message for key, message in (
        ("tallies_match", "poll_results per-option counts differ from the stored ballots"),
        ("tallies_expected_match", "poll_results per-option counts differ from the acknowledged ballots"))
        if not row[key]]
    return Verification(**row, problems=problems)
