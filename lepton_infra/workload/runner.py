"""Run a workload on every node of an inventory (`run_job`), and work on a run from any later
process (`attach`, `run_status`, `read_logs`, `collect`, `cancel`).

Per node, a run costs a handful of SSH commands on ONE connection: `prepare` (reserve the run
dir, list missing blobs), `receive` (one tar stream of the missing blobs), `launch` (start the
supervisor detached), then SFTP reads only while it runs (no shell per poll), and `pack` (one tar
stream back). The nodes are the source of truth (`~/.lepton/runs/<run-id>/state.json`); the
controller may die at any point and `attach` picks the run up again.

Where things land, on the node (`~` is the node's $HOME):
    ~/.lepton/runs/<run-id>/workload/     the shipped workload (cwd of the job)
    ~/.lepton/runs/<run-id>/output/       LEPTON_OUTPUT_DIR
    ~/.lepton/runs/<run-id>/logs/node.log torchrun's stdout+stderr (raw, progress lines included)
    ~/.lepton/runs/<run-id>/state.json    state, pid, exit code, times, heartbeat
and locally, under `runs_dir` (default ./runs):
    runs/<run-id>/run.json                the RunRecord: cluster, workload, args, per-node
                                          status, exit codes, timings, bytes moved
    runs/<run-id>/<node>/output/...       that node's LEPTON_OUTPUT_DIR
    runs/<run-id>/<node>/logs/node.log    its log (and logs/agent.log, the supervisor's own)
    runs/<run-id>/<node>/state.json       its final state (and spec.json: the exact command and env)
    runs/<run-id>/.log-offsets.json       how far each node's log was streamed (attach resumes there)

This module holds `run_job` and gathers the other verbs; the parts: `run` (a run as a `Run`
whose phases save the record), `run_plan` (its checked input), `existing_run` (the verbs of a later process), `follow`
(watch and collect, shared by both), `group` (the connected nodes, one result type for parallel
calls), `steps` (prepare, ship, launch, collect), `monitor` (typed events while it runs), `record`
(run.json), `remote` (the node-side commands)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lepton_infra.inventory import Inventory
from lepton_infra.workload import boot
from lepton_infra.workload.collecting import Limits
from lepton_infra.workload.existing_run import attach, cancel, collect, read_logs, run_status, watch_nodes
from lepton_infra.workload.metrics import DEFAULT_EVERY_S as DEFAULT_METRICS_S
from lepton_infra.workload.models import NullEvents, RunEvents, RunResult
from lepton_infra.workload.monitor import HEARTBEAT_TIMEOUT_S
from lepton_infra.workload.record import RunStore, run_status_of
from lepton_infra.workload.run import Laps, Run
from lepton_infra.workload.run_plan import check_heartbeat_timeout, default_nproc, plan_run

__all__ = [
    "attach",
    "cancel",
    "check_heartbeat_timeout",
    "collect",
    "default_nproc",
    "read_logs",
    "run_job",
    "run_status",
    "run_status_of",
    "watch_nodes",
]


def run_job(
    inventory: Inventory,
    workload_dir: Path,
    args: Sequence[str] = (),
    *,
    nproc_per_node: int | None = None,
    run_id: str | None = None,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    events: RunEvents | None = None,
    follow_links: bool = False,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    metrics_every: float = DEFAULT_METRICS_S,
    boot_timeout: float = boot.BOOT_TIMEOUT_S,
    limits: Limits | None = None,
) -> RunResult:
    """Ship `workload_dir` to every node, run its entrypoint under torchrun on all of them, stream
    logs and progress to `events`, collect outputs and logs into `runs_dir/<run-id>/`.
    A symlink leaving the workload folder is a ConfigError unless `follow_links` (then what it
    points to ships); links inside the folder ship as links.
    `nproc_per_node` defaults to the inventory's GPUs per node (1 without GPUs). Every node samples
    its CPU, memory and GPUs each `metrics_every` seconds (0: off) for the live view, run.json,
    metrics.png and TensorBoard (workload/metrics.py, workload/report.py). metrics.png is drawn by a
    background process right after the run, so it may not be there yet when this returns:
    `lepton_infra.workload.report.wait_for_plot(result.run_dir)` waits for it (or says why not).
    `limits` bounds what the collect takes from each node (workload/collecting.py); what it
    leaves is listed in run.json (`nodes[].skipped`) and said to `events`.

    Nodes still in their first boot (cloud-init installing torch or the clients) are waited for, at
    most `boot_timeout` seconds, with progress (workload/boot.py); a failed boot is a NodeError
    carrying the boot's own log. While the run is prepared and shipped, a preflight asks every node's python for torch and its
    GPUs: a node without torch, or with fewer GPUs than the inventory says, is a NodeError naming
    it, and the run's folders are removed again; nothing is ever launched then.

    Returns the RunResult whatever the job did (status "failed" when a node failed or was lost;
    the other nodes are then stopped). Raises ConfigError for bad input (no workload, no
    entrypoint, bad run id/args/env, a run id already used) before anything runs, and NodeError
    (HostKeyMismatch for a wrong host key) when a node cannot be reached or refuses a command;
    connection problems are found before anything runs on any node."""
    laps = Laps()  # the whole call is timed: `connect` includes checking and hashing
    store = RunStore(runs_dir)
    plan = plan_run(
        inventory,
        store,
        workload_dir,
        args,
        nproc_per_node=nproc_per_node,
        run_id=run_id,
        env=env,
        connect_timeout=connect_timeout,
        heartbeat_timeout=heartbeat_timeout,
        metrics_every=metrics_every,
        boot_timeout=boot_timeout,
        follow_links=follow_links,
        limits=limits,
    )
    return Run(inventory, plan, store, events or NullEvents(), laps).execute()
