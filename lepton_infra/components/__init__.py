"""Pulumi components for GPU training clusters on AWS, GCP and Azure.

The neutral classes (`TrainingCluster`, `GpuVmPool`, `ObjectStore`, `JobQueue`) dispatch on
`args.cloud`; the per-cloud classes (`lepton_infra.components.aws.AwsGpuVmPool`, ...) are public too
for users who want one cloud's full surface. Importing this package loads no cloud SDK."""

from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs, TrainingClusterArgs
from lepton_infra.components.common import TAG_CLUSTER, TAG_ENV, TAG_IDLE, TAG_LIFETIME, PoolNode
from lepton_infra.components.neutral import GpuVmPool, JobQueue, ObjectStore, TrainingCluster

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
