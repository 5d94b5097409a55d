"""The pool's network on AWS: its own VPC, subnet and way out (or an existing VPC and subnet), and
the security group that lets SSH in from the allowed networks and pool members talk to each other."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_aws.ec2 as ec2

from lepton_infra.components.common import child

VPC_CIDR = "10.40.0.0/16"
SUBNET_CIDR = "10.40.1.0/24"
NAT_SUBNET_CIDR = "10.40.0.0/28"  # the NAT gateway's own public subnet


class AwsNetwork(pulumi.ComponentResource):
    """A VPC and subnet (unless `existing` names them) and the pool's security group: SSH only from
    `allowed_ssh_cidrs`, everything between members of the group (NCCL/gloo, and EFA's traffic,
    which must be allowed to and from the group itself), nothing else in.

    A VPC made here always gets an S3 gateway endpoint (free; bucket traffic stays inside AWS).
    Nodes with public IPs leave through an internet gateway. Private nodes (no public IP) leave by
    `private_egress`: "nat", a NAT gateway in a small public subnet (package mirrors, pip, and every
    AWS API), or "endpoints", no internet at all, only interface endpoints for SQS and Secrets
    Manager (the queue and the host keys) beside the S3 gateway endpoint. An existing network
    (`existing`) is used as it is: its routes and endpoints are its owner's."""

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    security_group: ec2.SecurityGroup
    vpc: ec2.Vpc | None
    subnet: ec2.Subnet | None
    endpoints: list[ec2.VpcEndpoint]
    nat_gateway: ec2.NatGateway | None

    def __init__(
        self,
        name: str,
        *,
        allowed_ssh_cidrs: Sequence[str],
        public: bool,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None = None,
        region: str | None = None,
        existing: Mapping[str, Any] | None = None,
        private_egress: str = "nat",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:aws:Network", name, None, opts)
        self.vpc = self.subnet = self.nat_gateway = None
        self.endpoints = []
        if existing:
            self.vpc_id = pulumi.Output.from_input(existing["vpc_id"])
            self.subnet_id = pulumi.Output.from_input(existing["subnet_id"])
        else:
            self._build(name, public=public, tags=tags, zone=zone, region=region, egress=private_egress)
        v4 = [c for c in allowed_ssh_cidrs if ipaddress.ip_network(c).version == 4]
        v6 = [c for c in allowed_ssh_cidrs if ipaddress.ip_network(c).version == 6]
        self.security_group = ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=self.vpc_id,
            description="lepton GPU pool: SSH from allowed networks, all traffic between pool members",
            ingress=[
                ec2.SecurityGroupIngressArgs(
                    description="SSH from allowed networks",
                    protocol="tcp",
                    from_port=22,
                    to_port=22,
                    cidr_blocks=v4 or None,
                    ipv6_cidr_blocks=v6 or None,
                ),
                ec2.SecurityGroupIngressArgs(
                    description="pool members (NCCL/gloo rendezvous and collectives, EFA)",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    self=True,
                ),
            ],
            egress=[
                ec2.SecurityGroupEgressArgs(
                    description="package mirrors, the bucket and the queue",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=["0.0.0.0/0"],
                    ipv6_cidr_blocks=["::/0"],
                ),
                # EFA's OS-bypass traffic is not IP: it needs a rule naming the group itself.
                ec2.SecurityGroupEgressArgs(
                    description="pool members (EFA)",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    self=True,
                ),
            ],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        if self.vpc is not None and not public and private_egress == "endpoints":
            self._interface_endpoints(name, tags=tags, region=region)
        self.register_outputs(
            {"vpc_id": self.vpc_id, "subnet_id": self.subnet_id, "security_group_id": self.security_group.id}
        )

    def _build(
        self,
        name: str,
        *,
        public: bool,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None,
        region: str | None,
        egress: str,
    ) -> None:
        """The VPC, the nodes' subnet and its route table, and the way out (see the class docstring)."""
        self.vpc = ec2.Vpc(
            f"{name}-vpc",
            cidr_block=VPC_CIDR,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        self.subnet = ec2.Subnet(
            f"{name}-subnet",
            vpc_id=self.vpc.id,
            cidr_block=SUBNET_CIDR,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        self.vpc_id, self.subnet_id = self.vpc.id, self.subnet.id
        default_route: list[ec2.RouteTableRouteArgs] = []
        if public or egress == "nat":
            gateway = ec2.InternetGateway(
                f"{name}-igw", vpc_id=self.vpc.id, tags=dict(tags), region=region, opts=child(self)
            )
            if public:
                default_route = [ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)]
            else:
                self.nat_gateway = self._nat(name, gateway, tags=tags, zone=zone, region=region)
                default_route = [
                    ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=self.nat_gateway.id)
                ]
        routes = ec2.RouteTable(
            f"{name}-routes",
            vpc_id=self.vpc.id,
            routes=default_route,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        ec2.RouteTableAssociation(
            f"{name}-routes-assoc",
            subnet_id=self.subnet.id,
            route_table_id=routes.id,
            region=region,
            opts=child(self),
        )
        self.endpoints.append(
            ec2.VpcEndpoint(
                f"{name}-s3",
                vpc_id=self.vpc.id,
                service_name=_service_name("s3", region),
                vpc_endpoint_type="Gateway",
                route_table_ids=[routes.id],
                tags=dict(tags),
                region=region,
                opts=child(self),
            )
        )

    def _nat(
        self,
        name: str,
        gateway: ec2.InternetGateway,
        *,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None,
        region: str | None,
    ) -> ec2.NatGateway:
        """A NAT gateway with its own address in a small public subnet beside the nodes' one."""
        assert self.vpc is not None
        public_subnet = ec2.Subnet(
            f"{name}-nat-subnet",
            vpc_id=self.vpc.id,
            cidr_block=NAT_SUBNET_CIDR,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        public_routes = ec2.RouteTable(
            f"{name}-nat-routes",
            vpc_id=self.vpc.id,
            routes=[ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        ec2.RouteTableAssociation(
            f"{name}-nat-routes-assoc",
            subnet_id=public_subnet.id,
            route_table_id=public_routes.id,
            region=region,
            opts=child(self),
        )
        address = ec2.Eip(f"{name}-nat-ip", domain="vpc", tags=dict(tags), region=region, opts=child(self))
        return ec2.NatGateway(
            f"{name}-nat",
            allocation_id=address.allocation_id,
            subnet_id=public_subnet.id,
            connectivity_type="public",
            tags=dict(tags),
            region=region,
            opts=child(self, depends_on=[gateway]),
        )

    def _interface_endpoints(self, name: str, *, tags: Mapping[str, str], region: str | None) -> None:
        """SQS (the queue) and Secrets Manager (the host keys) inside the VPC, for nodes without a
        way to the internet; HTTPS from the VPC only."""
        assert self.vpc is not None
        endpoint_sg = ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            vpc_id=self.vpc_id,
            description="lepton GPU pool: HTTPS from the VPC to its AWS service endpoints",
            ingress=[
                ec2.SecurityGroupIngressArgs(
                    description="HTTPS from the VPC",
                    protocol="tcp",
                    from_port=443,
                    to_port=443,
                    cidr_blocks=[VPC_CIDR],
                )
            ],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        for service in ("sqs", "secretsmanager"):
            self.endpoints.append(
                ec2.VpcEndpoint(
                    f"{name}-{service}",
                    vpc_id=self.vpc_id,
                    service_name=_service_name(service, region),
                    vpc_endpoint_type="Interface",
                    subnet_ids=[self.subnet_id],
                    security_group_ids=[endpoint_sg.id],
                    private_dns_enabled=True,
                    tags=dict(tags),
                    region=region,
                    opts=child(self),
                )
            )


def _service_name(service: str, region: str | None) -> pulumi.Output[str]:
    """`com.amazonaws.<region>.<service>`, the region being the pool's or else the provider's."""
    where = pulumi.Output.from_input(region) if region else aws.get_region_output().region
    return where.apply(lambda r: f"com.amazonaws.{r}.{service}")
