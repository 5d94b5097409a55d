"""The pool's network (`AzureNetwork`: a VNet and subnet or an existing subnet, the network
security group, NAT for a private pool) and each node's attachment to it (`node_interface`: a NIC
behind that group, with a static public IP when SSH comes from outside internal address space)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pulumi
import pulumi_azure_native.network as azure_network

from lepton_infra.components.common import child, ipv4_ssh_cidrs

if TYPE_CHECKING:
    from lepton_infra.components.azure.plan import AzurePlan
    from lepton_infra.components.pool import PoolPlan

VNET_CIDR = "10.43.0.0/16"
SUBNET_CIDR = "10.43.0.0/20"

# NSG rule priorities: lower wins. The explicit deny sits below ours and above Azure's default
# AllowVnetInBound / AllowAzureLoadBalancerInBound (65000+), so only our two allows remain.
PRIORITY_SSH = 100
PRIORITY_POOL = 200
PRIORITY_DENY_ALL = 4096


class AzureNetwork(pulumi.ComponentResource):
    """A VNet with one subnet (or an existing subnet) and the pool's network security group: SSH
    (tcp/22) only from `allowed_ssh_cidrs`, everything between the pool's NICs (an application
    security group, so not the whole VNet), and an explicit deny of all other inbound traffic. The
    NSG is associated with the subnet we create and with every NIC (the NIC association is what
    protects the nodes in an existing subnet).

    Egress: the subnet we create turns Azure's implicit "default outbound access" off (Azure is
    retiring it for new VNets); nodes with a public IP go out through it, and a private pool
    (`nat=True`) gets a NAT gateway with its own static public IP on the subnet. An existing subnet
    keeps its own egress."""

    vnet: azure_network.VirtualNetwork | None
    subnet: azure_network.Subnet | None
    nat_ip: azure_network.PublicIPAddress | None
    nat_gateway: azure_network.NatGateway | None
    nsg: azure_network.NetworkSecurityGroup
    asg: azure_network.ApplicationSecurityGroup
    subnet_id: pulumi.Input[str]

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        allowed_ssh_cidrs: Sequence[str],
        tags: Mapping[str, str],
        existing_subnet_id: str | None = None,
        vnet_cidr: str = VNET_CIDR,
        subnet_cidr: str = SUBNET_CIDR,
        nat: bool = False,
        zones: list[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:azure:Network", name, None, opts)
        rg = resource_group_name
        self.asg = azure_network.ApplicationSecurityGroup(
            f"{name}-nodes",
            azure_network.ApplicationSecurityGroupInitArgs(
                resource_group_name=rg, location=location, tags=dict(tags)
            ),
            opts=child(self),
        )
        # The VNet and public IPs are IPv4-only (and one NSG rule cannot mix address families).
        rules = security_rules(ipv4_ssh_cidrs(allowed_ssh_cidrs, "azure"), self.asg.id)
        self.nsg = azure_network.NetworkSecurityGroup(
            f"{name}-nsg",
            azure_network.NetworkSecurityGroupInitArgs(
                resource_group_name=rg, location=location, security_rules=rules, tags=dict(tags)
            ),
            opts=child(self),
        )
        self.vnet, self.subnet, self.nat_ip, self.nat_gateway = None, None, None, None
        if existing_subnet_id is not None:
            self.subnet_id = existing_subnet_id
        else:
            if nat:
                self._nat(name, rg=rg, location=location, zones=zones, tags=tags)
            self.subnet_id = self._subnet(
                name, rg=rg, location=location, tags=tags, cidrs=(vnet_cidr, subnet_cidr)
            )
        self.register_outputs({"subnet_id": self.subnet_id, "nsg_id": self.nsg.id})

    def _nat(
        self,
        name: str,
        *,
        rg: pulumi.Input[str],
        location: str,
        zones: list[str] | None,
        tags: Mapping[str, str],
    ) -> None:
        """A NAT gateway with its own static public IP: a private pool's only way out."""
        self.nat_ip = static_public_ip(
            self, f"{name}-nat-ip", rg=rg, location=location, zones=zones, tags=tags
        )
        self.nat_gateway = azure_network.NatGateway(
            f"{name}-nat",
            azure_network.NatGatewayInitArgs(
                resource_group_name=rg,
                location=location,
                sku=azure_network.NatGatewaySkuArgs(name="Standard"),
                public_ip_addresses=[azure_network.SubResourceArgs(id=self.nat_ip.id)],
                idle_timeout_in_minutes=10,
                zones=zones,
                tags=dict(tags),
            ),
            opts=child(self),
        )

    def _subnet(
        self,
        name: str,
        *,
        rg: pulumi.Input[str],
        location: str,
        tags: Mapping[str, str],
        cidrs: tuple[str, str],
    ) -> pulumi.Output[str]:
        """The pool's own VNet and subnet (behind the NSG, through the NAT gateway if any); its id."""
        vnet_cidr, subnet_cidr = cidrs
        self.vnet = azure_network.VirtualNetwork(
            f"{name}-vnet",
            azure_network.VirtualNetworkInitArgs(
                resource_group_name=rg,
                location=location,
                address_space=azure_network.AddressSpaceArgs(address_prefixes=[vnet_cidr]),
                tags=dict(tags),
            ),
            # The subnet is its own resource; the provider keeps it when the VNet is updated.
            opts=child(self),
        )
        self.subnet = azure_network.Subnet(
            f"{name}-subnet",
            azure_network.SubnetInitArgs(
                resource_group_name=rg,
                virtual_network_name=self.vnet.name,
                address_prefix=subnet_cidr,
                network_security_group=azure_network.NetworkSecurityGroupArgs(id=self.nsg.id),
                # No implicit outbound: nodes go out through their own public IP or the NAT gateway.
                default_outbound_access=False,
                nat_gateway=(
                    azure_network.SubResourceArgs(id=self.nat_gateway.id)
                    if self.nat_gateway is not None
                    else None
                ),
            ),
            opts=child(self),
        )
        return self.subnet.id


def security_rules(
    ssh_sources: Sequence[str], pool_asg_id: pulumi.Input[str]
) -> list[azure_network.SecurityRuleArgs]:
    """The NSG's rules: SSH from `ssh_sources` to the pool's NICs, everything between them, and an
    explicit deny of all other inbound traffic."""
    pool = [azure_network.ApplicationSecurityGroupArgs(id=pool_asg_id)]
    return [
        azure_network.SecurityRuleArgs(
            name="lepton-ssh",
            description="SSH from the allowed networks only",
            priority=PRIORITY_SSH,
            direction="Inbound",
            access="Allow",
            protocol="Tcp",
            source_address_prefixes=list(ssh_sources),
            source_port_range="*",
            destination_application_security_groups=pool,
            destination_port_range="22",
        ),
        azure_network.SecurityRuleArgs(
            name="lepton-pool",
            description="Everything between the pool's nodes (NCCL/gloo)",
            priority=PRIORITY_POOL,
            direction="Inbound",
            access="Allow",
            protocol="*",
            source_application_security_groups=pool,
            source_port_range="*",
            destination_application_security_groups=pool,
            destination_port_range="*",
        ),
        azure_network.SecurityRuleArgs(
            name="lepton-deny-all-inbound",
            description="Nothing else in (overrides Azure's default VNet and load balancer allows)",
            priority=PRIORITY_DENY_ALL,
            direction="Inbound",
            access="Deny",
            protocol="*",
            source_address_prefix="*",
            source_port_range="*",
            destination_address_prefix="*",
            destination_port_range="*",
        ),
    ]


def static_public_ip(
    parent: pulumi.Resource,
    name: str,
    *,
    rg: pulumi.Input[str],
    location: str,
    zones: list[str] | None,
    tags: Mapping[str, str],
) -> azure_network.PublicIPAddress:
    """A Standard public IPv4 address: closed to inbound unless an NSG allows it, and static, so a
    node's address in the inventory (or the NAT's egress address) survives VM restarts."""
    return azure_network.PublicIPAddress(
        name,
        azure_network.PublicIPAddressInitArgs(
            resource_group_name=rg,
            location=location,
            sku=azure_network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
            public_ip_allocation_method="Static",
            public_ip_address_version="IPv4",
            zones=zones,
            tags=dict(tags),
        ),
        opts=child(parent),
    )


def node_interface(
    parent: pulumi.Resource,
    plan: PoolPlan[AzurePlan],
    i: int,
    network: AzureNetwork,
    *,
    rg: pulumi.Input[str],
) -> tuple[azure_network.PublicIPAddress | None, azure_network.NetworkInterface]:
    """Node `i`'s NIC in the pool's subnet, behind its NSG and in its application security group,
    and (public pools only) the NIC's static public IP."""
    location, zones, tags = plan.cloud.location, plan.cloud.zones, plan.tags
    pip = None
    if plan.public:
        pip = static_public_ip(
            parent, f"{plan.name}-ip-{i}", rg=rg, location=location, zones=zones, tags=tags
        )
    nic = azure_network.NetworkInterface(
        f"{plan.name}-nic-{i}",
        azure_network.NetworkInterfaceArgs(
            resource_group_name=rg,
            location=location,
            network_security_group=azure_network.NetworkSecurityGroupArgs(id=network.nsg.id),
            # Every catalog size supports accelerated networking (SR-IOV): lower latency for
            # NCCL/gloo between nodes.
            enable_accelerated_networking=True,
            ip_configurations=[
                azure_network.NetworkInterfaceIPConfigurationArgs(
                    name="primary",
                    primary=True,
                    subnet=azure_network.SubnetArgs(id=network.subnet_id),
                    private_ip_allocation_method="Dynamic",
                    public_ip_address=azure_network.PublicIPAddressArgs(id=pip.id) if pip else None,
                    application_security_groups=[
                        azure_network.ApplicationSecurityGroupArgs(id=network.asg.id)
                    ],
                )
            ],
            tags=dict(tags),
        ),
        opts=child(parent),
    )
    return pip, nic


def node_addresses(
    pip: azure_network.PublicIPAddress | None, nic: azure_network.NetworkInterface
) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """(address the controller dials, address peers use): the public IP, else the private one."""
    private_ip = nic.ip_configurations.apply(lambda cfgs: str(cfgs[0].private_ip_address) if cfgs else "")
    host = pip.ip_address.apply(lambda a: str(a)) if pip else private_ip
    return host, private_ip
