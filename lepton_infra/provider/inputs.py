"""Inputs of the component package: one TypedDict per served component.

The Pulumi analyzer reads these classes to build the package schema: each key becomes an input
property (camelCased), each docstring its description, `NotRequired` keys are optional. Keys map
1:1 onto the fields of the `lepton_infra.components.args` models, and each docstring is the
model field's description word for word (tests/test_provider_schema.py fails when they drift);
defaults, bounds and validation live only in those models.

Plain types, not `pulumi.Input[...]`: the components validate their arguments in Python and derive
the whole resource graph from them at construction time (so `pulumi preview` shows every resource),
which needs known values. The schema marks them `plain`, so other languages' SDKs type them as
plain values too. Do not add `from __future__ import annotations` here: the analyzer needs real
types, not strings.
"""

from typing import Any, NotRequired, TypedDict


class TrainingClusterInputs(TypedDict):
    """Arguments of `lepton-infra:index:TrainingCluster`: the GPU pool's fields plus store and queue options."""

    cloud: str
    """Cloud: `aws`, `gcp` or `azure`."""
    accelerator: str
    """GPU model from lepton-infra's catalog: `T4`, `L4`, `A10G`, `A100-40GB`, `A100-80GB` or `H100`."""
    gpus_per_node: NotRequired[int]
    """GPUs per node (default 1); the catalog picks the instance type that has exactly this many."""
    nodes: NotRequired[int]
    """Number of nodes, 1-64 (default 1)."""
    region: NotRequired[str]
    (
        "Cloud region (e.g. us-east-1 / us-central1 / eastus); must offer the accelerator (the catalog "
        "lists where it does)."
    )
    zone: NotRequired[str]
    """Zone inside the region (GCP/AWS); picked for you when unset."""
    spot: NotRequired[bool]
    """Use spot/preemptible capacity (default false; cheaper, may be reclaimed)."""
    image: NotRequired[str]
    (
        "Machine image; default is the cloud's deep-learning image (AMI id, GCP image, Azure URN "
        "publisher:offer:sku:version). An exact image (AMI id, GCP image version, Azure URN with a "
        "version) pins it, and changing it replaces the nodes; the default or a moving one (SSM "
        "parameter, image family, Azure `latest`) gives new nodes the current image and leaves running "
        "nodes on theirs."
    )
    disk_gb: NotRequired[int]
    """Root disk size per node in GiB (default 200)."""
    allowed_ssh_cidrs: NotRequired[list[str]]
    """CIDRs allowed to reach SSH (port 22). Required in practice: world-open ranges need allowWorldSsh."""
    allow_world_ssh: NotRequired[bool]
    """Explicitly allow `0.0.0.0/0` / `::/0` in allowedSshCidrs (default false)."""
    ssh_public_key: NotRequired[str]
    """OpenSSH public key for the nodes' user; without it a key pair is generated and exported as a secret."""
    network: NotRequired[dict[str, str]]
    (
        "Reuse an existing network instead of creating one (aws: subnet_id, vpc_id; gcp: network, "
        "subnetwork; azure: subnet_id, resource_group_name); its routes, NAT and endpoints are yours. As "
        "a config key, JSON text."
    )
    identity: NotRequired[dict[str, str]]
    (
        "Reuse an existing node identity (aws: instance_profile; gcp: service_account_email; azure: "
        "user_assigned_identity_id)."
    )
    idle_shutdown_minutes: NotRequired[int]
    """Nodes power off after this many minutes without a running job (default 60; 0: never)."""
    max_lifetime_hours: NotRequired[int]
    """Nodes power off after this many hours in any case (default 24)."""
    tags: NotRequired[dict[str, str]]
    """Extra tags/labels for every resource (the `lepton:cluster`/`lepton:env` tags are always added)."""
    extra: NotRequired[dict[str, Any]]
    """Escape hatch: raw arguments merged into the cloud provider's instance resource (wins over ours)."""
    user: NotRequired[str]
    """Login user created on the nodes (default `lepton`)."""
    cluster: NotRequired[str]
    """Cluster name for the `lepton:cluster` tag and the inventory (default: the resource name)."""
    env: NotRequired[str]
    """Environment for the `lepton:env` tag (default: the Pulumi stack name)."""
    store: NotRequired[bool]
    """Create an object store the nodes may use (default true)."""
    queue: NotRequired[bool]
    """Create a job queue the nodes may use (default true)."""
    store_versioning: NotRequired[bool]
    """Keep old object versions in the store (default true)."""
    store_retention_days: NotRequired[int]
    """Delete stored objects after this many days; unset keeps them."""
    store_force_destroy: NotRequired[bool]
    """Let `pulumi destroy` delete a store that still holds objects (default false)."""
    store_extra: NotRequired[dict[str, Any]]
    """Raw provider arguments merged into the store's bucket/account (escape hatch)."""
    queue_visibility_timeout_s: NotRequired[int]
    """Seconds a received message stays invisible before redelivery (default 300)."""
    queue_max_receive_count: NotRequired[int]
    """Receives before a message moves to the dead-letter queue (default 5)."""
    queue_extra: NotRequired[dict[str, Any]]
    """Raw provider arguments merged into the queue (escape hatch)."""
    private_egress: NotRequired[str]
    (
        "How nodes without a public IP get out: `nat` (internet via a NAT gateway, default) or "
        "`endpoints` (cloud services only)."
    )
    jump: NotRequired[dict[str, Any]]
    (
        "A bastion for private nodes, written into the inventory: `host`, `port`, `user`, `host_key` "
        "(pinned like the nodes'), and `source_cidr`: the address range the nodes see it connect from "
        "(its private range), which must be inside allowedSshCidrs; as a config key, JSON text."
    )
    python: NotRequired[str]
    (
        "Interpreter with torch on the nodes, written into the inventory (default: the image's own, from "
        "the image table; python3 for an image not in it)."
    )
    enable_apis: NotRequired[bool]
    (
        "GCP only: enable the Google APIs the cluster calls (Compute Engine, IAM, Secret Manager, "
        "Pub/Sub, Cloud Storage, Cloud Resource Manager) before its first resource, for a fresh project; "
        "never disabled on destroy (default false)."
    )


class ObjectStoreInputs(TypedDict):
    """Arguments of `lepton-infra:index:ObjectStore`."""

    cloud: str
    """Cloud to create the bucket in: `aws`, `gcp` or `azure`."""
    region: NotRequired[str]
    """Cloud region (e.g. `us-east-1`, `europe-west4`, `westeurope`); the provider's default when unset."""
    versioning: NotRequired[bool]
    """Keep old object versions (default true)."""
    retention_days: NotRequired[int]
    """Delete objects (and old versions) after this many days; unset keeps them."""
    force_destroy: NotRequired[bool]
    """Allow `pulumi destroy` to delete a non-empty bucket (default false)."""
    tags: NotRequired[dict[str, str]]
    """Extra tags/labels for every resource (the `lepton:cluster`/`lepton:env` tags are always added)."""
    extra: NotRequired[dict[str, Any]]
    ("Escape hatch: raw arguments merged into the cloud provider's bucket/account resource (wins over ours).")
    cluster: NotRequired[str]
    """Cluster name for the `lepton:cluster` tag (default: the resource name)."""
    env: NotRequired[str]
    """Environment for the `lepton:env` tag (default: the Pulumi stack name)."""


class JobQueueInputs(TypedDict):
    """Arguments of `lepton-infra:index:JobQueue`."""

    cloud: str
    """Cloud to create the queue in: `aws` (SQS), `gcp` (Pub/Sub) or `azure` (Storage Queue)."""
    region: NotRequired[str]
    """Cloud region; the provider's default when unset."""
    visibility_timeout_s: NotRequired[int]
    """Seconds a received message stays invisible to other workers before it is redelivered (default 300)."""
    max_receive_count: NotRequired[int]
    """Deliveries before a message moves to the dead-letter queue (default 5)."""
    tags: NotRequired[dict[str, str]]
    """Extra tags/labels for every resource (the `lepton:cluster`/`lepton:env` tags are always added)."""
    extra: NotRequired[dict[str, Any]]
    """Escape hatch: raw arguments merged into the cloud provider's queue resource (wins over ours)."""
    cluster: NotRequired[str]
    """Cluster name for the `lepton:cluster` tag (default: the resource name)."""
    env: NotRequired[str]
    """Environment for the `lepton:env` tag (default: the Pulumi stack name)."""
