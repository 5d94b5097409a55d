"""`demo`: the whole path on this machine in one command: a local pool, the CIFAR-10 LeNet trained
across it (DDP) on synthetic data, results collected and shown, the pool torn down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lepton_infra.cli.app import console
from lepton_infra.cli.options import RunsDirOpt, StateDirOpt
from lepton_infra.cli.render import fmt, live, render_result
from lepton_infra.display import styled
from lepton_infra.errors import ConfigError, JobFailed

REPO_ROOT = Path(__file__).resolve().parents[2]
PLOT_WAIT_S = 60.0  # metrics.png is drawn in about 2 s; a loaded machine gets this long


def demo(
    nodes: Annotated[int, typer.Option("--nodes", help="Local nodes to train across (DDP).")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-process batch size.")] = 16,
    state_dir: StateDirOpt = Path(".lepton/demo"),
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Start a local pool, train the CIFAR-10 LeNet across it on synthetic data, collect, tear down."""
    from lepton_infra import local
    from lepton_infra.workload import run_job

    if nodes < 1 or nodes > 8:
        raise ConfigError(f"--nodes must be between 1 and 8 for the demo, got {nodes}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    workload = cifar10_workload()
    console.rule(styled("lepton-infra demo", "bold"))
    console.print(f"1. starting {nodes} local sshd node(s) in {state_dir}")
    if (state_dir / "pool.json").exists():
        local.down(state_dir)  # a previous demo that was interrupted
    inv = local.up(nodes, state_dir)
    try:
        console.print(
            f"2. training the CIFAR-10 LeNet ({workload}) across {nodes} node(s), {epochs} epoch(s), on "
            "SYNTHETIC CIFAR-shaped data (no download here; its accuracy says nothing about CIFAR-10)"
        )
        args = [
            "--data",
            "synthetic",
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch_size),
            "--log-every",
            "200",
        ]
        with live(quiet=False, inventory=inv) as events:
            result = run_job(inv, workload, args, runs_dir=runs_dir, events=events)
        render_result(result, as_json=False)
    finally:
        console.print("3. tearing the local pool down")
        local.down(state_dir)
    if result.status != "succeeded":
        raise JobFailed(f"demo run {result.run_id} {result.status}; see {result.run_dir}")
    render_metrics(Path(result.run_dir))


def cifar10_workload() -> Path:
    for candidate in (Path("workloads/cifar10"), REPO_ROOT / "workloads" / "cifar10"):
        if (candidate / "train.py").is_file():
            return candidate
    raise ConfigError("workloads/cifar10/train.py not found; run the demo from the lepton-infra repository")


def render_metrics(run_dir: Path) -> None:
    """The job's own metrics.json (loss, accuracy, speed per epoch) as a table, and where its files are."""
    metrics_files = sorted(run_dir.glob("*/**/metrics.json"))
    if not metrics_files:
        console.print(styled(f"no metrics.json collected under {run_dir}", "yellow"))
        return
    metrics = json.loads(metrics_files[0].read_text())
    data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
    trained_on = (
        f"SYNTHETIC CIFAR-shaped data (not CIFAR-10, seed {data.get('seed')})"
        if data.get("kind") == "synthetic"
        else "real CIFAR-10"
        if data.get("kind") == "cifar10"
        else "data not stated"
    )
    table = Table(title=f"CIFAR-10 LeNet on {trained_on}")
    for column in ("epoch", "train loss", "test accuracy", "samples/s", "wall time"):
        table.add_column(column, justify="right")
    for e in metrics.get("epochs", []):
        table.add_row(
            str(e.get("epoch")),
            fmt(e.get("train_loss"), ".3f"),
            fmt(e.get("test_accuracy", e.get("test_acc")), ".3f"),
            fmt(e.get("samples_per_s", e.get("samples_per_sec")), ",.0f"),
            fmt(e.get("wall_time_s", e.get("time_s")), ".1f", "s"),
        )
    console.print(table)
    folder = metrics_files[0].parent
    console.print(f"world size {metrics.get('world_size')}; results: {folder}/")
    for name in ("metrics.json", "model.pt", "loss_curve.png"):
        if (folder / name).exists():
            console.print(f"  {folder / name}")
    from lepton_infra.workload.report import PlotNotDrawn, wait_for_plot

    try:  # drawn in the background from the end of the run on: the showcase waits for it
        png = wait_for_plot(run_dir, timeout=PLOT_WAIT_S)
        console.print(f"  {png}  (GPU/CPU use and memory per node beside the loss)")
    except (PlotNotDrawn, TimeoutError) as exc:
        console.print(styled(f"  {exc}", "yellow"))
