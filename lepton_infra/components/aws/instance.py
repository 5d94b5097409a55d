"""An AWS node's instance: the settings every node gets (the secure defaults), its image, and its
`ec2.InstanceArgs` with the pool's parts and the user's `extra` merged in, typed so a misspelled
key fails before anything is registered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import pulumi
import pulumi_aws.ec2 as ec2
import pulumi_aws.ssm as ssm

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.common import merge_extra, new_node_image, typed_args
from lepton_infra.components.pool import PoolPlan


class NodeImage(NamedTuple):
    """The AMI new nodes boot, and the instances' `ignore_changes` that keeps running nodes on theirs."""

    ami: pulumi.Output[str]
    ignore_changes: list[str]


def node_image(plan: PoolPlan[Any], parent: pulumi.Resource) -> NodeImage:
    """The plan's image as an AMI: an AMI id as is, an SSM parameter looked up (once per pool). A
    parameter moves to each new AMI: running nodes keep the one they were created with."""
    image, moving = plan.cloud.image, plan.cloud.moving
    ami = ssm.get_parameter_output(name=image, region=plan.region).value if moving else image
    return NodeImage(
        *new_node_image("aws", ami, moving=moving, image_property="ami", source=image, parent=parent)
    )


def node_instance_args(
    plan: PoolPlan[Any],
    i: int,
    *,
    ami: pulumi.Input[str],
    profile: pulumi.Input[str],
    user_data: pulumi.Input[str],
    subnet_id: pulumi.Input[str],
    security_group_id: pulumi.Input[str],
    placement_group: ec2.PlacementGroup | None,
    launch_template: ec2.LaunchTemplate | None,
) -> ec2.InstanceArgs:
    """Node `i`'s instance args: the secure defaults, its identity, cloud-init and tags, and either
    the pool's subnet and security group or (EFA types) its placement group and launch template,
    with `extra` merged in last."""
    spec = instance_spec(plan.args, plan.entry, ami=ami, public=plan.public)
    spec.update(
        iam_instance_profile=profile,
        user_data=user_data,
        tags={**plan.node_tags, "Name": f"{plan.cluster}-node-{i}"},
        volume_tags=dict(plan.tags),
    )
    if launch_template is not None and placement_group is not None:
        # The template's EFA interfaces carry the subnet and security group; an instance with
        # several network cards cannot be given a public IP at launch (`efa_public_address`).
        del spec["associate_public_ip_address"]
        spec.update(
            launch_template={"id": launch_template.id, "version": "$Latest"},
            placement_group=placement_group.name,
        )
    else:
        spec.update(subnet_id=subnet_id, vpc_security_group_ids=[security_group_id])
    return instance_args(merge_extra(spec, plan.args.extra))


def instance_spec(args: GpuVmPoolArgs, entry: CatalogEntry, *, ami: Any, public: bool) -> dict[str, Any]:
    """An instance's settings that do not depend on other resources (the pool adds subnet, security
    group, profile, user data and tags): IMDSv2 only with hop limit 1 (containers cannot reach the
    role's credentials), an encrypted gp3 root volume, a public IP only when needed, and spot as
    one-time/terminate (a reclaimed node never comes back half-configured; the watchdog's poweroff
    ends it too, since a one-time spot instance cannot be stopped)."""
    spec: dict[str, Any] = {
        "ami": ami,
        "instance_type": entry.instance_type,
        "associate_public_ip_address": public,
        "metadata_options": {
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": 1,
        },
        "root_block_device": {
            "encrypted": True,
            "volume_type": "gp3",
            "volume_size": args.disk_gb,
            "delete_on_termination": True,
        },
        "region": args.region,
    }
    if args.spot:
        spec["instance_market_options"] = {
            "market_type": "spot",
            "spot_options": {
                "spot_instance_type": "one-time",
                "instance_interruption_behavior": "terminate",
            },
        }
        spec["instance_initiated_shutdown_behavior"] = "terminate"
    return spec


def instance_args(spec: Mapping[str, Any]) -> ec2.InstanceArgs:
    """`spec` (ours merged with `extra`) as typed provider args, nested blocks included, so a
    misspelled key raises ConfigError naming it instead of being sent to AWS."""
    return typed_args(ec2.InstanceArgs, spec)  # type: ignore[no-any-return]
