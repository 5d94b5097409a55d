"""Where an AWS pool's nodes go: its availability zone (one that offers the instance type), and for
the EFA instance types (P4/P5) a cluster placement group, a launch template with an EFA interface
on every network card, and the public address such a node needs, so NCCL runs over EFA instead of
falling back to plain TCP sockets."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws.ec2 as ec2

from lepton_infra.components.aws.network import AwsNetwork
from lepton_infra.components.common import child
from lepton_infra.components.pool import PoolPlan
from lepton_infra.errors import ConfigError

# Network cards (one EFA interface each) of the catalog's EFA instance types, from EC2's instance
# type specifications: p4d/p4de.24xlarge have 4, p5.48xlarge 32.
EFA_NETWORK_CARDS = {"p4d.24xlarge": 4, "p4de.24xlarge": 4, "p5.48xlarge": 32}


def pool_zone(plan: PoolPlan[Any], parent: pulumi.Resource) -> pulumi.Output[str] | None:
    """The availability zone of the pool: the user's `zone`; else, for a network made here, the
    first (by name) zone of the region that offers the instance type, as EC2 reports it
    (`DescribeInstanceTypeOfferings`), logged so the user sees which; an existing subnet fixes its
    own zone (None here)."""
    args, entry = plan.args, plan.entry
    if args.zone is not None:
        return pulumi.Output.from_input(args.zone)
    if plan.cloud.network:
        return None
    offers = ec2.get_instance_type_offerings_output(
        location_type="availability-zone",
        filters=[ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=[entry.instance_type])],
        region=plan.region,
        opts=pulumi.InvokeOutputOptions(parent=parent),
    )
    where = plan.region or "the provider's region"

    def pick(zones: list[str] | None) -> str:
        if not zones:
            raise ConfigError(
                f"accelerator {entry.accelerator} x{entry.gpus} ({entry.instance_type}) is offered in no "
                f"availability zone of {where}; allowed: another region (lepton:region) or accelerator"
            )
        zone = sorted(zones)[0]
        pulumi.log.info(
            f"aws: {entry.instance_type} is offered in {', '.join(sorted(zones))} of {where}; the pool "
            f"goes to {zone} (set zone to choose another)",
            resource=parent,
        )
        return zone

    return offers.locations.apply(pick)


def efa_placement(
    plan: PoolPlan[Any], network: AwsNetwork, parent: pulumi.Resource
) -> tuple[ec2.PlacementGroup | None, ec2.LaunchTemplate | None]:
    """For an EFA instance type: one cluster placement group (the nodes on one network spine) and the
    EFA launch template; (None, None) for any other type."""
    cards = plan.cloud.efa_cards
    if not cards:
        return None, None
    group = ec2.PlacementGroup(
        f"{plan.name}-placement",
        strategy="cluster",
        tags=dict(plan.tags),
        region=plan.region,
        opts=child(parent),
    )
    template = ec2.LaunchTemplate(
        f"{plan.name}-efa",
        description="lepton GPU pool: EFA interfaces on every network card",
        # The instances set IMDSv2 themselves; the template says the same for anything else
        # launched from it.
        metadata_options=ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
        ),
        # One EFA interface per network card (the first is the instance's primary interface), in
        # the pool's subnet and security group.
        network_interfaces=[
            ec2.LaunchTemplateNetworkInterfaceArgs(
                network_card_index=card,
                device_index=0 if card == 0 else 1,
                interface_type="efa",
                subnet_id=network.subnet_id,
                security_groups=[network.security_group.id],
                delete_on_termination="true",
            )
            for card in range(cards)
        ],
        tags=dict(plan.tags),
        region=plan.region,
        opts=child(parent),
    )
    return group, template


def efa_public_address(
    plan: PoolPlan[Any], i: int, instance: ec2.Instance, parent: pulumi.Resource
) -> ec2.Eip:
    """A public address for EFA node `i`: an instance with several network cards cannot be given one
    at launch. Associated with its primary network interface, not `instance=`: AssociateAddress
    refuses an instance with several interfaces ("InvalidInstanceID: There are multiple interfaces
    attached to instance"), which every EFA node has."""
    return ec2.Eip(
        f"{plan.name}-node-{i}-ip",
        domain="vpc",
        network_interface=instance.primary_network_interface_id,
        tags=dict(plan.tags),
        region=plan.region,
        opts=child(parent),
    )
