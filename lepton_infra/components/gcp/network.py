"""A GCP pool's network: its own custom-mode VPC and subnet (or an existing one), egress for private
nodes, the firewall that opens SSH to the allowed sources and everything between the pool's nodes
only, and the compact placement that keeps multi-node A100/H100 traffic on one low-latency fabric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
from pulumi_gcp import compute

from lepton_infra.components.common import ipv4_ssh_cidrs
from lepton_infra.components.gcp.apis import after
from lepton_infra.components.gcp.names import gcp_slug

DEFAULT_SUBNET_CIDR = "10.42.0.0/20"
# Machine families whose multi-node pools get a compact placement policy (A100: a2, H100: a3);
# both support it, and both are where NCCL's all-reduce between nodes dominates a step.
COMPACT_PLACEMENT_FAMILIES = frozenset({"a2", "a3"})


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
                opts=after(self, opts),
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
                opts=after(self, opts),
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
                opts=after(self, opts),
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
                opts=after(self, opts),
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
            opts=after(self, opts),
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
                opts=after(self, opts),
            )
        self.register_outputs({"network": self.network_link, "subnetwork": self.subnetwork_link, "tag": tag})


def compact_placement(
    stem: str, *, project: str, region: str, nodes: int, cluster: str, opts: pulumi.ResourceOptions
) -> compute.ResourcePolicy:
    """NCCL between A100/H100 nodes wants them on one low-latency network: a compact placement
    policy for exactly this many VMs (GCE requires vm_count with COLLOCATED, so changing the node
    count replaces the nodes)."""
    return compute.ResourcePolicy(
        f"{stem}-compact",
        compute.ResourcePolicyArgs(
            project=project,
            region=region,
            description=f"lepton: compact placement of the {nodes} nodes of {cluster}",
            group_placement_policy=compute.ResourcePolicyGroupPlacementPolicyArgs(
                collocation="COLLOCATED", vm_count=nodes
            ),
        ),
        opts=opts,
    )
