"""`metrics.png`: a run's node utilisation and memory over time beside the job's loss curve, titled
with the run, the job and the data it trained on. Needs matplotlib (ImportError without it).

Run as `python -m lepton_infra.workload.plots RUN_DIR` (report.start_plot does, detached, once
run.json is saved): it reads run.json and the collected files and writes metrics.png, or the
reason it could not in metrics.png.error; it never writes run.json (the controller owns it)."""

from __future__ import annotations

import io
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from lepton_infra.workload import report
from lepton_infra.workload.metrics import gpu_mem, gpu_util
from lepton_infra.workload.record import RunRecord, RunStore

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
    report.replace_file(path, buf.getvalue())
    return path


def draw(run_dir: Path) -> Path:
    """metrics.png of the run in `run_dir` from its saved run.json and collected files."""
    record = RunStore(run_dir.parent).load(run_dir.name)
    if record is None:
        raise ValueError(f"{run_dir / 'run.json'} is missing or unreadable")
    samples, progress = report.figures(record, run_dir)
    return metrics_png(run_dir / report.PLOT, record, report.data_label(record, run_dir), samples, progress)


def main(argv: list[str]) -> int:
    """Draw, and say how it went in files only (nobody reads this process's output): metrics.png,
    or metrics.png.error with the reason; metrics.png.pending goes once either is there."""
    if len(argv) != 1:
        print("usage: python -m lepton_infra.workload.plots RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    pending, me = run_dir / report.PLOT_PENDING, str(os.getpid())
    report.replace_file(pending, me.encode())
    try:
        draw(run_dir)
        return 0
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0] == "matplotlib"
        report.plot_failed(run_dir, report.MATPLOTLIB_MISSING if missing else f"ImportError: {exc}")
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the error file
        report.plot_failed(run_dir, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    finally:
        try:  # only this process's marker: a later drawing (another `collect`) may own it now
            if pending.read_text(encoding="utf-8") == me:
                pending.unlink()
        except OSError:
            pass
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
