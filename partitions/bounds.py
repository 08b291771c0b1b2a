"""Partition bounds as PostgreSQL prints them (`pg_get_expr(relpartbound, oid)`), parsed.

    FOR VALUES WITH (modulus 16, remainder 3)   -> hash, modulus 16, remainder 3
    DEFAULT                                     -> default
    FOR VALUES IN (...) / FROM (...) TO (...)   -> list / range (kept as text)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BoundKind = Literal["hash", "list", "range", "default"]

_HASH = re.compile(r"^FOR VALUES WITH \(modulus ([0-9]+), remainder ([0-9]+)\)$", re.IGNORECASE)


@dataclass(frozen=True)
class PartitionBound:
    kind: BoundKind
    text: str
    modulus: int | None = None
    remainder: int | None = None

    @property
    def slice(self) -> tuple[int, int]:
        """(modulus, remainder) of a hash bound."""
        if self.modulus is None or self.remainder is None:
            raise ValueError(f"not a hash bound: {self.text}")
        return self.modulus, self.remainder


def parse_bound(text: str) -> PartitionBound:
    """Parse one bound expression; raises ValueError on text PostgreSQL does not print."""
    clean = " ".join(text.split())
    if clean.upper() == "DEFAULT":
        return PartitionBound("default", clean)
    found = _HASH.match(clean)
    if found:
        return PartitionBound("hash", clean, int(found[1]), int(found[2]))
    upper = clean.upper()
    if upper.startswith("FOR VALUES IN "):
        return PartitionBound("list", clean)
    if upper.startswith("FOR VALUES FROM "):
        return PartitionBound("range", clean)
    raise ValueError(f"unrecognised partition bound: {text!r}")
