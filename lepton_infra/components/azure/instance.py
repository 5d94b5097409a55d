"""One node's VM: its arguments (size from the catalog, the admin user's one SSH key, the managed
identity, a Premium OS disk deleted with the VM, Spot), `extra` merged into them, and the InfiniBand
placement ND pools need.

VMs do not turn on encryption at host by default: it needs the subscription feature
`Microsoft.Compute/EncryptionAtHost` registered first, and without it every VM creation fails. The
managed OS disk is encrypted at rest with platform-managed keys either way. Turn it on with
`AzureGpuVmPool(..., encryption_at_host=True)` or `extra={"security_profile": {"encryption_at_host":
True}}`."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pulumi
import pulumi_azure_native.compute as compute

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.azure.arm import azure_slug
from lepton_infra.components.common import child, merge_extra, typed_args

if TYPE_CHECKING:
    from lepton_infra.components.azure.plan import AzurePlan
    from lepton_infra.components.pool import PoolPlan

OS_DISK_TYPE = "Premium_LRS"  # every catalog size is an 's' (premium storage capable) size

# ND sizes with InfiniBand (the "r" in the family name: RDMA); NCCL uses it between nodes.
INFINIBAND_FAMILIES = frozenset({"NDasr_v4", "NDamsrA100_v4", "NDisrH100_v5"})


class Placement(NamedTuple):
    """The availability set (in its proximity placement group) an InfiniBand pool's VMs share."""

    proximity_group: compute.ProximityPlacementGroup
    availability_set: compute.AvailabilitySet


def needs_infiniband_group(entry: CatalogEntry, nodes: int) -> bool:
    """Whether the pool's VMs must share an availability set to reach each other over InfiniBand."""
    return nodes > 1 and entry.family in INFINIBAND_FAMILIES


def infiniband_placement(
    parent: pulumi.Resource, name: str, *, rg: pulumi.Input[str], location: str, tags: Mapping[str, str]
) -> Placement:
    """InfiniBand joins only VMs of one availability set (or scale set): without it each ND node
    sits on its own IB fabric and NCCL falls back to TCP. The proximity placement group keeps them
    in one datacenter; one fault domain keeps them on one IB network. Azure's documentation (read
    2026-12-05): CycleCloud's "Availability Sets" how-to
    (learn.microsoft.com/azure/cyclecloud/how-to/availability-sets) uses an availability set to put
    VMs "in the same Infiniband group"; a scale set does the same only within one placement group
    (single_placement_group). Separate VMs, as here, take the set."""
    group = compute.ProximityPlacementGroup(
        f"{name}-ppg",
        compute.ProximityPlacementGroupArgs(
            resource_group_name=rg,
            location=location,
            proximity_placement_group_type="Standard",
            tags=dict(tags),
        ),
        opts=child(parent),
    )
    avset = compute.AvailabilitySet(
        f"{name}-ib",
        compute.AvailabilitySetArgs(
            resource_group_name=rg,
            location=location,
            sku=compute.SkuArgs(name="Aligned"),  # managed disks
            platform_fault_domain_count=1,
            platform_update_domain_count=1,
            proximity_placement_group=compute.SubResourceArgs(id=group.id),
            tags=dict(tags),
        ),
        opts=child(parent),
    )
    return Placement(group, avset)


def vm_spec(
    args: GpuVmPoolArgs,
    entry: CatalogEntry,
    cloud: AzurePlan,
    *,
    rg: pulumi.Input[str],
    computer_name: str,
    custom_data: pulumi.Input[str],
    nic_id: pulumi.Input[str],
    identity_id: pulumi.Input[str],
    tags: Mapping[str, str],
    encryption_at_host: bool,
) -> dict[str, Any]:
    """A node's VirtualMachine arguments before `extra`, as a dict in the provider's key names."""
    spec: dict[str, Any] = {
        "resource_group_name": rg,
        "location": cloud.location,
        "hardware_profile": {"vm_size": entry.instance_type},
        "os_profile": {
            "computer_name": computer_name,
            "admin_username": args.user,
            # cloud-init reads it on first boot; Azure never returns it from its API.
            "custom_data": custom_data,
            "linux_configuration": {
                "disable_password_authentication": True,
                "provision_vm_agent": True,
                "ssh": {
                    "public_keys": [
                        {"path": f"/home/{args.user}/.ssh/authorized_keys", "key_data": args.ssh_public_key}
                    ]
                },
            },
        },
        "storage_profile": {
            "image_reference": dict(cloud.image_reference),
            "os_disk": {
                "create_option": "FromImage",
                "os_type": "Linux",
                "caching": "ReadWrite",
                "disk_size_gb": args.disk_gb,
                # The OS disk is created by Azure, not by Pulumi: without Delete it would outlive
                # the VM (and its bill) after `pulumi destroy` or a spot eviction.
                "delete_option": "Delete",
                "managed_disk": {"storage_account_type": OS_DISK_TYPE},
            },
        },
        "network_profile": {"network_interfaces": [{"id": nic_id, "primary": True}]},
        "identity": {"type": "UserAssigned", "user_assigned_identities": [identity_id]},
        # Serial log and screenshot in Azure-managed storage: the way to see why cloud-init failed.
        "diagnostics_profile": {"boot_diagnostics": {"enabled": True}},
        "priority": "Regular",
        "tags": dict(tags),
    }
    if args.spot:
        # Evicted spot VMs are deleted (with their OS disk), never left deallocated and billed for
        # storage; max_price -1 means "up to the on-demand price", so price alone never evicts.
        spec.update(priority="Spot", eviction_policy="Delete", billing_profile={"max_price": -1})
    if encryption_at_host:
        spec["security_profile"] = {"encryption_at_host": True}
    if cloud.zones:
        spec["zones"] = cloud.zones
    return spec


def check_vm_extra(args: GpuVmPoolArgs, entry: CatalogEntry, cloud: AzurePlan) -> None:
    """`extra` merged into placeholder VM arguments and typed: a misspelled key at any depth is a
    ConfigError naming it, before any resource exists."""
    probe = vm_spec(
        args,
        entry,
        cloud,
        rg="rg",
        computer_name="probe",
        custom_data="",
        nic_id="nic",
        identity_id="id",
        tags={},
        encryption_at_host=False,
    )
    typed_args(compute.VirtualMachineArgs, merge_extra(probe, args.extra))


def node_vm(
    parent: pulumi.Resource,
    plan: PoolPlan[AzurePlan],
    i: int,
    user_data: pulumi.Output[str],
    *,
    rg: pulumi.Input[str],
    nic_id: pulumi.Input[str],
    identity_id: pulumi.Input[str],
    placement: Placement | None,
    encryption_at_host: bool,
    depends_on: Sequence[pulumi.Resource],
    ignore_changes: list[str],
) -> compute.VirtualMachine:
    """Node `i`'s VM booting `user_data`, created once `depends_on` exist."""
    base = vm_spec(
        plan.args,
        plan.entry,
        plan.cloud,
        rg=rg,
        computer_name=f"{azure_slug(plan.name, 56)}-{i}",
        custom_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode("ascii")),
        nic_id=nic_id,
        identity_id=identity_id,
        tags=plan.node_tags,
        encryption_at_host=encryption_at_host,
    )
    if placement is not None:
        base["availability_set"] = {"id": placement.availability_set.id}
        base["proximity_placement_group"] = {"id": placement.proximity_group.id}
    return compute.VirtualMachine(
        f"{plan.name}-{i}",
        typed_args(compute.VirtualMachineArgs, merge_extra(base, plan.args.extra)),
        # custom_data cannot change in place: a new cloud-init means a new VM, and the old one must
        # let go of the NIC first.
        opts=child(
            parent, delete_before_replace=True, depends_on=list(depends_on), ignore_changes=ignore_changes
        ),
    )
