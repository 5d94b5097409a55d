"""What a finished (or collected) run leaves beside its results: per-node metrics summaries and the
cost in run.json, `metrics.png` (node utilisation and memory over time beside the job's loss),
and TensorBoard scalars under `tensorboard/` (`tensorboard --logdir runs/<id>`).

Everything here reads the collected files (`<node>/logs/metrics.jsonl`, `<node>/logs/node.log`);
a plot or event file that cannot be written never fails the run: the reason is returned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lepton_infra.inventory import Price
from lepton_infra.workload import cost, jobspec
from lepton_infra.workload.metrics import METRICS_FILE, gpu_mem, gpu_util, read_samples, summarise
from lepton_infra.workload.record import RunRecord
from lepton_infra.workload.tensorboard import EventWriter

PLOT = "metrics.png"
TB_DIR = "tensorboard"
_PROGRESS_COUNTERS = {"epoch", "epochs", "step", "steps", "t"}


def progress_records(log: Path) -> list[dict[str, Any]]:
    """The job's LEPTON_PROGRESS records from a collected node.log."""
    out: list[dict[str, Any]] = []
    try:
        with log.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if jobspec.PROGRESS_TAG in line:
                    data = jobspec.parse_progress(line.rstrip("\n"))
                    if data is not None:
                        out.append(data)
    except OSError:
        pass
    return out


def global_step(p: dict[str, Any]) -> int | None:
    epoch, step, steps = p.get("epoch"), p.get("step"), p.get("steps")
    if not all(isinstance(v, int) for v in (epoch, step, steps)):
        return None
    return (int(epoch) - 1) * int(steps) + int(step)  # type: ignore[arg-type]


def data_label(record: RunRecord, local_dir: Path) -> str:
    """What the job trained on, for titles and tables: the job's metrics.json `data.kind` when it
    wrote one, else its `--data` argument. Synthetic data is called so, loudly."""
    kind = None
    for path in sorted(local_dir.glob("*/output/metrics.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8")).get("data")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, dict) and data.get("kind"):
            kind = str(data["kind"])
            break
    args = record.args
    if kind is None and "--data" in args[:-1]:
        kind = args[args.index("--data") + 1]
    if kind is None:
        return "data not stated"
    return "SYNTHETIC data, not a real data set" if kind == "synthetic" else f"data: {kind}"


def finish(record: RunRecord, local_dir: Path, price: Price | None) -> dict[str, str]:
    """Fold metrics summaries and cost into `record` (the caller saves it); write metrics.png and
    the TensorBoard files. Returns {what: path or why not} for the user."""
    samples = {n.name: read_samples(local_dir / n.name / "logs" / METRICS_FILE) for n in record.nodes}
    for n in record.nodes:
        summary = summarise(samples[n.name])
        if summary is not None:
            n.metrics = summary
    running = record.status == "running"
    record.cost = cost.run_cost(
        price, len(record.nodes), record.created, [n.ended for n in record.nodes], running=running
    )
    progress = {n.name: progress_records(local_dir / n.name / "logs" / "node.log") for n in record.nodes}
    written: dict[str, str] = {}
    if not any(samples.values()) and not any(progress.values()):
        return written
    label = data_label(record, local_dir)
    try:
        from lepton_infra.workload.plots import metrics_png

        written["plot"] = str(metrics_png(local_dir / PLOT, record, label, samples, progress))
    except ImportError:
        written["plot"] = "not written: matplotlib is not installed (pip install matplotlib)"
    except (OSError, ValueError) as exc:
        written["plot"] = f"not written: {exc}"
    try:
        written["tensorboard"] = str(write_tensorboard(local_dir / TB_DIR, samples, progress))
    except OSError as exc:
        written["tensorboard"] = f"not written: {exc}"
    return written


def write_tensorboard(
    root: Path, samples: dict[str, list[dict[str, Any]]], progress: dict[str, list[dict[str, Any]]]
) -> Path:
    """One TensorBoard run per node (`tensorboard/<node>/`, replacing what an earlier call wrote
    there): its node metrics (step = sample number,
    wall time = the sample's) and the job's own numeric progress values (step = global step)."""
    for node in sorted(set(samples) | set(progress)):
        # Rewritten whole from the collected files each time (a later `collect`): never twice.
        for old in (root / node).glob("events.out.tfevents.*"):
            old.unlink()
        writer = EventWriter(root / node)
        for i, s in enumerate(samples.get(node, [])):
            values = {f"node/{k}": float(s[k]) for k in ("cpu_pct", "net_rx_bps", "net_tx_bps") if k in s}
            if "mem_used" in s:
                values["node/mem_used_gib"] = s["mem_used"] / 2**30
            if (util := gpu_util(s)) is not None:
                values["gpu/util_pct"] = util
            if (mem := gpu_mem(s)) is not None:
                values["gpu/mem_used_gib"] = mem[0] / 2**30
            for g in s.get("gpus") or ():
                for key in ("temp_c", "power_w"):
                    if key in g:
                        values[f"gpu{g['index']}/{key}"] = float(g[key])
            writer.scalars(i, float(s["t"]), values)
        for p in progress.get(node, []):
            step = global_step(p)
            values = {
                f"job/{k}": float(v)
                for k, v in p.items()
                if k not in _PROGRESS_COUNTERS and isinstance(v, int | float) and not isinstance(v, bool)
            }
            if step is not None and values:
                writer.scalars(step, float(p.get("t") or 0.0), values)
        writer.close()
    return root
