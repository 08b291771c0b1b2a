"""The ballots of a run: who votes (a unique identity per voter) and what (a known option set per voter).

Each voter's option set is a deterministic function of its number, so verification can compare
every stored ballot with what that voter cast, not only count rows.
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

    def fingerprint(self, n: int | str) -> str:
        return f"lt-{self.tag}-{n}"

    def options_for(self, fingerprint: str) -> tuple[str, ...]:
        patterns = self.patterns
        return patterns[hash_index(fingerprint) % len(patterns)]

    def body(self, fingerprint: str) -> dict[str, Any]:
        """``POST /rpc/cast_vote`` body of an anonymous voter (the seed guide's own payload shape)."""
        return {"poll_id": self.poll_id, "option_ids": list(self.options_for(fingerprint)),
                "voter_fingerprint": fingerprint}

    def bulk_item(self, n: int) -> dict[str, Any]:
        """One ``cast_votes`` ballot: even voters authenticated by the edge tier (``voter_id``), odd ones anonymous."""
        ident = self.fingerprint(n)
        item: dict[str, Any] = {"poll_id": self.poll_id, "option_ids": list(self.options_for(ident))}
        if n % 2 == 0:
            item["voter_id"] = ident
        else:
            item["voter_fingerprint"] = ident
        return item


def identity(fingerprint: str, *, signed_in: bool = False) -> str:
    """The domain-separated identity the server digests: ``fp:<fingerprint>`` or ``sub:<id>`` (design.md)."""
    return ("sub:" if signed_in else "fp:") + fingerprint


def hash_index(text: str) -> int:
    """A stable (not per-process salted) small hash: the option pattern of a voter."""
    h = 2166136261
    for ch in text.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h
