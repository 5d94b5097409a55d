"""The commands that drive a run on the nodes: `run` (ship, launch, follow, collect), `attach`
(follow a run again from a later process), `logs` and `collect`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lepton_infra.cli.app import console
from lepton_infra.cli.options import (
    DEFAULT_INVENTORY,
    HeartbeatOpt,
    InventoryOpt,
    JsonOpt,
    MaxBytesOpt,
    MaxFilesOpt,
    RunIdArg,
    RunsDirOpt,
    TimeoutOpt,
    check_run_id,
    load_inventory,
    positive,
    run_or_latest,
)
from lepton_infra.cli.render import live, render_result
from lepton_infra.errors import ConfigError, JobFailed, LeptonError

if TYPE_CHECKING:
    from lepton_infra.workload import RunResult


def run(
    workload_dir: Annotated[
        Path, typer.Argument(help="Workload folder; its train.py (or lepton.toml entrypoint) runs.")
    ],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the entrypoint (after --).")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            help="Processes per node. Default: the inventory's GPUs per node (1 without GPUs).",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Default: timestamp + random suffix.")
    ] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    heartbeat_timeout: HeartbeatOpt = 30.0,
    boot_timeout: Annotated[
        float,
        typer.Option(
            "--boot-timeout",
            help="Seconds to wait for nodes still in their first boot (cloud-init) before giving up.",
        ),
    ] = 900.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="Ship what symlinks leaving the workload folder point to (default: refuse them).",
        ),
    ] = False,
    metrics_every: Annotated[
        float,
        typer.Option(
            "--metrics-every", help="Seconds between node metrics samples (CPU, RAM, GPUs); 0 turns them off."
        ),
    ] = 5.0,
) -> None:
    """Ship WORKLOAD_DIR to every node, run it with torchrun, stream logs, collect results."""
    if nproc_per_node is not None and nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    positive("--connect-timeout", connect_timeout)
    check_run_id(run_id)
    from lepton_infra.workload.collecting import check_limits

    limits = check_limits(max_collect_bytes, max_collect_files)
    inv = load_inventory(inventory)
    from lepton_infra.workload import run_job

    with live(quiet=as_json, inventory=inv) as events:
        result = run_job(
            inv,
            workload_dir,
            list(args or []),
            nproc_per_node=nproc_per_node,
            run_id=run_id,
            runs_dir=runs_dir,
            connect_timeout=connect_timeout,
            events=events,
            follow_links=follow_links,
            heartbeat_timeout=heartbeat_timeout,
            metrics_every=metrics_every,
            boot_timeout=boot_timeout,
            limits=limits,
        )
    _finish(result, as_json)


def attach(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    heartbeat_timeout: HeartbeatOpt = 30.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
) -> None:
    """Reconnect to a run (e.g. after the controller died), stream the rest of its logs, collect."""
    from lepton_infra.workload import attach as attach_run
    from lepton_infra.workload.collecting import check_limits

    limits = check_limits(max_collect_bytes, max_collect_files)
    positive("--connect-timeout", connect_timeout)
    run_id = run_or_latest(run_id, runs_dir)
    inv = load_inventory(inventory)
    with live(quiet=as_json, inventory=inv) as events:
        result = attach_run(
            inv,
            run_id,
            runs_dir=runs_dir,
            connect_timeout=connect_timeout,
            events=events,
            heartbeat_timeout=heartbeat_timeout,
            limits=limits,
        )
    _finish(result, as_json)


def logs(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", "-f", help="Keep streaming until the run ends.")
    ] = False,
    connect_timeout: TimeoutOpt = 10.0,
) -> None:
    """Print a run's logs, prefixed by node, straight from the nodes."""
    from lepton_infra.workload import read_logs

    run_id = run_or_latest(run_id, runs_dir)
    inv = load_inventory(inventory)
    if node is not None:
        inv.node(node)  # a clear ConfigError for an unknown node name
    with live(quiet=False) as events:
        read_logs(
            inv, run_id, node=node, follow=follow, events=events, connect_timeout=connect_timeout, keep=False
        )


def collect(
    run_id: Annotated[str, typer.Argument(help="The run whose results to bring home.")],
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
) -> None:
    """(Re)collect every node's outputs and logs into RUNS_DIR/RUN_ID/ and write run.json; only
    what is not already here is fetched."""
    from lepton_infra.workload import collect as collect_run
    from lepton_infra.workload.collecting import check_limits

    check_run_id(run_id)
    limits = check_limits(max_collect_bytes, max_collect_files)
    inv = load_inventory(inventory)
    with live(quiet=as_json) as events:
        result = collect_run(
            inv, run_id, runs_dir=runs_dir, connect_timeout=connect_timeout, limits=limits, events=events
        )
    render_result(result, as_json)
    if not as_json:
        from lepton_infra.workload.record import RunStore
        from lepton_infra.workload.results import store_notes

        for line in store_notes(RunStore(runs_dir).load(run_id)):
            console.print(line)
    _missing_results(result)


def _missing_results(result: RunResult) -> None:
    """A run whose results are not all home is the environment's failure (exit 3), in one line
    naming each node and why (the store keeps what a node stored: then it is not missing)."""
    missing = [n for n in result.nodes if n.collect_error and not n.store_url]
    if missing:
        why = "; ".join(f"{n.name}: {n.collect_error}" for n in missing)
        raise LeptonError(f"run {result.run_id}: results of {len(missing)} node(s) not brought home: {why}")


def _finish(result: RunResult, as_json: bool) -> None:
    """Show the outcome, then exit as it went: 0 all succeeded and home, 3 results missing, 1 failed."""
    render_result(result, as_json)
    if all(n.state == "succeeded" for n in result.nodes):
        _missing_results(result)
    if result.status != "succeeded":
        failed = [
            f"{n.name} ({n.state}" + (f": {n.detail})" if n.detail else ")")
            for n in result.nodes
            if n.state != "succeeded"
        ]
        raise JobFailed(f"run {result.run_id} {result.status}; failed nodes: {', '.join(failed) or '-'}")
