"""The workload layer: run a PyTorch job on every node of an inventory over SSH.

    from lepton_infra.workload import run_job
    result = run_job(Inventory.load(".lepton/local/inventory.json"), Path("workloads/cifar10"), ["--data", "synthetic", "--epochs", "1"])

`run_job` ships the workload (content-hashed), starts it under torchrun on every node detached
from SSH, streams logs/progress to a `RunEvents`, and collects outputs, logs and `run.json` into
`runs/<run-id>/`. `attach`, `run_status`, `read_logs`, `collect` and `cancel` work on a run from
any later process. Imports paramiko, never torch or pulumi."""

from lepton_infra.workload.models import NodeResult, NodeStatus, NullEvents, RunEvents, RunResult
from lepton_infra.workload.runner import attach, cancel, collect, read_logs, run_job, run_status

__all__ = [
    "NodeResult",
    "NodeStatus",
    "NullEvents",
    "RunEvents",
    "RunResult",
    "attach",
    "cancel",
    "collect",
    "read_logs",
    "run_job",
    "run_status",
]
