"""PNG chart of a run: throughput and p50/p95/p99 latency over time, one panel per scenario."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def write_chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("charts need matplotlib: pip install 'pgvote[chart]'") from None

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    scenarios = [s for s in report["scenarios"] if s.get("timeline")]
    if not scenarios:
        return
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(10, 3.6 * len(scenarios)), squeeze=False)
    for ax, s in zip(axes[:, 0], scenarios, strict=True):
        tl = s["timeline"]
        t = [b["t"] for b in tl]
        ax.plot(t, [b["votes_per_s"] for b in tl], color="tab:blue", label="votes/s acknowledged")
        ax.set_ylabel("votes/s", color="tab:blue")
        ax.set_xlabel("seconds since release")
        ax.set_title(f"{s['name']}: {s['voters']:,} voters, {s['clients']:,} {'VUs' if 'k6' in s else 'clients'}")
        lat = ax.twinx()
        for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
            lat.plot(t, [b[key] for b in tl], color="tab:red", linestyle=style, label=key.replace("_ms", ""))
        lat.set_ylabel("latency (ms)", color="tab:red")
        lines = ax.get_legend_handles_labels()
        more = lat.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
