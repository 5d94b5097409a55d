"""Everything a GCP pool decides before it registers anything, once: the location (region, zone,
project), the `network`/`identity` mappings, the image's form and the `extra` arguments (probed
against the instance's arguments, so a misspelled key fails before the first resource). Registers
nothing and calls no cloud API: the image family is resolved by the launch step that needs it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lepton_infra.catalog import lookup
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.gcp.apis import pop_enable_apis
from lepton_infra.components.gcp.boot import GCP_BOOT
from lepton_infra.components.gcp.image import check_image
from lepton_infra.components.gcp.instance import instance_args, instance_spec
from lepton_infra.components.gcp.location import default_zone, resolve_project, resolve_region
from lepton_infra.components.pool import PoolPlan, neutral_plan
from lepton_infra.errors import ConfigError

_NETWORK_KEYS = frozenset({"network", "subnetwork"})
_IDENTITY_KEYS = frozenset({"service_account_email"})


@dataclass(frozen=True)
class GcpPlan:
    """GCP's own part of a pool's plan (`PoolPlan.cloud`)."""

    project: str
    zone: str
    enable_apis: bool  # enable POOL_APIS first (`extra["enable_apis"]`, taken out of `extra`)
    extra: Mapping[str, Any]  # the user's instance arguments, merged into every instance's
    subnetwork: Mapping[str, str] | None  # an existing subnet (and its VPC) from `network`
    service_account_email: str | None  # an existing account from `identity`, shared by all nodes


def plan_pool(name: str, args: GpuVmPoolArgs) -> PoolPlan[GcpPlan]:
    """GCP's checks and decisions for pool `name`. GCP's own shape checks come first: they name the
    exact problem ("a zone goes in `zone`") where the catalog could only say the region is not in it."""
    extra = dict(args.extra or {})
    region = resolve_region(args.region, args.zone)
    subnetwork = check_network_mapping(args.network, region)
    email = check_identity_mapping(args.identity)
    check_image(args.image)
    project = resolve_project(extra)
    enable = pop_enable_apis(extra)
    entry = lookup("gcp", args.accelerator, args.gpus_per_node, region)
    cloud = GcpPlan(
        project=project,
        zone=args.zone or default_zone(region),
        enable_apis=enable,
        extra=extra,
        subnetwork=subnetwork,
        service_account_email=email,
    )
    plan = neutral_plan(name, args, entry, region=region, cloud=cloud, boot=GCP_BOOT, shared_identity=email)
    probe = instance_spec(
        plan, 0, user_data="", image="probe", subnetwork="probe", tag="probe", email="probe", placement=None
    )
    instance_args(probe)  # a misspelled `extra` key fails here, naming the allowed keys
    return plan


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
