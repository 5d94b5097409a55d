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

This module gathers the verbs; the parts: `run` (`run_job` as a `Run` whose phases save the
record), `run_plan` (its checked input), `existing_run` (the verbs of a later process), `follow`
(watch and collect, shared by both), `group` (the connected nodes, one result type for parallel
calls), `steps` (prepare, ship, launch, collect), `monitor` (typed events while it runs), `record`
(run.json), `remote` (the node-side commands)."""

from lepton_infra.workload.existing_run import attach, cancel, collect, read_logs, run_status, watch_nodes
from lepton_infra.workload.record import run_status_of
from lepton_infra.workload.run import run_job
from lepton_infra.workload.run_plan import check_heartbeat_timeout, default_nproc

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
