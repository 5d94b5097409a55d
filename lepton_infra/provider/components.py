"""The component package's resources: thin wrappers over `lepton_infra.components`.

Each wrapper takes its TypedDict (inputs.py), turns it into the real component's `*Args`
dataclass, and constructs the real component as its only child, so a TypeScript, Go or YAML
program gets exactly the resources (and secure defaults, validation and tags) a Python program
gets. The wrappers' class names, output annotations and docstrings are what the schema shows.
Do not add `from __future__ import annotations` here: the analyzer needs real types.
"""

import inspect
from collections.abc import Mapping
from typing import Any, Optional

import pulumi

from lepton_infra.provider.inputs import JobQueueInputs, ObjectStoreInputs, TrainingClusterInputs

TOKEN_PREFIX = "lepton-infra:index:"


def to_dataclass(cls: type, inputs: Mapping[str, Any]) -> Any:
    """Build the `cls` spec (a model in lepton_infra.components.args) from a wrapper's inputs.

    Absent (or null) keys are left out, so the model's default applies: defaults, bounds and
    unknown-key errors are defined once, in the model, which validates on construction.
    Numbers cross the provider protocol as doubles (120 arrives as 120.0): whole ones become ints.
    """
    kwargs = {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in inputs.items()
        if value is not None
    }
    return cls(**kwargs)


class TrainingCluster(pulumi.ComponentResource):
    """A GPU training cluster: network, node identity, a pool of GPU VMs with pinned SSH host keys,
    and (optionally) an object store and a job queue the nodes are allowed to use, nothing else.
    Secure defaults: SSH only from allowedSshCidrs, idle/lifetime watchdog, every resource tagged."""

    inventory: pulumi.Output[str]
    (
        "The cluster inventory (JSON, version 1) for `lepton-infra run --inventory`: nodes, pinned "
        "host keys, store and queue. Secret when it carries key material."
    )
    private_key: pulumi.Output[Optional[str]]  # noqa: UP045  (the schema analyzer reads Optional)
    """The generated login key (OpenSSH private key, a secret) when `sshPublicKey` was not given."""
    store_url: pulumi.Output[Optional[str]]  # noqa: UP045
    """The object store's URL (`s3://`, `gs://`, `az://`); unset with `store: false`."""
    queue_url: pulumi.Output[Optional[str]]  # noqa: UP045
    """The job queue's URL; unset with `queue: false`."""
    hourly_cost_usd: pulumi.Output[Optional[float]]  # noqa: UP045
    """The pool's catalog price per hour in USD, all nodes (the spot price with `spot: true`)."""

    def __init__(
        self, name: str, args: TrainingClusterInputs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN_PREFIX + "TrainingCluster", name, {}, opts)
        from lepton_infra.components import TrainingCluster as RealTrainingCluster
        from lepton_infra.components.args import TrainingClusterArgs

        self.cluster = RealTrainingCluster(
            name, to_dataclass(TrainingClusterArgs, args), pulumi.ResourceOptions(parent=self)
        )
        self.inventory = self.cluster.inventory
        cluster = self.cluster
        self.private_key = pulumi.Output.from_input(cluster.private_key)
        self.store_url = pulumi.Output.from_input(cluster.store_url)
        self.queue_url = pulumi.Output.from_input(cluster.queue_url)
        self.hourly_cost_usd = pulumi.Output.from_input(cluster.hourly_cost_usd)
        self.register_outputs(
            {
                "inventory": self.inventory,
                "privateKey": self.private_key,
                "storeUrl": self.store_url,
                "queueUrl": self.queue_url,
                "hourlyCostUsd": self.hourly_cost_usd,
            }
        )


class ObjectStore(pulumi.ComponentResource):
    """A private object-store bucket (S3, GCS or Azure Blob) with lepton-infra's secure defaults:
    no public access, encryption, TLS-only, versioning, and `lepton:cluster`/`lepton:env` tags."""

    url: pulumi.Output[str]
    """Bucket URL: `s3://bucket`, `gs://bucket` or `az://account/container`."""

    def __init__(
        self, name: str, args: ObjectStoreInputs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN_PREFIX + "ObjectStore", name, {}, opts)
        from lepton_infra.components import ObjectStore as RealObjectStore
        from lepton_infra.components.args import ObjectStoreArgs

        self.store = RealObjectStore(
            name, to_dataclass(ObjectStoreArgs, args), pulumi.ResourceOptions(parent=self)
        )
        self.url = self.store.url
        self.register_outputs({"url": self.url})


class JobQueue(pulumi.ComponentResource):
    """An encrypted work queue (SQS, Pub/Sub or Azure Storage Queue) with a dead-letter queue,
    tagged `lepton:cluster`/`lepton:env`."""

    url: pulumi.Output[str]
    """Queue URL (SQS), subscription path (Pub/Sub) or queue URL (Azure) that workers receive from."""
    dead_letter_url: pulumi.Output[str]
    """Where messages go after `maxReceiveCount` failed deliveries."""

    def __init__(self, name: str, args: JobQueueInputs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN_PREFIX + "JobQueue", name, {}, opts)
        from lepton_infra.components import JobQueue as RealJobQueue
        from lepton_infra.components.args import JobQueueArgs

        self.queue = RealJobQueue(name, to_dataclass(JobQueueArgs, args), pulumi.ResourceOptions(parent=self))
        self.url = self.queue.url
        self.dead_letter_url = self.queue.dead_letter_url
        self.register_outputs({"url": self.url, "deadLetterUrl": self.dead_letter_url})


# The analyzer takes class docstrings verbatim (`__doc__.strip()`); dedent them so the schema's
# descriptions carry no source indentation.
for _cls in (TrainingCluster, ObjectStore, JobQueue):
    _cls.__doc__ = inspect.cleandoc(_cls.__doc__ or "")
