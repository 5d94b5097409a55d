"""Pulumi components for GPU training clusters on AWS, GCP and Azure.

The neutral classes (`TrainingCluster`, `GpuVmPool`, `ObjectStore`, `JobQueue`) dispatch on
`args.cloud`; the per-cloud classes (`lepton_infra.components.aws.AwsGpuVmPool`, ...) are public too
for users who want one cloud's full surface. Importing this package loads no cloud SDK, and not
even Pulumi: the names below load on first use, so the CLI can import
`lepton_infra.components.stack_inventory` where only the base install (no `pulumi` extra) exists."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs, TrainingClusterArgs
    from lepton_infra.components.common import TAG_CLUSTER, TAG_ENV, TAG_IDLE, TAG_LIFETIME, PoolNode
    from lepton_infra.components.neutral import GpuVmPool, JobQueue, ObjectStore, TrainingCluster

_HOME = {
    **dict.fromkeys(("GpuVmPoolArgs", "JobQueueArgs", "ObjectStoreArgs", "TrainingClusterArgs"), "args"),
    **dict.fromkeys(("TAG_CLUSTER", "TAG_ENV", "TAG_IDLE", "TAG_LIFETIME", "PoolNode"), "common"),
    **dict.fromkeys(("GpuVmPool", "JobQueue", "ObjectStore", "TrainingCluster"), "neutral"),
}


def __getattr__(name: str) -> Any:
    """PEP 562: `from lepton_infra.components import TrainingCluster` imports `neutral` only now."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


__all__ = [
    "TAG_CLUSTER",
    "TAG_ENV",
    "TAG_IDLE",
    "TAG_LIFETIME",
    "GpuVmPool",
    "GpuVmPoolArgs",
    "JobQueue",
    "JobQueueArgs",
    "ObjectStore",
    "ObjectStoreArgs",
    "PoolNode",
    "TrainingCluster",
    "TrainingClusterArgs",
]
