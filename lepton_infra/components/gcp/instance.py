"""A GCP node's Compute Engine instance: its arguments from the plan (machine type, GPUs, secure
defaults, metadata with the cloud-init and nothing else, disk, NIC, identity), merged with the
user's `extra` into the provider's typed arguments, and the addresses it is reached at."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import pulumi
from pulumi_gcp import compute

from lepton_infra.components.common import gcp_labels, merge_extra, typed_args

if TYPE_CHECKING:
    from lepton_infra.components.gcp.plan import GcpPlan
    from lepton_infra.components.pool import PoolPlan

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
BOOT_DISK_TYPE = "pd-balanced"
# Machine families whose VMs must use Google Virtual NIC (gVNIC): third-generation machines such as
# A3 do not offer VirtIO-Net (cloud.google.com/compute/docs/networking/using-gvnic, "gVNIC is
# required" for A3; read 2026-12 from the docs as remembered, not fetchable here). The image must
# carry the GVNIC guest OS feature: Deep Learning VM images do; `compute.get_image` does not return
# an image's features, so another image is the user's to check.
GVNIC_FAMILIES = frozenset({"a3"})


def instance_spec(
    plan: PoolPlan[GcpPlan],
    i: int,
    *,
    user_data: pulumi.Input[str],
    image: pulumi.Input[str],
    subnetwork: pulumi.Input[str],
    tag: str,
    email: pulumi.Input[str],
    placement: pulumi.Input[str] | None,
) -> dict[str, Any]:
    """Node `i`'s instance arguments (the user's `extra` merged in, nested blocks still dicts)."""
    gcp, entry, args = plan.cloud, plan.entry, plan.args
    labels = gcp_labels(plan.node_tags)
    base: dict[str, Any] = {
        "project": gcp.project,
        "zone": gcp.zone,
        "machine_type": entry.instance_type,
        "guest_accelerators": (
            [{"type": entry.gcp_accelerator_type, "count": entry.gpus}]
            if entry.gcp_accelerator_type
            else None
        ),
        "scheduling": scheduling(args.spot),
        "shielded_instance_config": {
            # Off: the GPU driver is not signed for Secure Boot (see GcpGpuVmPool's docstring).
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
                "subnetwork": subnetwork,
                # An ephemeral external IP only when someone outside may SSH in.
                "access_configs": [{"network_tier": "PREMIUM"}] if plan.public else [],
                **({"nic_type": "GVNIC"} if entry.family in GVNIC_FAMILIES else {}),
            }
        ],
        "service_account": {"email": email, "scopes": [CLOUD_PLATFORM_SCOPE]},
        # One self link (the provider takes a single policy here).
        "resource_policies": placement,
        "tags": [tag],
        "labels": labels,
        "allow_stopping_for_update": True,
        "description": f"lepton node {i} of {plan.cluster}",
    }
    return merge_extra(base, gcp.extra)


def scheduling(spot: bool) -> dict[str, Any]:
    """GPU VMs cannot live-migrate: GCE requires onHostMaintenance=TERMINATE for them, and a
    restarted node would have lost its job anyway, so no automatic restart either."""
    sched: dict[str, Any] = {"on_host_maintenance": "TERMINATE", "automatic_restart": False}
    if spot:
        sched.update(provisioning_model="SPOT", preemptible=True, instance_termination_action="DELETE")
    else:
        sched.update(provisioning_model="STANDARD", preemptible=False)
    return sched


def instance_args(spec: Mapping[str, Any]) -> compute.InstanceArgs:
    """The merged (base + extra) instance spec as the provider's typed `compute.InstanceArgs`, every
    nested block typed too, so a misspelled key fails naming the allowed ones (the mocks, and a
    preview, would accept it silently)."""
    return typed_args(compute.InstanceArgs, {k: v for k, v in spec.items() if v is not None})  # type: ignore[no-any-return]


def node_addresses(instance: compute.Instance, public: bool) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """(address the controller dials, address peers use): the external IP when the node has one."""
    nic = instance.network_interfaces.apply(lambda nics: nics[0])
    # A created instance always has these addresses (the provider types them Optional).
    private_ip = nic.apply(lambda n: cast(str, n.network_ip))
    if not public:
        return private_ip, private_ip
    host = nic.apply(lambda n: cast(str, n.access_configs[0].nat_ip if n.access_configs else n.network_ip))
    return host, private_ip
