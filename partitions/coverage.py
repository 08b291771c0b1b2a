"""Is a hash space covered exactly once? Pure arithmetic over (modulus, remainder) bounds.

A hash partition (m, r) holds the rows whose key hash h satisfies h mod m = r. Over L = lcm of
all moduli (PostgreSQL requires each modulus to divide the next larger one, so L is the largest
modulus; synthetic inputs may be arbitrary), the slot s in [0, L) is covered by (m, r) iff
s mod m = r. The space is healthy when every slot is covered exactly once: no gap (an insert
there fails with "no partition of relation found for row") and no overlap (PostgreSQL refuses
overlapping hash bounds, so overlaps only appear in hand-made bound lists).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Refuse lcm values above this (synthetic inputs with co-prime moduli could be huge).
MAX_SLOTS = 1 << 20


@dataclass(frozen=True)
class Overlap:
    """Two partitions that both claim the slots `slots` (as (modulus, remainder) slices)."""

    first: str
    second: str
    slots: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Coverage:
    slots: int  # L, the number of slots the space was checked over
    gaps: tuple[tuple[int, int], ...] = ()  # uncovered slices, coarsest first
    overlaps: tuple[Overlap, ...] = ()
    invalid: tuple[str, ...] = field(default=())  # bounds that are not a hash slice at all

    @property
    def ok(self) -> bool:
        return not (self.gaps or self.overlaps or self.invalid)



def compress(slots: set[int], total: int) -> list[tuple[int, int]]:
    """Describe a set of slots of Z_total as few (modulus, remainder) slices as possible, coarsest first.

    compress({3, 19}, 32) == [(16, 3)]; compress({3}, 32) == [(32, 3)].
    """
    left = set(slots)
    found: list[tuple[int, int]] = []
    for modulus in (d for d in range(1, total + 1) if total % d == 0):
        for remainder in range(modulus):
            members = range(remainder, total, modulus)
            if all(s in left for s in members):
                found.append((modulus, remainder))
                left.difference_update(members)
        if not left:
            break
    return found


def check_coverage(bounds: Sequence[tuple[str, int, int]]) -> Coverage:
    """Coverage of the hash space by named (name, modulus, remainder) bounds."""
    invalid = tuple(f"{name}: modulus {m}, remainder {r}" for name, m, r in bounds if m < 1 or not 0 <= r < m)
    valid = [(name, m, r) for name, m, r in bounds if m >= 1 and 0 <= r < m]
    total = math.lcm(*(m for _, m, _ in valid)) if valid else 1
    if total > MAX_SLOTS:
        raise ValueError(f"the moduli have a least common multiple of {total}: too large to check slot by slot")
    owners: list[list[str]] = [[] for _ in range(total)]
    for name, m, r in valid:
        for s in range(r, total, m):
            owners[s].append(name)
    gaps = compress({s for s in range(total) if not owners[s]}, total)
    pairs: dict[tuple[str, str], set[int]] = {}
    for s, names in enumerate(owners):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs.setdefault((a, b), set()).add(s)
    overlaps = tuple(Overlap(a, b, tuple(compress(s, total))) for (a, b), s in sorted(pairs.items()))
    return Coverage(total, tuple(gaps), overlaps, invalid)


def describe_slices(slices: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"(modulus {m}, remainder {r})" for m, r in slices)
