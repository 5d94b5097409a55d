"""`metrics.png`: a run's node utilisation and memory over time beside the job's loss curve, titled
with the run, the job and the data it trained on. Needs matplotlib (ImportError without it)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lepton_infra.workload.metrics import gpu_mem, gpu_util
from lepton_infra.workload.record import RunRecord

GIB = 2**30


def metrics_png(
    path: Path,
    record: RunRecord,
    data_label: str,
    samples: dict[str, list[dict[str, Any]]],
    progress: dict[str, list[dict[str, Any]]],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [s[0]["t"] for s in samples.values() if s] + [
        p[0]["t"] for p in progress.values() if p and isinstance(p[0].get("t"), int | float)
    ]
    t0 = min(starts) if starts else 0.0
    fig, (ax_loss, ax_util, ax_mem) = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, node in enumerate(sorted(set(samples) | set(progress))):
        colour = colours[i % len(colours)]
        timed = [p for p in progress.get(node, []) if isinstance(p.get("t"), int | float) and "loss" in p]
        if timed:
            ax_loss.plot([p["t"] - t0 for p in timed], [p["loss"] for p in timed], color=colour, label=node)
        rows = samples.get(node, [])
        ts = [s["t"] - t0 for s in rows]
        ax_util.plot(ts, [s.get("cpu_pct") for s in rows], color=colour, label=f"{node} CPU")
        ax_mem.plot(ts, [s.get("mem_used", 0) / GIB for s in rows], color=colour, label=f"{node} RAM")
        if any("gpus" in s for s in rows):  # GPU lines only for nodes that have GPUs
            ax_util.plot(ts, [gpu_util(s) for s in rows], "--", color=colour, label=f"{node} GPU")
            ax_mem.plot(
                ts,
                [(gpu_mem(s) or (0, 0))[0] / GIB for s in rows],
                "--",
                color=colour,
                label=f"{node} GPU mem",
            )
    ax_loss.set(
        xlabel="seconds since start", ylabel="training loss (job's LEPTON_PROGRESS)", title="job loss"
    )
    ax_util.set(
        xlabel="seconds since start", ylabel="%", title="utilisation (CPU solid, GPU dashed)", ylim=(0, 105)
    )
    total = max((s.get("mem_total", 0) for rows in samples.values() for s in rows), default=0)
    ax_mem.set(
        xlabel="seconds since start", ylabel="GiB used", title=f"memory (RAM of {total / GIB:.0f} GiB)"
    )
    for ax in (ax_loss, ax_util, ax_mem):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    job = Path(record.workload).name if record.workload else "job"
    fig.suptitle(f"run {record.run_id}: {job} ({record.entrypoint}) on {record.cloud}, {data_label}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
