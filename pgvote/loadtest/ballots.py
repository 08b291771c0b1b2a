"""The ballots of a run: who votes (voter number n, a unique identity per run) and what (a known
option set per voter).

Voter n's fingerprint is ``lt-<tag>-<n>`` and its option set ``patterns[n % len(patterns)]``: the
k6 scripts (``k6/vote.js``) and the pgbench script (``pgvote/bench/scripts/postgrest_rpc.sql``)
build the same, so verification can compare every stored ballot with what that voter cast, not
only count rows.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BallotSpec:
    poll_id: str
    option_ids: tuple[str, ...]
    tag: str  # unique per run: identities never collide with another run's
    max_choices: int = 2

    @property
    def patterns(self) -> tuple[tuple[str, ...], ...]:
        """Every option set of 1..max_choices options, in the poll's option order."""
        out: list[tuple[str, ...]] = []
        for k in range(1, self.max_choices + 1):
            out.extend(itertools.combinations(self.option_ids, k))
        return tuple(out)

    @property
    def prefix(self) -> str:
        return f"lt-{self.tag}-"

    def fingerprint(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def options_for(self, fingerprint: str) -> tuple[str, ...]:
        patterns = self.patterns
        return patterns[int(fingerprint.removeprefix(self.prefix)) % len(patterns)]

    def bulk_item(self, n: int) -> dict[str, Any]:
        """One ``cast_votes`` ballot: even voters authenticated by the edge tier (``voter_id``), odd ones anonymous."""
        ident = self.fingerprint(n)
        return {"poll_id": self.poll_id, "option_ids": list(self.options_for(ident)),
                "voter_id" if n % 2 == 0 else "voter_fingerprint": ident}

    def bulk_identity(self, n: int) -> str:
        return identity(self.fingerprint(n), signed_in=n % 2 == 0)


def identity(fingerprint: str, *, signed_in: bool = False) -> str:
    """The domain-separated identity the server digests: ``fp:<fingerprint>`` or ``sub:<id>``."""
    return ("sub:" if signed_in else "fp:") + fingerprint
