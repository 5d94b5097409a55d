"""`TrainingClusterArgs`: a pool's fields plus its store and queue options, and the parts
(`pool_args`, `store_args`, `queue_args`) each child component is built from."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from lepton_infra.components.args.checks import check_jump
from lepton_infra.components.args.fields import (
    MODEL_CONFIG,
    Extra,
    Flag,
    OptionalMapping,
    described,
    optional_whole,
    raise_config_errors,
    trusted_copy,
    whole,
)
from lepton_infra.components.args.gpu_pool import GpuVmPoolArgs
from lepton_infra.components.args.store_queue import JobQueueArgs, ObjectStoreArgs
from lepton_infra.errors import ConfigError


@dataclass(config=MODEL_CONFIG)
class TrainingClusterArgs(GpuVmPoolArgs):
    """Everything for one training cluster: the pool's fields (inherited, so they cannot drift from
    GpuVmPoolArgs), plus the store and queue options. Without `ssh_public_key` a key pair is
    generated and exported as a secret. `python` (the pool's, the inventory's interpreter with
    torch) defaults to the image's own, from the image table (`lepton_infra.components.images`)."""

    store: Annotated[Flag, described("Create an object store the nodes may use (default true).")] = True
    store_versioning: Annotated[Flag, described("Keep old object versions in the store (default true).")] = (
        True
    )
    store_retention_days: Annotated[
        int | None,
        optional_whole(1, 36500),
        described(
            "Delete stored objects after this many days; unset keeps them.", config="storeRetentionDays"
        ),
    ] = None
    store_force_destroy: Annotated[
        Flag, described("Let `pulumi destroy` delete a store that still holds objects (default false).")
    ] = False
    store_extra: Annotated[
        Extra, described("Raw provider arguments merged into the store's bucket/account (escape hatch).")
    ] = Field(default_factory=dict)
    queue: Annotated[Flag, described("Create a job queue the nodes may use (default true).")] = True
    queue_visibility_timeout_s: Annotated[
        int,
        whole(0, 43200),
        described(
            "Seconds a received message stays invisible before redelivery (default 300).",
            config="queueVisibilityTimeoutS",
        ),
    ] = 300
    queue_max_receive_count: Annotated[
        int,
        whole(1, 1000),
        described(
            "Receives before a message moves to the dead-letter queue (default 5).",
            config="queueMaxReceiveCount",
        ),
    ] = 5
    queue_extra: Annotated[
        Extra, described("Raw provider arguments merged into the queue (escape hatch).")
    ] = Field(default_factory=dict)
    jump: Annotated[
        OptionalMapping,
        described(
            "A bastion for private nodes, written into the inventory: `host`, `port`, `user`, `host_key` "
            "(pinned like the nodes'), and `source_cidr`: the address range the nodes see it connect "
            "from (its private range), which must be inside allowedSshCidrs; as a config key, JSON text.",
            config="jump",
        ),
    ] = None

    enable_apis: Annotated[
        Flag,
        described(
            "GCP only: enable the Google APIs the cluster calls (Compute Engine, IAM, Secret Manager, "
            "Pub/Sub, Cloud Storage, Cloud Resource Manager) before its first resource, for a fresh "
            "project; never disabled on destroy (default false).",
            config="enableApis",
        ),
    ] = False

    _needs_key: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check_cluster(self) -> TrainingClusterArgs:
        """The cluster's own cross-field checks: a bastion must be inside the SSH sources
        (normalised to the inventory's form), and APIs to enable exist only on GCP."""
        self.jump = check_jump(self.jump, self.allowed_ssh_cidrs)
        if self.enable_apis and self.cloud != "gcp":
            raise ConfigError(
                f"enable_apis is true, but cloud is {self.cloud!r}; allowed: true only with cloud 'gcp' "
                "(AWS and Azure services need no enabling here): leave it unset"
            )
        return self

    def _apis(self, extra: dict[str, Any]) -> dict[str, Any]:
        """`extra` with GCP's per-component switch `enable_apis` when the cluster asks for it."""
        return {"enable_apis": True, **extra} if self.enable_apis else extra

    def _values(self, cls: type) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(cls)}

    def with_values(self, **changes: Any) -> TrainingClusterArgs:
        """A copy with the cluster's own name, env or generated key, without validating again."""
        return trusted_copy(TrainingClusterArgs, **{**self._values(TrainingClusterArgs), **changes})

    def pool_args(self) -> GpuVmPoolArgs:
        return trusted_copy(GpuVmPoolArgs, **{**self._values(GpuVmPoolArgs), "extra": self._apis(self.extra)})

    def store_args(self) -> ObjectStoreArgs:
        return trusted_copy(
            ObjectStoreArgs,
            cloud=self.cloud,
            region=self.region,
            versioning=self.store_versioning,
            retention_days=self.store_retention_days,
            force_destroy=self.store_force_destroy,
            tags=self.tags,
            extra=self._apis(self.store_extra),
            cluster=self.cluster,
            env=self.env,
        )

    def queue_args(self) -> JobQueueArgs:
        return trusted_copy(
            JobQueueArgs,
            cloud=self.cloud,
            region=self.region,
            visibility_timeout_s=self.queue_visibility_timeout_s,
            max_receive_count=self.queue_max_receive_count,
            tags=self.tags,
            extra=self._apis(self.queue_extra),
            cluster=self.cluster,
            env=self.env,
        )


raise_config_errors(TrainingClusterArgs)
