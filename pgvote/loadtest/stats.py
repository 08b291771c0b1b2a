"""Figures of a run from its per-voter records (k6's or pgbench's): outcomes, rates, latency percentiles, a timeline."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pgvote.loadtest.config import Stage

#: One voter's fate: (fingerprint, outcome, status, answer-or-error, t_start, t_end, attempts, first_ok).
#: outcome: "ack" (acknowledged), "rejected" (a final error), "gave_up" (retries exhausted); times in
#: epoch seconds.
Record = tuple[str, str, int, str, float, float, int, bool]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1] if ms else math.nan}


def figures(records: Sequence[Record], t0: float, errors: Counter[str]) -> dict[str, Any]:
    """The figures of a run from its records; ``errors``: every non-200 attempt, by "status code"."""
    acked = [r for r in records if r[1] == "ack"]
    drain = max((r[5] for r in acked), default=t0) - t0  # release -> last acknowledgment
    requests = sum(r[6] for r in records)  # every attempt, retries included
    return {"voters": len(records), "accepted": len(acked), "answers": dict(Counter(r[3] for r in acked)),
            "rejected": dict(Counter(f"{r[2]} {r[3]}" for r in records if r[1] == "rejected")),  # final answers
            "gave_up": sum(r[1] == "gave_up" for r in records), "requests": requests, "retried_errors": dict(errors),
            "drain_seconds": drain, "votes_per_second": len(acked) / drain if drain > 0 else math.nan,
            # one voter's calls: first attempt sent -> acknowledged; release -> acknowledged (what a user waits)
            "request_latency": latency_summary([r[5] - r[4] for r in acked]),
            "time_to_ack": latency_summary([r[5] - t0 for r in acked]),
            "success_rate": len(acked) / requests if requests else math.nan}  # 200 answers / requests (k6's)


def phase_figures(records: Sequence[Record], t0: float, stages: Sequence[Stage]) -> dict[str, dict[str, float]]:
    """Success rate and latency per load phase ("normal" / "spike") of the ramp, by when a voter started."""
    by_phase: dict[str, list[Record]] = {}
    for r in records:
        stage = stage_at(stages, r[4] - t0)
        by_phase.setdefault(stage.phase if stage else "normal", []).append(r)
    out: dict[str, dict[str, float]] = {}
    for phase, recs in sorted(by_phase.items()):
        requests = sum(r[6] for r in recs)
        ok = sum(r[1] == "ack" for r in recs)
        first_try = sum(r[7] for r in recs)
        out[phase] = {"voters": len(recs), "requests": requests,
                      "success_rate": ok / requests if requests else math.nan,
                      "first_attempt_success": first_try / len(recs) if recs else math.nan,
                      **latency_summary([r[5] - r[4] for r in recs if r[1] == "ack"])}
    return out


def timeline(records: Sequence[Record], t0: float, bins: int = 60) -> list[dict[str, float]]:
    """Per time bin (by acknowledgment time): acknowledgments/s and p50/p95/p99 request latency (ms)."""
    acked = [r for r in records if r[1] == "ack"]
    if not acked:
        return []
    end = max(r[5] for r in acked) - t0
    width = max(0.1, end / bins)
    buckets: dict[int, list[float]] = {}
    for r in acked:
        buckets.setdefault(int((r[5] - t0) / width), []).append(r[5] - r[4])
    out = []
    for i in range(int(end / width) + 1):
        lat = sorted(x * 1000 for x in buckets.get(i, []))
        out.append({"t": round((i + 0.5) * width, 3), "votes_per_s": len(lat) / width,
                    "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99)})
    return out


def stage_at(stages: Sequence[Stage], elapsed: float) -> Stage | None:
    for stage in stages:
        if elapsed < stage.seconds:
            return stage
        elapsed -= stage.seconds
    return None
