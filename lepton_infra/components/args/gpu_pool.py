"""`GpuVmPoolArgs`: the GPU pool's one typed spec (what every cloud's pool is built from)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from lepton_infra.catalog import CatalogEntry, lookup
from lepton_infra.components.args.checks import MAX_NODES, check_cidrs
from lepton_infra.components.args.fields import (
    MODEL_CONFIG,
    CidrList,
    Cloud,
    Egress,
    EnvName,
    Extra,
    Flag,
    LinuxUser,
    Name,
    OptionalMapping,
    PublicKey,
    UserTags,
    described,
    raise_config_errors,
    whole,
)
from lepton_infra.components.images import python_for
from lepton_infra.errors import ConfigError


@dataclass(config=MODEL_CONFIG)
class GpuVmPoolArgs:
    """A pool of identical GPU VMs. `accelerator`/`gpus_per_node` select a catalog row (the instance
    type); `allowed_ssh_cidrs` is required because SSH is the only way in; `extra` is merged into the
    provider's own arguments of every VM (escape hatch); `network`/`identity` reuse existing
    resources (cloud-specific keys, see the per-cloud module).

    `private_egress` matters only for nodes without a public IP in a network the pool creates:
    "nat" gives them the internet through a NAT gateway (package mirrors, pip) besides the cloud's
    private access to its own services; "endpoints" gives them only the latter (AWS: S3 gateway +
    SQS and Secrets Manager interface endpoints; GCP: Private Google Access)."""

    cloud: Annotated[Cloud, described("Cloud: `aws`, `gcp` or `azure`.", config="cloud", required_key=True)]
    accelerator: Annotated[
        str,
        described(
            "GPU model from lepton-infra's catalog: `T4`, `L4`, `A10G`, `A100-40GB`, `A100-80GB` or `H100`.",
            config="accelerator",
            required_key=True,
        ),
    ]
    gpus_per_node: Annotated[
        int,
        whole(1, 16),
        described(
            "GPUs per node (default 1); the catalog picks the instance type that has exactly this many.",
            config="gpusPerNode",
        ),
    ] = 1
    nodes: Annotated[
        int, whole(1, MAX_NODES), described(f"Number of nodes, 1-{MAX_NODES} (default 1).", config="nodes")
    ] = 1
    region: Annotated[
        str | None,
        described(
            "Cloud region (e.g. us-east-1 / us-central1 / eastus); must offer the accelerator "
            "(the catalog lists where it does).",
            config="region",
        ),
    ] = None
    zone: Annotated[
        str | None, described("Zone inside the region (GCP/AWS); picked for you when unset.", config="zone")
    ] = None
    spot: Annotated[
        Flag,
        described("Use spot/preemptible capacity (default false; cheaper, may be reclaimed).", config="spot"),
    ] = False
    image: Annotated[
        str | None,
        described(
            "Machine image; default is the cloud's deep-learning image (AMI id, GCP image, Azure URN "
            "publisher:offer:sku:version). An exact image (AMI id, GCP image version, Azure URN with a "
            "version) pins it, and changing it replaces the nodes; the default or a moving one (SSM "
            "parameter, image family, Azure `latest`) gives new nodes the current image and leaves "
            "running nodes on theirs.",
            config="image",
        ),
    ] = None
    disk_gb: Annotated[
        int, whole(30, 16384), described("Root disk size per node in GiB (default 200).", config="diskGb")
    ] = 200
    allowed_ssh_cidrs: Annotated[
        CidrList,
        described(
            "CIDRs allowed to reach SSH (port 22). Required in practice: world-open ranges need allowWorldSsh.",
            config="allowedSshCidrs",
            required_key=True,
        ),
    ] = Field(default_factory=list)
    allow_world_ssh: Annotated[
        Flag,
        described(
            "Explicitly allow `0.0.0.0/0` / `::/0` in allowedSshCidrs (default false).",
            config="allowWorldSsh",
        ),
    ] = False
    ssh_public_key: Annotated[
        PublicKey,
        described(
            "OpenSSH public key for the nodes' user; without it a key pair is generated and exported as a secret.",
            config="sshPublicKey",
        ),
    ] = None
    network: Annotated[
        OptionalMapping,
        described(
            "Reuse an existing network instead of creating one (aws: subnet_id, vpc_id; "
            "gcp: network, subnetwork; azure: subnet_id, resource_group_name); its routes, NAT and "
            "endpoints are yours. As a config key, JSON text.",
            config="network",
        ),
    ] = None
    identity: Annotated[
        OptionalMapping,
        described(
            "Reuse an existing node identity (aws: instance_profile; gcp: service_account_email; "
            "azure: user_assigned_identity_id)."
        ),
    ] = None
    idle_shutdown_minutes: Annotated[
        int,
        whole(0, 7 * 24 * 60),
        described(
            "Nodes power off after this many minutes without a running job (default 60; 0: never).",
            config="idleShutdownMinutes",
        ),
    ] = 60
    max_lifetime_hours: Annotated[
        int,
        whole(1, 24 * 90),
        described(
            "Nodes power off after this many hours in any case (default 24).", config="maxLifetimeHours"
        ),
    ] = 24
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        described(
            "Escape hatch: raw arguments merged into the cloud provider's instance resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    user: Annotated[LinuxUser, described("Login user created on the nodes (default `lepton`).")] = "lepton"
    cluster: Annotated[
        Name,
        described(
            "Cluster name for the `lepton:cluster` tag and the inventory (default: the resource name)."
        ),
    ] = None
    env: EnvName = None
    private_egress: Annotated[
        Egress,
        described(
            "How nodes without a public IP get out: `nat` (internet via a NAT gateway, default) or "
            "`endpoints` (cloud services only).",
            config="privateEgress",
        ),
    ] = "nat"
    # One interpreter per cluster: the nodes' first boot installs the data plane's clients into it,
    # and the inventory names it (TrainingCluster).
    python: Annotated[
        str | None,
        described(
            "Interpreter with torch on the nodes, written into the inventory (default: the image's own, "
            "from the image table; python3 for an image not in it).",
            config="python",
        ),
    ] = None

    # A pool needs the login key; TrainingCluster generates one when it is left unset.
    _needs_key: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_pool(self) -> GpuVmPoolArgs:
        """Checks across fields, done once at construction: SSH sources against allow_world_ssh,
        and the login key. The catalog row is `validate()`'s: a cloud's own region check comes
        first and names the problem better than "not offered there"."""
        if not self.allowed_ssh_cidrs:
            raise ConfigError(
                "allowed_ssh_cidrs is empty: list the networks allowed to SSH to the nodes, "
                "e.g. ['203.0.113.0/24'] (your office or VPN egress)"
            )
        self.allowed_ssh_cidrs = check_cidrs(self.allowed_ssh_cidrs, self.allow_world_ssh)
        python_for(self.cloud, self.image, self.python)  # a set `python` must name an interpreter
        if self.ssh_public_key is None and self._needs_key:
            raise ConfigError(
                "ssh_public_key is not set: a pool needs the public key its `user` logs in with "
                "(TrainingCluster generates one when you leave it unset)"
            )
        return self

    def validate(self) -> CatalogEntry:
        """The catalog row the pool will use (ConfigError when the catalog has none for this
        accelerator, GPU count and region). The fields were validated when the spec was built;
        this changes nothing."""
        return lookup(self.cloud, self.accelerator, self.gpus_per_node, self.region)


raise_config_errors(GpuVmPoolArgs)
