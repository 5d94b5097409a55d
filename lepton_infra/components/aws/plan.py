"""What an AWS pool decides before it registers anything: the checks of its AWS-only arguments
(`network` and `identity` keys, zone in region, image form, `extra` against `ec2.InstanceArgs`) and
the decisions later steps read (existing network and instance profile, image source, EFA). No
resource and no AWS call here: the zone offering and the AMI lookup happen in the steps that
need them (`placement.pool_zone`, `instance.node_image`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from lepton_infra.components import images
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.aws.instance import instance_args, instance_spec
from lepton_infra.components.aws.placement import EFA_NETWORK_CARDS
from lepton_infra.components.common import merge_extra
from lepton_infra.components.pool import PoolPlan, neutral_plan
from lepton_infra.errors import ConfigError

# AWS's public SSM parameter for the current PyTorch Deep Learning AMI (the image table's default row:
# torch in /opt/pytorch/bin/python, which the inventory names).
DEEP_LEARNING_AMI_PARAMETER = images.default_image("aws").image  # type: ignore[union-attr]
NETWORK_KEYS = frozenset({"subnet_id", "vpc_id"})
IDENTITY_KEYS = frozenset({"instance_profile"})
_AMI_RE = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
# A zone is its region plus a letter; Local/Wavelength Zones add a location in between
# (us-west-2-lax-1a).
_ZONE_RE = re.compile(r"^(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)(?:-[a-z]+-[0-9]+)?[a-z]$")


@dataclass(frozen=True)
class AwsPlan:
    """AWS's own part of a pool's plan (`PoolPlan.cloud`)."""

    network: Mapping[str, Any] | None  # an existing VPC and subnet (`vpc_id`, `subnet_id`); None: made here
    image: str  # an AMI id, or the SSM parameter naming one (AWS's Deep Learning AMI by default)
    moving: bool  # the image is an SSM parameter: new nodes follow it, running ones keep theirs
    efa_cards: int  # EFA network cards of the instance type (0: no EFA, no placement group)


def plan(name: str, args: GpuVmPoolArgs) -> PoolPlan[AwsPlan]:
    """The pool's plan; raises ConfigError naming the key, the value and what is allowed."""
    network = check_keys(args.network, NETWORK_KEYS, "network")
    identity = check_keys(args.identity, IDENTITY_KEYS, "identity")
    entry = args.validate()  # the catalog row of the pool's region
    check_zone(args.zone, args.region or pulumi.Config("aws").get("region"))
    image = check_image(args.image)
    # A misspelled `extra` key fails here, before any resource exists.
    instance_args(merge_extra(instance_spec(args, entry, ami="ami-probe", public=False), args.extra))
    cloud = AwsPlan(
        network=network,
        image=image,
        moving=image.startswith("/"),
        efa_cards=EFA_NETWORK_CARDS.get(entry.instance_type, 0),
    )
    profile = (identity or {}).get("instance_profile")
    return neutral_plan(name, args, entry, region=args.region, cloud=cloud, shared_identity=profile)


def check_keys(
    value: Mapping[str, Any] | None, allowed: frozenset[str], field_name: str
) -> dict[str, Any] | None:
    """`network` (both keys) or `identity` as a plain dict, or None when not given."""
    if value is None:
        return None
    keys = set(value)
    if not keys or not keys <= allowed or (field_name == "network" and keys != allowed):
        raise ConfigError(
            f"{field_name} for aws is {dict(value)!r}; allowed keys: {', '.join(sorted(allowed))}"
            + (" (both)" if field_name == "network" else "")
        )
    return dict(value)


def check_zone(zone: str | None, region: str | None) -> None:
    """A zone must lie in the pool's region (`region`: the pool's, else the provider's), or the
    subnet and every node fail at deploy time."""
    if zone is None:
        return
    match = _ZONE_RE.match(zone)
    if not match or (region is not None and match["region"] != region):
        where = f"{region}a, {region}b, ..." if region else "us-east-1a"
        raise ConfigError(
            f"zone is {zone!r}; allowed on aws: an availability zone of the pool's region ({where})"
        )


def check_image(image: str | None) -> str:
    """`image` as the pool boots it: an AMI id as is, or an SSM parameter holding one (AWS's public
    Deep Learning AMI parameter by default, so new nodes get the current AMI without a code change)."""
    if image is None:
        return DEEP_LEARNING_AMI_PARAMETER
    if not _AMI_RE.match(image) and not image.startswith("/"):
        raise ConfigError(
            f"image is {image!r}; allowed on aws: an AMI id like ami-0123456789abcdef0, or an SSM "
            f"parameter holding one, starting with '/' (default {DEEP_LEARNING_AMI_PARAMETER})"
        )
    return image
