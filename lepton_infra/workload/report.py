"""What a finished (or collected) run leaves beside its results: per-node metrics summaries and the
cost in run.json, TensorBoard scalars under `tensorboard/` (`tensorboard --logdir runs/<id>`), and
`metrics.png` (node utilisation and memory over time beside the job's loss).

Everything here reads the collected files (`<node>/logs/metrics.jsonl`, `<node>/logs/node.log`);
a plot or event file that cannot be written never fails the run: the reason is returned.
The plot is drawn by a detached process (`start_plot`, plots.py) once run.json is saved, because
importing matplotlib and drawing cost about a second of CPU between the job's end and the run
returning; `plot_state` and `wait_for_plot` tell a caller how that drawing went."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import psutil

import lepton_infra
from lepton_infra.errors import LeptonError
from lepton_infra.inventory import Price
from lepton_infra.workload import cost, jobspec
from lepton_infra.workload.metrics import METRICS_FILE, gpu_mem, gpu_util, read_samples, summarise
from lepton_infra.workload.record import RunRecord
from lepton_infra.workload.tensorboard import EventWriter

PLOT = "metrics.png"
PLOT_ERROR = PLOT + ".error"  # why the last drawing failed: the reason's line, then any traceback
PLOT_PENDING = PLOT + ".pending"  # there while a drawing process works (its PID once it started)
MATPLOTLIB_MISSING = "matplotlib is not installed (pip install matplotlib)"
TB_DIR = "tensorboard"
Rows = dict[str, list[dict[str, Any]]]  # node name -> its samples or progress records, in order
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


def figures(record: RunRecord, run_dir: Path) -> tuple[Rows, Rows]:
    """Each node's collected metrics samples and the job's progress records (what the summaries,
    TensorBoard and the plot are made of)."""
    samples = {n.name: read_samples(run_dir / n.name / "logs" / METRICS_FILE) for n in record.nodes}
    progress = {n.name: progress_records(run_dir / n.name / "logs" / "node.log") for n in record.nodes}
    return samples, progress


def finish(record: RunRecord, local_dir: Path, price: Price | None) -> dict[str, str]:
    """Fold metrics summaries and cost into `record` (the caller saves it, then calls `start_plot`
    when this returned anything: an empty answer means nothing to draw); write the TensorBoard
    files. Returns {what: path or why not} for the user."""
    samples, progress = figures(record, local_dir)
    for n in record.nodes:
        summary = summarise(samples[n.name])
        if summary is not None:
            n.metrics = summary
    running = record.status == "running"
    record.cost = cost.run_cost(
        price, len(record.nodes), record.created, [n.ended for n in record.nodes], running=running
    )
    written: dict[str, str] = {}
    if not any(samples.values()) and not any(progress.values()):
        return written
    try:
        written["tensorboard"] = str(write_tensorboard(local_dir / TB_DIR, samples, progress))
    except OSError as exc:
        written["tensorboard"] = f"not written: {exc}"
    return written


# --------------------------------------------------------------------------- the background plot


class PlotNotDrawn(LeptonError):
    """metrics.png was not drawn: the message says why (and where the details are)."""


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a reader never
    sees half a file, and two writers never share a temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_failed(run_dir: Path, reason: str, details: str = "") -> str:
    """Leave the reason a drawing failed in metrics.png.error; returns it as "not written: ..."."""
    replace_file(run_dir / PLOT_ERROR, f"{reason}\n{details}".encode())
    return f"not written: {reason} ({run_dir / PLOT_ERROR})"


def _matplotlib_missing() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules["matplotlib"] = None
        return True


# `python -m lepton_infra.workload.plots RUN_DIR` at a lower priority: the drawing is not urgent,
# and on a small machine it should not take CPU from what the user does next (the next run).
_DRAW = "import os, runpy; os.nice(10); runpy.run_module('lepton_infra.workload.plots', run_name='__main__')"


def start_plot(run_dir: Path) -> str:
    """Start the process that draws `run_dir/metrics.png` from the saved run.json and the collected
    files (plots.py, at nice 10), detached in its own session so a controller that exits (or is
    killed) right after still gets its plot. Returns the plot's path (it may still be being
    drawn: `wait_for_plot`) or "not written: <why>"."""
    pending = run_dir / PLOT_PENDING
    try:
        (run_dir / PLOT_ERROR).unlink(missing_ok=True)
        if _matplotlib_missing():
            return plot_failed(run_dir, MATPLOTLIB_MISSING)
        replace_file(pending, b"starting\n")
    except OSError as exc:  # a full disk: the plot is the least of it, and never fails the run
        return f"not written: {exc}"
    # The child imports this very copy of lepton_infra, whatever put it on the parent's sys.path.
    package_root = str(Path(lepton_infra.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _DRAW, str(run_dir.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"},
        )
    except OSError as exc:
        pending.unlink(missing_ok=True)
        return plot_failed(run_dir, f"could not start the drawing process: {exc}")
    # Reaped by a daemon thread, so a long-lived caller collects no zombies (and an exiting one
    # does not wait for the drawing).
    threading.Thread(target=_reap, args=(child, run_dir), name=f"plot-{child.pid}", daemon=True).start()
    return str(run_dir / PLOT)


def _reap(child: subprocess.Popen[bytes], run_dir: Path) -> None:
    """Wait for the drawing process; one that ended without saying how (killed, or Python could
    not even start it) while this caller still runs gets its end recorded as the reason."""
    code = child.wait()
    pending = run_dir / PLOT_PENDING
    try:
        unfinished = pending.read_text(encoding="utf-8").strip() in ("starting", str(child.pid))
    except OSError:
        return  # it finished: metrics.png or metrics.png.error says how
    if unfinished and code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        with contextlib.suppress(OSError):  # the run's folder went: nobody is left to tell
            plot_failed(run_dir, f"the drawing process (PID {child.pid}) {how} before drawing")
            pending.unlink(missing_ok=True)


PlotState = Literal["drawing", "drawn", "failed", "none"]


def plot_state(run_dir: Path) -> tuple[PlotState, str]:
    """Where `run_dir`'s metrics.png stands, with its path (drawing, drawn) or the reason (failed,
    none). "drawing" while a drawing process works, even over an earlier plot (a later `collect`)."""
    run_dir = Path(run_dir)
    try:
        pending = (run_dir / PLOT_PENDING).read_text(encoding="utf-8").strip()
    except OSError:
        pending = None
    if pending is not None:
        if pending.isdigit() and not psutil.pid_exists(int(pending)):
            return "failed", f"the drawing process (PID {pending}) ended without a result"
        return "drawing", str(run_dir / PLOT)
    try:
        reason = (run_dir / PLOT_ERROR).read_text(encoding="utf-8").partition("\n")[0]
        return "failed", f"{reason} (details: {run_dir / PLOT_ERROR})"
    except OSError:
        pass
    if (run_dir / PLOT).exists():
        return "drawn", str(run_dir / PLOT)
    return "none", "nothing to draw: the run has no collected metrics samples or progress lines"


def wait_for_plot(run_dir: Path, timeout: float = 60.0) -> Path:
    """metrics.png of a run (`RunResult.run_dir`) once its drawing process has finished, at most
    `timeout` seconds from now. Raises PlotNotDrawn with the reason when it failed or there was
    nothing to draw, TimeoutError when it is still being drawn."""
    deadline = time.monotonic() + timeout
    while True:
        state, said = plot_state(Path(run_dir))
        if state == "drawn":
            return Path(said)
        if state != "drawing":
            raise PlotNotDrawn(f"{PLOT} was not drawn: {said}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{said} is still being drawn after {timeout:g} s ({PLOT_PENDING} is there)")
        time.sleep(0.05)


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
