"""The charts at the end of a sweep (matplotlib, imported only when one is drawn): a bar per grid
configuration, best first; for a search, every trial's value with pruned trials and the best marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lepton_infra.data.store import Store
from lepton_infra.workload.sweep_search import last_reported


def sweep_plot(
    store: Store, record: dict[str, Any], rows: list[Any], best: list[dict[str, Any]], metric: str, dest: Path
) -> Path | None:
    """The sweep's chart: bars per configuration for a grid, every trial's value for a search."""
    if not record.get("search"):
        return plot(best, metric, dest)
    key = record["search"].get("report") or metric
    points = [
        (int(r.job_id[1:]), "done", r.metric) for r in rows if r.state == "done" and r.metric is not None
    ]
    for r in rows:
        last = last_reported(store, record["sweep_id"], r.job_id, key) if r.state == "pruned" else None
        if last is not None:
            points.append((int(r.job_id[1:]), "pruned", last))
    top = best[0] if best and best[0]["mean"] is not None else None
    best_point = (
        {"trial": int(top["config"][1:]), "value": top["mean"], "params": top["params"]} if top else None
    )
    return plot_search(points, best_point, metric, dest)


def plot(summary_rows: Sequence[dict[str, Any]], metric: str, dest: Path) -> Path | None:
    """A bar chart of the metric per configuration, best first (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [s for s in summary_rows if s["mean"] is not None]
    labels = [", ".join(f"{k}={v}" for k, v in s["params"].items()) or s["config"] for s in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [s["mean"] for s in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("sweep: best first")
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


def plot_search(
    points: list[tuple[int, str, float]], best: dict[str, Any] | None, metric: str, dest: Path
) -> Path | None:
    """Each trial's value by trial number: finished ones as dots, pruned ones as crosses at their last
    reported value, the best as a star; the title names the best parameters."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for state, marker, colour in (("done", "o", "tab:blue"), ("pruned", "x", "tab:grey")):
        xs = [n for n, s, _ in points if s == state]
        ax.scatter(xs, [v for _, s, v in points if s == state], marker=marker, color=colour, label=state)
    if best is not None:
        ax.scatter([best["trial"]], [best["value"]], marker="*", s=220, color="tab:orange", label="best")
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
        )
        ax.set_title(f"best: trial {best['trial']} ({params})", fontsize=9)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest
