"""An Azure pool's checks and decisions, made once before anything is registered: location, zone,
image, admin user, the `network` and `identity` mappings, the catalog row, whether the nodes need an
InfiniBand availability set, and `extra` tried against the VM's own arguments. Registers nothing
and calls no cloud API, so `lepton_infra.config` can check a stack file with it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from lepton_infra.catalog import lookup
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.azure.arm import check_resource_group
from lepton_infra.components.azure.boot import azure_boot
from lepton_infra.components.azure.instance import check_vm_extra, needs_infiniband_group
from lepton_infra.components.images import default_image, image_row
from lepton_infra.components.pool import PoolPlan, neutral_plan
from lepton_infra.errors import ConfigError

DEFAULT_LOCATION = "eastus"
# Data Science VM for HPC: Ubuntu 22.04 with NVIDIA drivers, CUDA, NCCL and InfiniBand drivers,
# provisioned by cloud-init (which reads `custom_data`), no marketplace plan needed.
DEFAULT_IMAGE = "microsoft-dsvm:ubuntu-hpc:2204:latest"

# Names Azure refuses as a Linux VM's admin user (ARM validation of osProfile.adminUsername).
RESERVED_ADMIN_USERNAMES = frozenset(
    """administrator admin user user1 test user2 test1 user3 admin1 1 123 a actuser adm admin2 aspnet
    backup console david guest john owner root server sql support support_388945a0 sys test2 test3
    user4 user5""".split()
)

_LOCATION_RE = re.compile(r"^[a-z][a-z0-9]{2,39}$")
_ZONES = ("1", "2", "3")
_ARM_ID = r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
_SUBNET_ID_RE = re.compile(
    _ARM_ID + r"Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$", re.IGNORECASE
)
_IDENTITY_ID_RE = re.compile(
    _ARM_ID + r"Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<name>[^/]+)$", re.IGNORECASE
)
_NETWORK_KEYS = frozenset({"subnet_id", "resource_group_name"})
_IDENTITY_KEYS = frozenset({"user_assigned_identity_id", "principal_id"})


@dataclass(frozen=True)
class AzurePlan:
    """Azure's own part of a pool's plan (`PoolPlan.cloud`)."""

    location: str
    zone: str | None  # an availability zone number, '1' to '3'
    image: str  # as given (or the default): what the new-node log names
    image_reference: Mapping[str, str]  # the VM's `storage_profile.image_reference`
    subnet_id: str | None  # an existing subnet for the NICs (None: the pool's own VNet)
    resource_group_name: pulumi.Input[str] | None  # an existing group (None: the pool's own)
    infiniband: bool  # the nodes share an availability set to reach each other over InfiniBand

    @property
    def zones(self) -> list[str] | None:
        """`zones` as ARM takes it on a VM, public IP or NAT gateway."""
        return [self.zone] if self.zone else None

    @property
    def image_moves(self) -> bool:
        """A `latest` version names a newer image whenever one is published."""
        return self.image_reference.get("version", "").lower() == "latest"


def plan_azure_pool(name: str, args: GpuVmPoolArgs) -> PoolPlan[AzurePlan]:
    """Every check and decision of an Azure pool, in one typed plan."""
    # Azure-specific shapes first: their messages are more precise than the neutral ones.
    network = check_network_mapping(args.network)
    identity = check_identity_mapping(args.identity)
    image_reference = parse_image(args.image)
    zone = check_zone(args.zone)
    location = resolve_location(args.region)
    # The catalog row for the location actually used (the stack's default when `region` is unset);
    # the caller's spec is left as it was.
    entry = lookup("azure", args.accelerator, args.gpus_per_node, location)
    check_admin_username(args.user)
    infiniband = needs_infiniband_group(entry, args.nodes)
    if zone is not None and infiniband:
        raise ConfigError(
            f"zone is {zone!r}, but {args.nodes} {entry.instance_type} nodes need one availability set "
            "to share an InfiniBand network, and an availability set cannot be zonal: leave zone unset"
        )
    cloud = AzurePlan(
        location=location,
        zone=zone,
        image=args.image or DEFAULT_IMAGE,
        image_reference=image_reference,
        subnet_id=network.get("subnet_id"),
        resource_group_name=network.get("resource_group_name"),
        infiniband=infiniband,
    )
    check_vm_extra(args, entry, cloud)  # a misspelled `extra` key fails here, before any resource
    # The venv only for the default image: another image brings its own interpreter (`python`).
    boot = azure_boot(spot=args.spot, install_torch=image_row("azure", args.image) == default_image("azure"))
    return neutral_plan(name, args, entry, region=location, cloud=cloud, boot=boot, shared_identity=identity)


def resolve_location(region: str | None) -> str:
    """`region`, else the `azure-native:location` stack config, else eastus. Azure location names
    are lowercase with no spaces (`westeurope`, not `West Europe`)."""
    location = region or pulumi.Config("azure-native").get("location") or DEFAULT_LOCATION
    if not isinstance(location, str) or not _LOCATION_RE.match(location):
        raise ConfigError(
            f"region {location!r} is not an Azure location name: expected lowercase letters and digits "
            "without spaces, like 'eastus', 'westus2' or 'westeurope'"
        )
    return location


def check_zone(zone: str | None) -> str | None:
    """Azure availability zones are numbered '1', '2', '3' within the region (or leave it unset)."""
    if zone is None:
        return None
    if str(zone) not in _ZONES:
        raise ConfigError(
            f"zone is {zone!r}; allowed on azure: '1', '2' or '3' (an availability zone number in the "
            "region), or leave it unset"
        )
    return str(zone)


def parse_image(image: str | None) -> dict[str, str]:
    """`publisher:offer:sku:version` (the `az vm image list --all` URN) or the resource id of an
    image / gallery image version, as the VM's `image_reference`."""
    image = DEFAULT_IMAGE if image is None else image
    if isinstance(image, str) and image.lower().startswith("/subscriptions/"):
        return {"id": image}
    parts = image.split(":") if isinstance(image, str) else []
    if len(parts) != 4 or not all(p and not any(c.isspace() for c in p) for p in parts):
        raise ConfigError(
            f"image is {image!r}; allowed on azure: 'publisher:offer:sku:version' like {DEFAULT_IMAGE!r}, "
            "or an image resource id starting with '/subscriptions/'"
        )
    publisher, offer, sku, version = parts
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def check_admin_username(user: str) -> str:
    """`user`, unless Azure refuses it as a Linux VM's admin user."""
    if user.lower() in RESERVED_ADMIN_USERNAMES:
        raise ConfigError(
            f"user is {user!r}, a name Azure reserves and refuses as a VM's admin user; pick another "
            "(the default is 'lepton')"
        )
    return user


def check_network_mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """`network={"subnet_id": ..., "resource_group_name": ...}`, either key optional: an existing
    subnet to put the NICs in, and/or an existing resource group for the pool's resources."""
    if value is None:
        return {}
    unknown = sorted(set(value) - _NETWORK_KEYS)
    if unknown or not value:
        raise ConfigError(
            f"network on azure is {dict(value)!r}; allowed keys: subnet_id (an existing subnet's resource "
            "id), resource_group_name (an existing resource group)"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    out: dict[str, Any] = {}
    if "subnet_id" in value:
        subnet = value["subnet_id"]
        if not isinstance(subnet, str) or not _SUBNET_ID_RE.match(subnet):
            raise ConfigError(
                f"network['subnet_id'] is {subnet!r}; allowed: a subnet resource id like "
                "'/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/"
                "<vnet>/subnets/<subnet>'"
            )
        out["subnet_id"] = subnet
    if "resource_group_name" in value:
        out["resource_group_name"] = check_resource_group(
            value["resource_group_name"], "network['resource_group_name']"
        )
    return out


def check_identity_mapping(value: Mapping[str, Any] | None) -> dict[str, str] | None:
    """`identity={"user_assigned_identity_id": ..., "principal_id": ...}`: an existing user-assigned
    identity for the nodes (principal_id optional; looked up when missing)."""
    if value is None:
        return None
    unknown = sorted(set(value) - _IDENTITY_KEYS)
    if unknown or "user_assigned_identity_id" not in value:
        raise ConfigError(
            f"identity on azure is {dict(value)!r}; allowed keys: user_assigned_identity_id (required), "
            "principal_id (optional, its object id)"
        )
    ident = value["user_assigned_identity_id"]
    if not isinstance(ident, str) or not _IDENTITY_ID_RE.match(ident):
        raise ConfigError(
            f"identity['user_assigned_identity_id'] is {ident!r}; allowed: a resource id like "
            "'/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/"
            "userAssignedIdentities/<name>'"
        )
    out = {"user_assigned_identity_id": ident}
    if value.get("principal_id") is not None:
        out["principal_id"] = str(value["principal_id"])
    return out
