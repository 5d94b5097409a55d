"""Google Cloud implementations of the lepton components: a VPC with its firewall, a
dedicated node service account, a GCS bucket, a Pub/Sub queue with a dead-letter topic, and a pool
of GPU Compute Engine instances that boot with the neutral layer's cloud-init.

Naming, tags, validation, host keys, cloud-init and the `extra` merge come from the neutral layer
(`args.py`, `common.py`, `cloudinit.py`); this module only maps them onto `pulumi_gcp` resources.

`extra={"enable_apis": True}` on a pool, store or queue enables the Google APIs that component
calls (`POOL_APIS`, `STORE_APIS`, `QUEUE_APIS`) before its first resource, for a fresh project; it
needs `serviceusage.services.enable` (e.g. Editor) and never disables an API on destroy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pulumi
from pulumi_gcp import compute, organizations, projects, pubsub, secretmanager, serviceaccount, storage

from lepton_infra.catalog import CatalogEntry, lookup
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs
from lepton_infra.components.cloudinit import BootFile, CloudBoot
from lepton_infra.components.common import (
    PoolNode,
    child,
    cluster_env,
    gcp_labels,
    ipv4_ssh_cidrs,
    merge_extra,
    new_node_image,
    pool_tags,
    ssh_needs_public_ip,
    tags_for,
    typed_args,
    unwrap,
)
from lepton_infra.components.pool import launch_nodes, node_host_keys, node_identities, pool_outputs
from lepton_infra.components.secret_fetch import fetch_command
from lepton_infra.errors import ConfigError

# Deep Learning VM image with PyTorch and a preinstalled NVIDIA driver. Ubuntu on purpose: GCE's
# Ubuntu images run cloud-init, which reads the `user-data` metadata key; the Debian-based DLVM
# families do not run cloud-init, so our user, pinned host key and watchdog would never be installed.
DEFAULT_IMAGE_PROJECT = "deeplearning-platform-release"
DEFAULT_IMAGE_FAMILY = "pytorch-2-9-cu129-ubuntu-2204-nvidia-580"
DEFAULT_IMAGE = f"projects/{DEFAULT_IMAGE_PROJECT}/global/images/family/{DEFAULT_IMAGE_FAMILY}"

DEFAULT_REGION = "us-central1"
DEFAULT_SUBNET_CIDR = "10.42.0.0/20"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
BOOT_DISK_TYPE = "pd-balanced"

# Pub/Sub's own limits (API reference): ack deadline 10..600 s, max delivery attempts 5..100.
ACK_DEADLINE_RANGE = (10, 600)
DELIVERY_ATTEMPTS_RANGE = (5, 100)
# Seven days, Pub/Sub's maximum retention for unacknowledged messages.
MESSAGE_RETENTION = "604800s"

# Zones do not all end in "-a": these regions have no zone a. Other regions default to "<region>-a".
_ZONE_OVERRIDES = {"us-east1": "us-east1-c", "europe-west1": "europe-west1-b"}

_REGION_RE = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")
_ZONE_RE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)+[0-9]+)-[a-z]$")
_PROJECT_ENV_VARS = ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][-a-z0-9]{4,28}[a-z0-9]$")

_NETWORK_KEYS = frozenset({"network", "subnetwork"})
# Machine families whose multi-node pools get a compact placement policy (A100: a2, H100: a3);
# both support it, and both are where NCCL's all-reduce between nodes dominates a step.
COMPACT_PLACEMENT_FAMILIES = frozenset({"a2", "a3"})
_IDENTITY_KEYS = frozenset({"service_account_email"})
# Machine families whose VMs must use Google Virtual NIC (gVNIC): third-generation machines such as
# A3 do not offer VirtIO-Net (cloud.google.com/compute/docs/networking/using-gvnic, "gVNIC is
# required" for A3; read 2026-12 from the docs as remembered, not fetchable here). The image must
# carry the GVNIC guest OS feature: Deep Learning VM images do; `compute.get_image` does not return
# an image's features, so another image is the user's to check.
GVNIC_FAMILIES = frozenset({"a3"})


# --------------------------------------------------------------------------- validation and names


def resolve_project(extra: Mapping[str, Any] | None = None) -> str:
    """The GCP project every resource goes into: `extra["project"]`, else the `gcp:project` stack
    config, else the environment variables the provider itself reads. Required, because the queue's
    URL and the Pub/Sub service agent's grants need it spelled out."""
    candidates: list[tuple[str, str | None]] = [
        ("extra['project']", (extra or {}).get("project")),
        ("gcp:project config", pulumi.Config("gcp").get("project")),
    ]
    candidates += [(f"${var}", os.environ.get(var)) for var in _PROJECT_ENV_VARS]
    for source, value in candidates:
        if value:
            if not isinstance(value, str) or not _PROJECT_RE.match(value):
                raise ConfigError(
                    f"GCP project from {source} is {value!r}: a project ID is 6-30 characters of "
                    "lowercase letters, digits and hyphens, starting with a letter"
                )
            return value
    raise ConfigError(
        "no GCP project: set it with `pulumi config set gcp:project <project-id>`, pass "
        "extra={'project': '<project-id>'}, or export GOOGLE_PROJECT"
    )


def resolve_region(region: str | None, zone: str | None = None) -> str:
    """The region to use: `region`, else the zone's region, else `gcp:region` config, else
    us-central1. ConfigError when the format is wrong or the zone lies in another region."""
    if zone is not None:
        zone_region = zone_region_of(zone)
        if region is not None and check_region(region) != zone_region:
            raise ConfigError(
                f"zone {zone!r} is not in region {region!r}: use a zone named {region}-<letter>"
            )
        return zone_region
    if region is not None:
        return check_region(region)
    configured = pulumi.Config("gcp").get("region")
    return check_region(configured) if configured else DEFAULT_REGION


def check_region(region: str) -> str:
    """`region` unchanged if it looks like a GCP region (`us-central1`), else ConfigError."""
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ConfigError(
            f"region {region!r} is not a GCP region name: expected lowercase words and a number, "
            "like 'us-central1' or 'europe-west4' (a zone such as 'us-central1-a' goes in `zone`)"
        )
    return region


def zone_region_of(zone: str) -> str:
    """`"us-central1-a"` -> `"us-central1"`; ConfigError for anything not shaped like a zone."""
    match = _ZONE_RE.match(zone) if isinstance(zone, str) else None
    if match is None:
        raise ConfigError(
            f"zone {zone!r} is not a GCP zone name: expected '<region>-<letter>', like 'us-central1-a'"
        )
    return match.group("region")


def default_zone(region: str) -> str:
    """A zone of `region` that exists: `<region>-a`, except for regions that have no zone a."""
    return _ZONE_OVERRIDES.get(region, f"{region}-a")


def gcp_slug(name: str, max_len: int = 40) -> str:
    """`name` as a GCP resource-name stem: lowercase letters, digits and hyphens, starting with a
    letter. Child logical names use it, so Pulumi's auto-names (stem + random suffix) are valid."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"l-{slug}".rstrip("-")
    return slug[:max_len].rstrip("-")


def _stable_suffix(name: str, project: str) -> str:
    # Deterministic per (GCP project, Pulumi project, stack, component name): two stacks in one GCP
    # project never share a service account ID or network tag, and re-running keeps the same names.
    key = f"{project}/{pulumi.get_project()}/{pulumi.get_stack()}/{name}"
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def service_account_id(name: str, project: str) -> str:
    """An `account_id` (6-30 chars, `[a-z][-a-z0-9]*[a-z0-9]`) unique to this component and stack."""
    return f"{gcp_slug(name, 23)}-{_stable_suffix(name, project)}"


def node_tag(name: str, project: str) -> str:
    """The network tag on the pool's instances; the firewall rules target exactly this tag."""
    return f"{gcp_slug(name, 45)}-node-{_stable_suffix(name, project)}"


def check_queue_limits(visibility_timeout_s: int, max_receive_count: int) -> None:
    """ConfigError unless both fit Pub/Sub's ranges (ack deadline 10-600 s, 5-100 deliveries)."""
    lo, hi = ACK_DEADLINE_RANGE
    if isinstance(visibility_timeout_s, bool) or not isinstance(visibility_timeout_s, int):
        raise ConfigError(
            f"visibility_timeout_s must be a whole number of seconds, got {visibility_timeout_s!r}"
        )
    if not lo <= visibility_timeout_s <= hi:
        raise ConfigError(
            f"visibility_timeout_s={visibility_timeout_s} is outside what Pub/Sub allows for a "
            f"subscription's ack deadline: {lo} to {hi} seconds"
        )
    lo, hi = DELIVERY_ATTEMPTS_RANGE
    if isinstance(max_receive_count, bool) or not isinstance(max_receive_count, int):
        raise ConfigError(f"max_receive_count must be a whole number, got {max_receive_count!r}")
    if not lo <= max_receive_count <= hi:
        raise ConfigError(
            f"max_receive_count={max_receive_count} is outside what Pub/Sub allows for a dead-letter "
            f"policy's max_delivery_attempts: {lo} to {hi}"
        )


_SUBNETWORK_LINK_RE = re.compile(
    r"^(?:https://www\.googleapis\.com/compute/v1/)?projects/[^/]+/regions/(?P<region>[^/]+)/subnetworks/[^/]+$"
)


def check_network_mapping(
    network: Mapping[str, Any] | None, region: str | None = None
) -> dict[str, str] | None:
    """Validate `network={"subnetwork": ..., "network": ...}`: an existing subnet (its self link,
    `projects/<p>/regions/<r>/subnetworks/<name>`, or its name together with `network`) in the
    pool's region, and optionally its VPC (looked up from the subnet when left out)."""
    if network is None:
        return None
    if not isinstance(network, Mapping):
        raise ConfigError(f"network must be a mapping with keys subnetwork, network on gcp, got {network!r}")
    unknown = sorted(set(network) - _NETWORK_KEYS)
    missing = ["subnetwork"] if "subnetwork" not in network else []
    if unknown or missing:
        raise ConfigError(
            "network on gcp takes the keys subnetwork (an existing subnet's self link) and optionally "
            f"network (its VPC); got {sorted(network)}"
            + (f", unknown: {unknown}" if unknown else "")
            + (f", missing: {missing}" if missing else "")
        )
    for key in sorted(set(network)):
        if not isinstance(network[key], str) or not network[key]:
            raise ConfigError(f"network[{key!r}] must be a non-empty name or self link, got {network[key]!r}")
    link = _SUBNETWORK_LINK_RE.match(network["subnetwork"])
    if link is None and "network" not in network:
        raise ConfigError(
            f"network['subnetwork'] is {network['subnetwork']!r}: without network['network'] it must be the "
            "subnet's self link, 'projects/<project>/regions/<region>/subnetworks/<name>'"
        )
    if link is not None and region is not None and link.group("region") != region:
        raise ConfigError(
            f"network['subnetwork'] is in region {link.group('region')!r}, but the pool is in {region!r}: "
            "a VM can only use a subnet of its own region"
        )
    return {k: str(v) for k, v in network.items()}


def check_identity_mapping(identity: Mapping[str, Any] | None) -> str | None:
    """Validate `identity={"service_account_email": ...}`; returns the email or None."""
    if identity is None:
        return None
    if not isinstance(identity, Mapping) or set(identity) != _IDENTITY_KEYS:
        raise ConfigError(
            f"identity on gcp takes exactly the key service_account_email (an existing service account); got {identity!r}"
        )
    email = identity["service_account_email"]
    if not isinstance(email, str) or not re.match(r"^[^@\s]+@[a-z0-9.-]+\.gserviceaccount\.com$", email):
        raise ConfigError(
            f"identity['service_account_email'] is {email!r}: expected a service account email like "
            "'name@project.iam.gserviceaccount.com'"
        )
    return email


# --------------------------------------------------------------------------- typed args from dicts


def _instance_args(spec: dict[str, Any]) -> dict[str, Any]:
    """Turn the merged (base + extra) instance spec into `compute.Instance` kwargs with the provider's
    typed `*Args` classes for every nested block we or a user may set as a dict."""
    out = dict(spec)
    if isinstance(out.get("boot_disk"), Mapping):
        disk = dict(out["boot_disk"])
        disk["initialize_params"] = typed_args(
            compute.InstanceBootDiskInitializeParamsArgs, disk.get("initialize_params")
        )
        out["boot_disk"] = typed_args(compute.InstanceBootDiskArgs, disk)
    if isinstance(out.get("scheduling"), Mapping):
        out["scheduling"] = typed_args(compute.InstanceSchedulingArgs, out["scheduling"])
    out["shielded_instance_config"] = typed_args(
        compute.InstanceShieldedInstanceConfigArgs, out.get("shielded_instance_config")
    )
    out["service_account"] = typed_args(compute.InstanceServiceAccountArgs, out.get("service_account"))
    if out.get("guest_accelerators") is not None:
        out["guest_accelerators"] = [
            typed_args(compute.InstanceGuestAcceleratorArgs, g) for g in out["guest_accelerators"]
        ]
    nics = []
    for nic in out.get("network_interfaces") or []:
        if isinstance(nic, Mapping):
            nic = dict(nic)
            nic["access_configs"] = [
                typed_args(compute.InstanceNetworkInterfaceAccessConfigArgs, a)
                for a in nic.get("access_configs") or []
            ]
            nic = typed_args(compute.InstanceNetworkInterfaceArgs, nic)
        nics.append(nic)
    out["network_interfaces"] = nics
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- project APIs

# The services each component calls. A new project has Cloud Storage on but not Compute Engine,
# Pub/Sub, Secret Manager or IAM, and creating anything of a disabled service fails with
# SERVICE_DISABLED; Cloud Resource Manager answers the project-number lookup of the queue.
POOL_APIS = ("compute.googleapis.com", "iam.googleapis.com", "secretmanager.googleapis.com")
STORE_APIS = ("storage.googleapis.com",)
QUEUE_APIS = ("pubsub.googleapis.com", "cloudresourcemanager.googleapis.com")


def pop_enable_apis(extra: dict[str, Any]) -> bool:
    """Take the GCP-only switch `extra["enable_apis"]` out of `extra` (it is no provider argument)."""
    value = extra.pop("enable_apis", False)
    if not isinstance(value, bool):
        raise ConfigError(f"extra['enable_apis'] is {value!r}; allowed: true or false")
    return value


def enable_apis(parent: pulumi.Resource, stem: str, project: str, services: Sequence[str]) -> list[Any]:
    """One `projects.Service` per API, under `parent`. They are never disabled on destroy: other
    workloads of the project may use the same APIs, and turning one off would break them."""
    return [
        projects.Service(
            f"{stem}-api-{service.split('.')[0]}",
            projects.ServiceArgs(
                project=project,
                service=service,
                disable_on_destroy=False,
                disable_dependent_services=False,
            ),
            opts=child(parent),
        )
        for service in services
    ]


def _after(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Child options that keep the `depends_on` a component was given (Pulumi does not pass a
    component's dependencies on to its children), so enabled APIs come before every resource."""
    return child(parent, depends_on=opts.depends_on if opts is not None else None)


# --------------------------------------------------------------------------- components


class GcpNetwork(pulumi.ComponentResource):
    """A custom-mode VPC (no auto subnets) with one regional subnet, or an existing VPC and subnet,
    plus the pool's firewall: SSH (tcp:22) only from `allowed_ssh_cidrs` to the pool's network tag,
    everything between instances carrying that tag, and nothing else (GCP denies other ingress).

    Egress for nodes without an external IP (`nat=True`, private pools): the subnet we create has
    Private Google Access (GCS, Pub/Sub, Secret Manager over Google's network), and a Cloud Router
    with Cloud NAT gives it the internet (package mirrors, PyPI, the driver installer). An existing
    network keeps its own egress: neither is added to it."""

    vpc: compute.Network | None
    subnet: compute.Subnetwork | None
    router: compute.Router | None
    nat: compute.RouterNat | None
    ssh_firewall: compute.Firewall | None
    internal_firewall: compute.Firewall
    tag: str
    network_link: pulumi.Input[str]
    subnetwork_link: pulumi.Input[str]

    def __init__(
        self,
        name: str,
        *,
        region: str,
        project: str,
        allowed_ssh_cidrs: Sequence[str],
        tag: str,
        existing: Mapping[str, str] | None = None,
        cidr: str = DEFAULT_SUBNET_CIDR,
        nat: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:gcp:Network", name, None, opts)
        stem = gcp_slug(name)
        self.tag = tag
        sources = ipv4_ssh_cidrs(allowed_ssh_cidrs, "gcp")
        if existing is None:
            self.vpc = compute.Network(
                f"{stem}-vpc",
                compute.NetworkArgs(
                    project=project,
                    auto_create_subnetworks=False,
                    routing_mode="REGIONAL",
                    description=f"lepton cluster network for {name}",
                ),
                opts=_after(self, opts),
            )
            self.subnet = compute.Subnetwork(
                f"{stem}-subnet",
                compute.SubnetworkArgs(
                    project=project,
                    network=self.vpc.id,
                    region=region,
                    ip_cidr_range=cidr,
                    # Nodes reach GCS and Pub/Sub over Google's network even without an external IP.
                    private_ip_google_access=True,
                ),
                opts=_after(self, opts),
            )
            self.network_link = self.vpc.self_link
            self.subnetwork_link = self.subnet.self_link
        else:
            self.vpc = None
            self.subnet = None
            self.subnetwork_link = existing["subnetwork"]
            self.network_link = (
                existing.get("network")
                or compute.get_subnetwork_output(
                    self_link=existing["subnetwork"], opts=pulumi.InvokeOutputOptions(parent=self)
                ).network
            )
        self.router = None
        self.nat = None
        if nat and self.subnet is not None:
            self.router = compute.Router(
                f"{stem}-router",
                compute.RouterArgs(
                    project=project,
                    region=region,
                    network=self.network_link,
                    description=f"lepton: Cloud NAT for the private nodes of {name}",
                ),
                opts=_after(self, opts),
            )
            self.nat = compute.RouterNat(
                f"{stem}-nat",
                compute.RouterNatArgs(
                    project=project,
                    region=region,
                    router=self.router.name,
                    nat_ip_allocate_option="AUTO_ONLY",
                    # Only the pool's subnet, so the NAT never carries anything else's traffic.
                    source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
                    subnetworks=[
                        compute.RouterNatSubnetworkArgs(
                            name=self.subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"]
                        )
                    ],
                    log_config=compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
                ),
                opts=_after(self, opts),
            )
        self.internal_firewall = compute.Firewall(
            f"{stem}-internal",
            compute.FirewallArgs(
                project=project,
                network=self.network_link,
                direction="INGRESS",
                description="lepton: all traffic between pool nodes (NCCL/gloo rendezvous and data)",
                allows=[compute.FirewallAllowArgs(protocol="all")],
                source_tags=[tag],
                target_tags=[tag],
            ),
            opts=_after(self, opts),
        )
        self.ssh_firewall = None
        if sources:
            self.ssh_firewall = compute.Firewall(
                f"{stem}-ssh",
                compute.FirewallArgs(
                    project=project,
                    network=self.network_link,
                    direction="INGRESS",
                    description="lepton: SSH from allowed_ssh_cidrs only",
                    allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
                    source_ranges=sources,
                    target_tags=[tag],
                ),
                opts=_after(self, opts),
            )
        self.register_outputs({"network": self.network_link, "subnetwork": self.subnetwork_link, "tag": tag})


class GcpNodeIdentity(pulumi.ComponentResource):
    """The nodes' service account (a dedicated one unless an existing email is given), granted
    exactly what the data plane's clients call, each as a resource-level IAM member (no
    project-level role): the bucket (objectAdmin); publisher on the jobs and dead-letter topics
    (enqueue; the client dead-letters a bad message itself); subscriber on both subscriptions (pull,
    extend, ack; reading dead letters); viewer on the subscription (GetSubscription: its dead-letter
    policy) and on the dead-letter topic (ListTopicSubscriptions needs pubsub.topics.get there)."""

    account: serviceaccount.Account | None
    email: pulumi.Output[str]
    bucket_member: storage.BucketIAMMember | None
    subscriber_member: pubsub.SubscriptionIAMMember | None
    publisher_member: pubsub.TopicIAMMember | None
    queue_members: list[pulumi.Resource]

    def __init__(
        self,
        name: str,
        *,
        project: str,
        store: Any = None,
        queue: Any = None,
        service_account_email: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:gcp:NodeIdentity", name, None, opts)
        stem = gcp_slug(name)
        store, queue = unwrap(store), unwrap(queue)
        if service_account_email is None:
            self.account = serviceaccount.Account(
                f"{stem}-sa",
                serviceaccount.AccountArgs(
                    project=project,
                    account_id=service_account_id(name, project),
                    display_name=f"lepton nodes of {name}"[:100],
                    description="Dedicated identity of lepton GPU nodes: only its cluster's bucket and queue.",
                ),
                opts=_after(self, opts),
            )
            self.email = self.account.email
        else:
            self.account = None
            self.email = pulumi.Output.from_input(service_account_email)
        member = self.email.apply(lambda e: f"serviceAccount:{e}")
        self.bucket_member = None
        if store is not None:
            self.bucket_member = storage.BucketIAMMember(
                f"{stem}-bucket-rw",
                storage.BucketIAMMemberArgs(
                    bucket=store.bucket.name, role="roles/storage.objectAdmin", member=member
                ),
                opts=_after(self, opts),
            )
        self.subscriber_member = None
        self.publisher_member = None
        self.queue_members = []
        if queue is not None:

            def on_subscription(suffix: str, subscription: Any, role: str) -> pubsub.SubscriptionIAMMember:
                return pubsub.SubscriptionIAMMember(
                    f"{stem}-{suffix}",
                    pubsub.SubscriptionIAMMemberArgs(
                        project=project, subscription=subscription.name, role=role, member=member
                    ),
                    opts=_after(self, opts),
                )

            def on_topic(suffix: str, topic: Any, role: str) -> pubsub.TopicIAMMember:
                return pubsub.TopicIAMMember(
                    f"{stem}-{suffix}",
                    pubsub.TopicIAMMemberArgs(project=project, topic=topic.name, role=role, member=member),
                    opts=_after(self, opts),
                )

            self.subscriber_member = on_subscription(
                "queue-sub", queue.subscription, "roles/pubsub.subscriber"
            )
            self.publisher_member = on_topic("queue-pub", queue.topic, "roles/pubsub.publisher")
            self.queue_members = [
                self.subscriber_member,
                self.publisher_member,
                on_subscription("queue-view", queue.subscription, "roles/pubsub.viewer"),
                on_topic("dlq-pub", queue.dead_letter_topic, "roles/pubsub.publisher"),
                on_topic("dlq-view", queue.dead_letter_topic, "roles/pubsub.viewer"),
                on_subscription("dlq-sub", queue.dead_letter_subscription, "roles/pubsub.subscriber"),
            ]
        self.register_outputs({"email": self.email})


class GcpHostKeySecret(pulumi.ComponentResource):
    """One node's SSH host private key as a Secret Manager secret (automatic replication), so no
    instance metadata holds it (metadata is readable by roles/viewer and by every process on the
    node). Only `reader` (that node's service account) is granted secretAccessor, on this secret
    alone; the node fetches it at first boot with its metadata-server token."""

    secret: secretmanager.Secret
    version: secretmanager.SecretVersion
    reader: secretmanager.SecretIamMember
    version_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        project: str,
        secret_id: str,
        private_key: pulumi.Input[str],
        reader: pulumi.Input[str],
        labels: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:gcp:HostKeySecret", name, None, opts)
        stem = gcp_slug(name)
        self.secret = secretmanager.Secret(
            f"{stem}-secret",
            secretmanager.SecretArgs(
                project=project,
                secret_id=secret_id,
                replication=secretmanager.SecretReplicationArgs(
                    auto=secretmanager.SecretReplicationAutoArgs()
                ),
                labels=dict(labels),
            ),
            opts=_after(self, opts),
        )
        self.version = secretmanager.SecretVersion(
            f"{stem}-version",
            secretmanager.SecretVersionArgs(
                secret=self.secret.id, secret_data=pulumi.Output.secret(private_key)
            ),
            opts=_after(self, opts),
        )
        self.reader = secretmanager.SecretIamMember(
            f"{stem}-reader",
            secretmanager.SecretIamMemberArgs(
                project=project,
                secret_id=self.secret.secret_id,
                role="roles/secretmanager.secretAccessor",
                member=pulumi.Output.from_input(reader).apply(lambda e: f"serviceAccount:{e}"),
            ),
            opts=_after(self, opts),
        )
        self.version_name = self.secret.secret_id.apply(
            lambda sid: f"projects/{project}/secrets/{sid}/versions/latest"
        )
        self.register_outputs({"secret": self.secret.id})


def host_key_fetch(version_name: str) -> str:
    """The `host_key_fetch` commands of a GCP node: its secret's latest version, read with the
    node's service-account token from the metadata server."""
    return fetch_command("gcp", version_name)


# The guest agent generates new SSH host keys on an instance's first boot (it starts after
# network-online.target and before sshd, per its systemd unit), which would replace the pinned key
# the bootcmd has just installed. cloud-init writes this file in its init stage, before
# network-online.target, so the agent reads it before it would act. /etc/default/instance_configs.cfg
# is the guest agent's user configuration file; .template and .distro hold the image's defaults.
GUEST_AGENT_CONFIG = """[InstanceSetup]
# lepton: keep the host key pinned in the inventory (installed from Secret Manager at first boot)
set_host_keys = false
"""
# The inventory's `python` on GCP (images.py): a wrapper made at first boot for the interpreter of the
# Deep Learning VM image that imports torch. Google's image pages do not name that path, and it has
# moved between image generations (conda in /opt/conda, then conda environments under
# /opt/conda/envs, later a system-wide install or a venv under /opt), so the node searches the
# places these generations used, globs included, instead of us guessing one; it logs each
# interpreter it tried. A node where none imports torch gets no wrapper, and the run's preflight
# then names the node and the missing interpreter. (`LEPTON_PYTHON_ROOT` prefixes every place, for
# tests; `LEPTON_PYTHON_CANDIDATES` replaces the list.)
PYTHON_WRAPPER = "/opt/lepton/bin/python"
FIND_PYTHON_PATH = "/usr/local/sbin/lepton-find-python"
PYTHON_PLACES = (
    "/opt/conda/bin/python3",
    "/opt/conda/envs/*/bin/python3",
    "/opt/python/bin/python3",
    "/opt/pytorch/bin/python3",
    "/opt/*/venv/bin/python3",
    "/opt/*/bin/python3",
    "/usr/local/bin/python3",
    "/usr/bin/python3",
)
FIND_PYTHON = r"""#!/bin/sh
# lepton: point /opt/lepton/bin/python at the image's interpreter that has torch.
wrapper="${LEPTON_PYTHON_WRAPPER:-__WRAPPER__}"
root="${LEPTON_PYTHON_ROOT:-}"
places=""
for place in __PLACES__; do places="$places $root$place"; done
# Unquoted on purpose: each place's glob expands here (one that matches nothing stays as written).
for candidate in ${LEPTON_PYTHON_CANDIDATES:-$places}; do
    [ -x "$candidate" ] || continue
    if "$candidate" -c 'import torch' >/dev/null 2>&1; then
        mkdir -p "$(dirname "$wrapper")"
        # A wrapper, not a symlink: a virtual environment's python finds its packages only when
        # started by its own path.
        printf '#!/bin/sh
exec %s "$@"
' "$candidate" > "$wrapper.tmp"
        chmod 0755 "$wrapper.tmp"
        mv "$wrapper.tmp" "$wrapper"
        echo "lepton: $wrapper runs $candidate"
        exit 0
    fi
    echo "lepton: $candidate has no torch" >&2
done
echo "lepton: no interpreter with torch on this image (looked in:${LEPTON_PYTHON_CANDIDATES:-$places}); $wrapper not made" >&2
exit 1
""".replace("__WRAPPER__", PYTHON_WRAPPER).replace("__PLACES__", " ".join(PYTHON_PLACES))
GCP_BOOT = CloudBoot(
    files=(
        BootFile("/etc/default/instance_configs.cfg", GUEST_AGENT_CONFIG),
        BootFile(FIND_PYTHON_PATH, FIND_PYTHON, "0755"),
    ),
    runcmd=(FIND_PYTHON_PATH,),
)


class GcpObjectStore(pulumi.ComponentResource):
    """A GCS bucket: uniform bucket-level access, public access prevention enforced, versioning,
    optional expiry after `retention_days`, labels. Encrypted at rest with Google-managed keys by
    default; a CMEK via `extra={"encryption": {"default_kms_key_name": ...}}`. Output `url` is
    `gs://<bucket>`."""

    bucket: storage.Bucket
    url: pulumi.Output[str]
    apis: list[Any]

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:gcp:ObjectStore", name, None, opts)
        extra = dict(args.extra or {})
        project = resolve_project(extra)
        self.apis = enable_apis(self, gcp_slug(name), project, STORE_APIS) if pop_enable_apis(extra) else []
        region = resolve_region(args.region)
        retention = args.retention_days
        labels = gcp_labels(tags_for(*cluster_env(args, name), args.tags))
        rules: list[dict[str, Any]] = []
        if retention is not None:
            rules.append({"action": {"type": "Delete"}, "condition": {"age": retention}})
            if args.versioning:
                # Deleting a live object in a versioned bucket only makes it noncurrent: expire those too.
                rules.append(
                    {
                        "action": {"type": "Delete"},
                        "condition": {"days_since_noncurrent_time": retention, "with_state": "ARCHIVED"},
                    }
                )
        base: dict[str, Any] = {
            "project": project,
            "location": region.upper(),
            "uniform_bucket_level_access": True,
            "public_access_prevention": "enforced",
            "versioning": {"enabled": bool(args.versioning)},
            "lifecycle_rules": rules or None,
            "labels": labels,
            "force_destroy": bool(args.force_destroy),
        }
        spec = merge_extra(base, extra)
        spec["versioning"] = typed_args(storage.BucketVersioningArgs, spec.get("versioning"))
        spec["encryption"] = typed_args(storage.BucketEncryptionArgs, spec.get("encryption"))
        if spec.get("lifecycle_rules") is not None:
            spec["lifecycle_rules"] = [
                storage.BucketLifecycleRuleArgs(
                    action=typed_args(storage.BucketLifecycleRuleActionArgs, r["action"]),
                    condition=typed_args(storage.BucketLifecycleRuleConditionArgs, r["condition"]),
                )
                if isinstance(r, Mapping)
                else r
                for r in spec["lifecycle_rules"]
            ]
        spec = {k: v for k, v in spec.items() if v is not None}
        self.bucket = storage.Bucket(
            f"{gcp_slug(name)}-bucket",
            typed_args(storage.BucketArgs, spec),
            opts=child(self, depends_on=self.apis),
        )
        self.url = self.bucket.name.apply(lambda n: f"gs://{n}")
        self.register_outputs({"url": self.url, "bucket": self.bucket.name})


class GcpJobQueue(pulumi.ComponentResource):
    """A Pub/Sub topic and pull subscription (ack deadline = `visibility_timeout_s`) with a dead-letter
    topic after `max_receive_count` deliveries, and a subscription on that topic so dead letters are
    kept (Pub/Sub drops messages published to a topic nobody subscribes to). Pub/Sub encrypts at rest
    with Google-managed keys by default; a CMEK via `extra={"kms_key_name": ...}` (applied to both
    topics). Other `extra` keys go to the main subscription.

    Outputs: `url` (`projects/<p>/subscriptions/<name>`, what consumers pull from), `topic_url`
    (`projects/<p>/topics/<name>`, where producers publish) and `dead_letter_url` (the dead-letter
    subscription's path)."""

    topic: pubsub.Topic
    subscription: pubsub.Subscription
    dead_letter_topic: pubsub.Topic
    dead_letter_subscription: pubsub.Subscription
    apis: list[Any]
    url: pulumi.Output[str]
    topic_url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:gcp:JobQueue", name, None, opts)
        extra = dict(args.extra or {})
        project = resolve_project(extra)
        check_queue_limits(args.visibility_timeout_s, args.max_receive_count)
        kms_key_name = extra.pop("kms_key_name", None)
        self.apis = enable_apis(self, gcp_slug(name), project, QUEUE_APIS) if pop_enable_apis(extra) else []
        labels = gcp_labels(tags_for(*cluster_env(args, name), args.tags))
        stem = gcp_slug(name)
        never_expire = pubsub.SubscriptionExpirationPolicyArgs(ttl="")

        self.topic = pubsub.Topic(
            f"{stem}-jobs",
            pubsub.TopicArgs(project=project, labels=labels, kms_key_name=kms_key_name),
            opts=child(self, depends_on=self.apis),
        )
        self.dead_letter_topic = pubsub.Topic(
            f"{stem}-dead",
            pubsub.TopicArgs(project=project, labels=labels, kms_key_name=kms_key_name),
            opts=child(self, depends_on=self.apis),
        )
        self.dead_letter_subscription = pubsub.Subscription(
            f"{stem}-dead",
            pubsub.SubscriptionArgs(
                project=project,
                topic=self.dead_letter_topic.id,
                labels=labels,
                ack_deadline_seconds=args.visibility_timeout_s,
                message_retention_duration=MESSAGE_RETENTION,
                expiration_policy=never_expire,
            ),
            opts=child(self, depends_on=self.apis),
        )
        base: dict[str, Any] = {
            "project": project,
            "topic": self.topic.id,
            "labels": labels,
            "ack_deadline_seconds": args.visibility_timeout_s,
            "message_retention_duration": MESSAGE_RETENTION,
            # Pub/Sub deletes a subscription after 31 idle days by default; a job queue must not vanish.
            "expiration_policy": {"ttl": ""},
            "dead_letter_policy": {
                "dead_letter_topic": self.dead_letter_topic.id,
                "max_delivery_attempts": args.max_receive_count,
            },
            # Back off between redeliveries so a poison message does not spin until it dead-letters.
            "retry_policy": {"minimum_backoff": "10s", "maximum_backoff": "600s"},
        }
        spec = merge_extra(base, extra)
        spec["expiration_policy"] = typed_args(
            pubsub.SubscriptionExpirationPolicyArgs, spec.get("expiration_policy")
        )
        spec["dead_letter_policy"] = typed_args(
            pubsub.SubscriptionDeadLetterPolicyArgs, spec.get("dead_letter_policy")
        )
        spec["retry_policy"] = typed_args(pubsub.SubscriptionRetryPolicyArgs, spec.get("retry_policy"))
        spec = {k: v for k, v in spec.items() if v is not None}
        self.subscription = pubsub.Subscription(
            f"{stem}-jobs",
            typed_args(pubsub.SubscriptionArgs, spec),
            opts=child(self, depends_on=self.apis),
        )

        # Dead-lettering is done by the project's Pub/Sub service agent: it must be allowed to publish
        # to the dead-letter topic and to ack on the source subscription, or messages never move.
        project_number = organizations.get_project_output(
            project_id=project, opts=pulumi.InvokeOutputOptions(parent=self, depends_on=self.apis)
        ).number
        agent = project_number.apply(
            lambda n: f"serviceAccount:service-{n}@gcp-sa-pubsub.iam.gserviceaccount.com"
        )
        self.agent_publisher = pubsub.TopicIAMMember(
            f"{stem}-dead-pub",
            pubsub.TopicIAMMemberArgs(
                project=project,
                topic=self.dead_letter_topic.name,
                role="roles/pubsub.publisher",
                member=agent,
            ),
            opts=child(self, depends_on=self.apis),
        )
        self.agent_subscriber = pubsub.SubscriptionIAMMember(
            f"{stem}-jobs-agent",
            pubsub.SubscriptionIAMMemberArgs(
                project=project,
                subscription=self.subscription.name,
                role="roles/pubsub.subscriber",
                member=agent,
            ),
            opts=child(self, depends_on=self.apis),
        )

        self.url = self.subscription.name.apply(lambda n: f"projects/{project}/subscriptions/{n}")
        self.topic_url = self.topic.name.apply(lambda n: f"projects/{project}/topics/{n}")
        self.dead_letter_url = self.dead_letter_subscription.name.apply(
            lambda n: f"projects/{project}/subscriptions/{n}"
        )
        self.register_outputs(
            {"url": self.url, "topic_url": self.topic_url, "dead_letter_url": self.dead_letter_url}
        )


class GcpGpuVmPool(pulumi.ComponentResource):
    """`nodes` Compute Engine instances with `gpus_per_node` x `accelerator` each (machine type from
    the catalog; N1 rows get the GPUs attached as guest accelerators, g2/a2/a3 bundle them), in their
    own network unless one is given, running as a dedicated service account allowed exactly `store`
    and `queue`, booting with cloud-init that installs the `lepton` user, the node's pinned host key
    and the idle/lifetime watchdog.

    Secure defaults: GPUs force `on_host_maintenance=TERMINATE` (and no automatic restart), shielded
    VM with vTPM and integrity monitoring, OS Login off and project-wide SSH keys blocked (the only
    key is the one cloud-init installs), an external IP only when SSH is allowed from outside
    internal address space (otherwise the nodes reach out through Cloud NAT and Private Google
    Access, and are reached through a VPN or a jump host). Multi-node A100/H100 pools (a2/a3) get a
    compact placement policy, so NCCL's traffic between nodes stays on one low-latency network
    (it names the exact node count, as GCE requires, so changing `nodes` there replaces the nodes).
    `network={"subnetwork": <self link>}` puts the nodes in an existing subnet (egress is then that
    network's own business).

    Secure Boot is off on these GPU nodes: with it on, the kernel loads only modules signed by a key
    in the VM's UEFI database, and the NVIDIA driver that Deep Learning VM images carry or install at
    first boot (`install-nvidia-driver`) is built for the running kernel and not signed by such a
    key, so the driver would not load and the node would have no GPU. vTPM (measured boot) and
    integrity monitoring stay on. An image with a signed driver can turn it back on through `extra`:
    `{"shielded_instance_config": {"enable_secure_boot": True}}`. `extra` is merged into every
    instance's arguments."""

    network: GcpNetwork
    identity: GcpNodeIdentity
    identities: list[GcpNodeIdentity]
    host_key_secrets: list[GcpHostKeySecret]
    apis: list[Any]
    placement: compute.ResourcePolicy | None
    instances: list[compute.Instance]
    host_keys: list[Any]
    nodes: list[PoolNode]
    entry: CatalogEntry
    zone: str

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: Any = None,
        queue: Any = None,
    ) -> None:
        super().__init__("lepton:gcp:GpuVmPool", name, None, opts)
        # GCP's own shape checks first: they name the exact problem ("a zone goes in `zone`") where
        # the neutral validation could only say the region is not in the catalog.
        extra = dict(args.extra or {})
        region = resolve_region(args.region, args.zone)
        zone = args.zone or default_zone(region)
        existing_network = check_network_mapping(args.network, region)
        sa_email = check_identity_mapping(args.identity)
        check_image(args.image)
        project = resolve_project(extra)
        self.apis = enable_apis(self, gcp_slug(name), project, POOL_APIS) if pop_enable_apis(extra) else []
        self.entry = entry = lookup("gcp", args.accelerator, args.gpus_per_node, region)
        self.zone = zone
        cluster, env = cluster_env(args, name)
        stem = gcp_slug(name)
        # An external IP only when someone outside internal address space may SSH in (as on AWS and
        # Azure); SSH from a VPN/interconnect range reaches the internal address, and egress then
        # goes through Cloud NAT.
        public = ssh_needs_public_ip(ipv4_ssh_cidrs(args.allowed_ssh_cidrs, "gcp"))

        self.network = GcpNetwork(
            f"{name}-net",
            region=region,
            project=project,
            allowed_ssh_cidrs=list(args.allowed_ssh_cidrs),
            tag=node_tag(name, project),
            existing=existing_network,
            nat=not public,
            opts=child(self, depends_on=self.apis),
        )
        self.placement = None
        if args.nodes > 1 and entry.family in COMPACT_PLACEMENT_FAMILIES:
            # NCCL between A100/H100 nodes wants them on one low-latency network: a compact
            # placement policy for exactly this many VMs (GCE requires vm_count with COLLOCATED).
            self.placement = compute.ResourcePolicy(
                f"{stem}-compact",
                compute.ResourcePolicyArgs(
                    project=project,
                    region=region,
                    description=f"lepton: compact placement of the {args.nodes} nodes of {cluster}",
                    group_placement_policy=compute.ResourcePolicyGroupPlacementPolicyArgs(
                        collocation="COLLOCATED", vm_count=args.nodes
                    ),
                ),
                opts=child(self, depends_on=self.apis),
            )
        # One service account per node, so each node's host key secret is readable by that node
        # alone; an existing account given in `identity` is shared by all nodes instead.
        self.identities = node_identities(
            args.nodes,
            sa_email,
            lambda i: GcpNodeIdentity(
                f"{name}-identity" if i is None else f"{name}-{i}-identity",
                project=project,
                store=store,
                queue=queue,
                service_account_email=sa_email,
                opts=child(self, depends_on=self.apis),
            ),
        )
        self.identity = self.identities[0]
        self.host_keys = node_host_keys(name, args.nodes, self)
        secret_labels = gcp_labels(tags_for(cluster, env, args.tags))
        self.host_key_secrets = [
            GcpHostKeySecret(
                f"{name}-{i}-host-key",
                project=project,
                secret_id=f"{gcp_slug(name, 40)}-{_stable_suffix(name, project)}-host-key-{i}",
                private_key=host_key.private_key_openssh,
                reader=self.identities[i].email,
                labels=secret_labels,
                opts=child(self, depends_on=self.apis),
            )
            for i, host_key in enumerate(self.host_keys)
        ]
        labels = gcp_labels(pool_tags(args, cluster, env)[1])
        image, keep_image = boot_image(args.image, project, self, self.apis)

        self.instances = []

        def launch(i: int, user_data: pulumi.Output[str]) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
            secret = self.host_key_secrets[i]
            base: dict[str, Any] = {
                "project": project,
                "zone": zone,
                "machine_type": entry.instance_type,
                "guest_accelerators": (
                    [{"type": entry.gcp_accelerator_type, "count": entry.gpus}]
                    if entry.gcp_accelerator_type
                    else None
                ),
                "scheduling": self._scheduling(args.spot),
                "shielded_instance_config": {
                    # Off: the GPU driver is not signed for Secure Boot (see the class docstring).
                    "enable_secure_boot": False,
                    "enable_vtpm": True,
                    "enable_integrity_monitoring": True,
                },
                "metadata": {
                    # Keys come only from cloud-init (with the pinned host key): no OS Login, no
                    # project-wide keys, no `ssh-keys` metadata the guest agent would turn into users.
                    "enable-oslogin": "FALSE",
                    "block-project-ssh-keys": "TRUE",
                    "user-data": user_data,
                    # Deep Learning VM images install the NVIDIA driver on first boot when asked,
                    # if the image does not already carry one.
                    "install-nvidia-driver": "True",
                },
                "boot_disk": {
                    "auto_delete": True,
                    "initialize_params": {
                        "image": image,
                        "size": args.disk_gb,
                        "type": BOOT_DISK_TYPE,
                        "labels": labels,
                    },
                },
                "network_interfaces": [
                    {
                        "subnetwork": self.network.subnetwork_link,
                        # An ephemeral external IP only when someone outside may SSH in.
                        "access_configs": [{"network_tier": "PREMIUM"}] if public else [],
                        **({"nic_type": "GVNIC"} if entry.family in GVNIC_FAMILIES else {}),
                    }
                ],
                "service_account": {"email": self.identities[i].email, "scopes": [CLOUD_PLATFORM_SCOPE]},
                # One self link (the provider takes a single policy here).
                "resource_policies": self.placement.self_link if self.placement is not None else None,
                "tags": [self.network.tag],
                "labels": labels,
                "allow_stopping_for_update": True,
                "description": f"lepton node {i} of {cluster}",
            }
            kwargs = _instance_args(merge_extra(base, extra))
            # After the node's secret is readable by it, so the first-boot fetch finds its key.
            instance = compute.Instance(
                f"{stem}-{i}",
                typed_args(compute.InstanceArgs, kwargs),
                opts=child(
                    self, depends_on=[*self.apis, secret.version, secret.reader], ignore_changes=keep_image
                ),
            )
            self.instances.append(instance)
            nic = instance.network_interfaces.apply(lambda nics: nics[0])
            # A created instance always has these addresses (the provider types them Optional).
            private_ip = nic.apply(lambda n: cast(str, n.network_ip))
            host = (
                nic.apply(
                    lambda n: cast(str, n.access_configs[0].nat_ip if n.access_configs else n.network_ip)
                )
                if public
                else private_ip
            )
            return host, private_ip

        self.nodes = launch_nodes(
            args,
            cloud="gcp",
            cluster=cluster,
            host_keys=self.host_keys,
            fetch=[secret.version_name.apply(host_key_fetch) for secret in self.host_key_secrets],
            launch=launch,
            boot=GCP_BOOT,
        )
        self.register_outputs(pool_outputs(self.nodes, machine_type=entry.instance_type, zone=zone))

    @staticmethod
    def _scheduling(spot: bool) -> dict[str, Any]:
        # GPU VMs cannot live-migrate: GCE requires onHostMaintenance=TERMINATE for them, and a restarted
        # node would have lost its job anyway, so no automatic restart either.
        sched: dict[str, Any] = {"on_host_maintenance": "TERMINATE", "automatic_restart": False}
        if spot:
            sched.update(provisioning_model="SPOT", preemptible=True, instance_termination_action="DELETE")
        else:
            sched.update(provisioning_model="STANDARD", preemptible=False)
        return sched


_IMAGE_RE = re.compile(r"^[A-Za-z0-9._:/-]+$")
_FAMILY_RE = re.compile(
    r"^(?:(?:https://(?:www|compute)\.googleapis\.com/compute/v1/)?projects/(?P<project>[^/]+)/global/images/)?"
    r"family/(?P<family>[^/]+)$"
)


def boot_image(
    image: str | None, project: str, parent: pulumi.Resource, apis: Sequence[pulumi.Resource] = ()
) -> tuple[pulumi.Output[str], list[str]]:
    """The exact image a new node boots, and the instances' `ignore_changes`. An image family (the
    default is one) is resolved here to its current image (`compute.get_image`), so the instance
    names one version, which `up` logs; when the family moves on, running nodes keep theirs. The
    look-up waits for the APIs the pool enables (`apis`): on a fresh project the Compute API
    answers it only once it is on."""
    source = image or DEFAULT_IMAGE
    family = _FAMILY_RE.match(source)
    exact: pulumi.Input[str] = source
    if family is not None:
        exact = compute.get_image_output(
            family=family["family"],
            project=family["project"] or project,
            opts=pulumi.InvokeOutputOptions(parent=parent, depends_on=list(apis) or None),
        ).self_link
    return new_node_image(
        "gcp",
        exact,
        moving=family is not None,
        image_property="bootDisk.initializeParams.image",
        source=source,
        parent=parent,
    )


def check_image(image: str | None) -> None:
    """Every form GCE accepts (`projects/P/global/images/family/F`, `P/F`, `family/F`, an image name,
    an image URL) is made of these characters; a space or other stray character is a typo."""
    if image is not None and (not isinstance(image, str) or not _IMAGE_RE.match(image)):
        raise ConfigError(
            f"image is {image!r}; allowed on gcp: an image or image family like {DEFAULT_IMAGE!r}, "
            "'<project>/<image>', 'family/<family>' or an image URL"
        )


def check_pool_args(args: GpuVmPoolArgs) -> None:
    """GCP's own pool checks, which register nothing (the neutral layer runs them before a cluster's
    first resource): region/zone names and agreement, the project, the image's form and the
    `network`/`identity` mappings. GcpGpuVmPool repeats them for direct users."""
    region = resolve_region(args.region, args.zone)
    check_image(args.image)
    resolve_project(args.extra)
    pop_enable_apis(dict(args.extra or {}))
    check_network_mapping(args.network, region)
    check_identity_mapping(args.identity)
