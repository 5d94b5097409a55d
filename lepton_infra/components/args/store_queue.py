"""`ObjectStoreArgs` and `JobQueueArgs`: the data plane's two specs (a bucket, a queue)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from lepton_infra.components.args.fields import (
    MODEL_CONFIG,
    Cloud,
    ClusterName,
    EnvName,
    Extra,
    Flag,
    UserTags,
    described,
    optional_whole,
    raise_config_errors,
    whole,
)


@dataclass(config=MODEL_CONFIG)
class ObjectStoreArgs:
    """A private, encrypted, versioned bucket (container on Azure). `retention_days` expires
    objects; `force_destroy` lets `pulumi destroy` delete a non-empty bucket."""

    cloud: Annotated[Cloud, described("Cloud to create the bucket in: `aws`, `gcp` or `azure`.")]
    region: Annotated[
        str | None,
        described(
            "Cloud region (e.g. `us-east-1`, `europe-west4`, `westeurope`); the provider's default when unset."
        ),
    ] = None
    versioning: Annotated[Flag, described("Keep old object versions (default true).")] = True
    retention_days: Annotated[
        int | None,
        optional_whole(1, 36500),
        described("Delete objects (and old versions) after this many days; unset keeps them."),
    ] = None
    force_destroy: Annotated[
        Flag, described("Allow `pulumi destroy` to delete a non-empty bucket (default false).")
    ] = False
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        described(
            "Escape hatch: raw arguments merged into the cloud provider's bucket/account resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    cluster: ClusterName = None
    env: EnvName = None

    def validate(self) -> None:
        """Nothing left to check: the spec was validated when it was built. Changes nothing."""


@dataclass(config=MODEL_CONFIG)
class JobQueueArgs:
    """A work queue with a dead-letter queue: a message received `max_receive_count` times without
    being deleted moves there, so one poison job cannot loop forever."""

    cloud: Annotated[
        Cloud,
        described("Cloud to create the queue in: `aws` (SQS), `gcp` (Pub/Sub) or `azure` (Storage Queue)."),
    ]
    region: Annotated[str | None, described("Cloud region; the provider's default when unset.")] = None
    visibility_timeout_s: Annotated[
        int,
        whole(0, 43200),
        described(
            "Seconds a received message stays invisible to other workers before it is redelivered (default 300)."
        ),
    ] = 300
    max_receive_count: Annotated[
        int,
        whole(1, 1000),
        described("Deliveries before a message moves to the dead-letter queue (default 5)."),
    ] = 5
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        described(
            "Escape hatch: raw arguments merged into the cloud provider's queue resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    cluster: ClusterName = None
    env: EnvName = None

    def validate(self) -> None:
        """Nothing left to check: the spec was validated when it was built. Changes nothing."""


for _model in (ObjectStoreArgs, JobQueueArgs):
    raise_config_errors(_model)
