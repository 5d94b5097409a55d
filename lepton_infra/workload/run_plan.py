"""A run's validated input (`RunPlan`): everything `run_job` checks before any node is contacted,
so bad input is a ConfigError naming the value before a single connection is opened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import boot, jobspec, steps
from lepton_infra.workload.collecting import Limits
from lepton_infra.workload.manifest import Manifest, build_manifest
from lepton_infra.workload.metrics import check_every
from lepton_infra.workload.record import RunStore


@dataclass(frozen=True)
class RunPlan:
    """What one `run_job` call will do, checked: the workload and its manifest, the command, and
    the limits the run is held to."""

    workload_dir: Path
    entrypoint: str
    args: list[str]
    nproc_per_node: int
    env: dict[str, str]
    run_id: str
    manifest: Manifest
    connect_timeout: float
    heartbeat_timeout: float
    metrics_every: float
    boot_timeout: float
    limits: Limits | None


def check_heartbeat_timeout(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 1 <= seconds <= 3600:
        raise ConfigError(f"--heartbeat-timeout must be a number of seconds from 1 to 3600, got {seconds!r}")


def default_nproc(inventory: Inventory) -> int:
    """Processes per node when none is asked for: one per GPU the inventory gives every node (the
    fewest, when nodes differ), or 1 on nodes without GPUs (CPU, the local pool)."""
    return min(n.gpus for n in inventory.nodes) or 1


def plan_run(
    inventory: Inventory,
    store: RunStore,
    workload_dir: Path,
    args: Sequence[str],
    *,
    nproc_per_node: int | None,
    run_id: str | None,
    env: Mapping[str, str] | None,
    connect_timeout: float,
    heartbeat_timeout: float,
    metrics_every: float,
    boot_timeout: float,
    follow_links: bool,
    limits: Limits | None,
) -> RunPlan:
    """Check every input (in the order a user would fix them), hash the workload, and make sure the
    inventory's store answers: the nodes upload their results there when the job ends, so a missing
    bucket or no credentials must fail now, not after the training."""
    metrics_every = check_every(metrics_every)
    workload_dir = Path(workload_dir)
    entrypoint = jobspec.read_entrypoint(workload_dir)
    checked_args = jobspec.check_args(args)
    nproc = jobspec.check_nproc(
        default_nproc(inventory) if nproc_per_node is None else nproc_per_node, inventory
    )
    check_heartbeat_timeout(heartbeat_timeout)
    extra_env = jobspec.check_env(env)
    run_id = jobspec.check_run_id(run_id) if run_id is not None else jobspec.new_run_id()
    steps.check_timeout(connect_timeout)
    if store.exists(run_id):
        raise ConfigError(
            f"run id {run_id!r} already has results in {store.dir(run_id)}/; choose another run id"
        )
    manifest = build_manifest(workload_dir, follow_links=follow_links)
    if entrypoint not in manifest.files:
        raise ConfigError(
            f"entrypoint {entrypoint!r} of {workload_dir} is excluded by .leptonignore; it must ship"
        )
    boot.check_timeout(boot_timeout)
    if inventory.store:
        from lepton_infra.data import open_store

        open_store(inventory.store, region=inventory.region).check()
    return RunPlan(
        workload_dir=workload_dir,
        entrypoint=entrypoint,
        args=checked_args,
        nproc_per_node=nproc,
        env=extra_env,
        run_id=run_id,
        manifest=manifest,
        connect_timeout=connect_timeout,
        heartbeat_timeout=heartbeat_timeout,
        metrics_every=metrics_every,
        boot_timeout=boot_timeout,
        limits=limits,
    )
