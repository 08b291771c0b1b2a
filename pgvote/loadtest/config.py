"""What a load test run is asked to do, and the targets it is judged against."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgvote.loadtest.http_scenarios import HttpTarget

#: The original guide's k6 stages (its load-test script): (seconds, virtual users reached at the end of the stage).
GUIDE_STAGES: tuple[tuple[float, int], ...] = ((30, 1_000), (60, 10_000), (30, 50_000), (60, 50_000), (30, 0))
#: Peak virtual users of the guide's stages (the spike): ``--clients`` replaces it when scaled.
GUIDE_PEAK_VUS = 50_000
#: Stage indexes the guide calls "spike" (ramp to 50k and hold); the others are "normal" load.
SPIKE_STAGES = frozenset({2, 3})


@dataclass(frozen=True)
class Stage:
    seconds: float
    target: int  # virtual users (client connections) active at the end of the stage, linear in between
    phase: str  # "normal" | "spike"


def scaled_stages(peak_clients: int, time_scale: float) -> tuple[Stage, ...]:
    """The guide's stages, users scaled so that its 50,000 becomes ``peak_clients``, durations × ``time_scale``."""
    scale = peak_clients / GUIDE_PEAK_VUS
    return tuple(Stage(seconds * time_scale, round(vus * scale), "spike" if i in SPIKE_STAGES else "normal")
                 for i, (seconds, vus) in enumerate(GUIDE_STAGES))


@dataclass(frozen=True)
class Targets:
    """Pass/fail thresholds: the guide's (k6 thresholds and "performance guarantees") and ours."""

    spike_success: float = 0.95  # guide: >= 95% success under spike load
    normal_success: float = 0.99  # guide: >= 99% under normal load
    p95_ms: float = 500.0  # guide: http_req_duration p(95) < 500 ms
    votes_per_second: float = 50_000.0  # guide: 50,000+ votes/s
    memory_bytes: int = 2 * 1024**3  # guide: 1-2 GB of memory
    memory_beyond_shared_bytes: int = 1024**3  # ours: <= 1 GB beyond shared_buffers
    drain_ratio: float = 0.8  # ours: single-vote drain rate >= 0.8 x bare-insert rate, same run
    bulk_seconds: float = 1.0  # ours: 50,000 ballots in <= 1 s through the bulk path


@dataclass(frozen=True)
class LoadtestConfig:
    database_url: str  # authenticator through PgBouncer (what PostgREST logs in as)
    admin_url: str  # superuser, direct: setup and verification
    bouncer_admin_url: str | None = None  # PgBouncer's admin console (pool figures; its port finds the pid)
    voters: int = 50_000
    clients: int = 2_000  # SQL path: pgbench clients (connections through PgBouncer)
    bulk: bool = False
    batch: int = 500  # at most this many ballots per cast_votes call
    http: HttpTarget | None = None  # vote over HTTP with k6 (burst, or the ramp); None: the SQL path
    vus: int | None = None  # HTTP: k6 VUs (default: the fewest the per-address burst allows; ramp: 2,000)
    ramp: bool = False
    ramp_time_scale: float = 0.25
    baseline: bool = True  # first the same transactions against the bare-insert reference (drain ratio)
    with_bulk: bool = False  # single-vote mode: also ingest the same number of ballots through the bulk path
    bulk_clients: int = 4  # connections of the bulk path when it runs next to the burst (with_bulk)
    sample_interval: float = 0.25  # memory sampling period
    targets: Targets = field(default_factory=Targets)
