"""Azure implementations of the lepton components on `pulumi_azure_native`: a pool of GPU VMs that
boot with the neutral layer's cloud-init, a private blob container and a storage queue with its
`-poison` queue, each store and queue in its own locked-down storage account.

The neutral layer drives (naming, tags, validation, host keys, cloud-init, the pool's sequence:
`components/pool.py`); this package supplies Azure's parts, one room each:

    plan.py      checks and decisions, once, before anything is registered (`AzurePlan`)
    pool.py      `AzureGpuVmPool`: the hooks of the pool sequence, each handing off to a room below
    network.py   VNet/subnet, network security group, NAT; each node's NIC and public IP
    identity.py  the nodes' managed identities, their data roles, the watchdog's stop role
    secrets.py   the Key Vault with each node's host key, readable by that node alone
    instance.py  one node's VM arguments (`extra` merged in) and the InfiniBand placement
    boot.py      Azure's cloud-init additions: the stop call and the torch venv
    store.py     `AzureObjectStore`;  queue.py  `AzureJobQueue`;  account.py  their storage account
    arm.py       what every room addresses ARM with: subscription, resource groups, roles, names

Every name importable from `lepton_infra.components.azure` before it became a package still is."""

from __future__ import annotations

from lepton_infra.components.azure.account import secure_storage_account, storage_account_spec
from lepton_infra.components.azure.arm import (
    ROLE_BLOB_DATA_CONTRIBUTOR,
    ROLE_KEY_VAULT_SECRETS_USER,
    ROLE_QUEUE_DATA_CONTRIBUTOR,
    azure_slug,
    role_definition_id,
    stack_guid,
    storage_account_name,
)
from lepton_infra.components.azure.boot import (
    INSTALL_TORCH,
    INSTALL_TORCH_PATH,
    STOP_PATH,
    TORCH_INDEX,
    TORCH_PIN,
    VENV,
    azure_boot,
)
from lepton_infra.components.azure.identity import ACTION_DEALLOCATE, ACTION_DELETE, AzureNodeIdentity
from lepton_infra.components.azure.instance import INFINIBAND_FAMILIES, OS_DISK_TYPE, needs_infiniband_group
from lepton_infra.components.azure.network import (
    PRIORITY_DENY_ALL,
    PRIORITY_POOL,
    PRIORITY_SSH,
    SUBNET_CIDR,
    VNET_CIDR,
    AzureNetwork,
)
from lepton_infra.components.azure.plan import (
    DEFAULT_IMAGE,
    DEFAULT_LOCATION,
    RESERVED_ADMIN_USERNAMES,
    AzurePlan,
    check_admin_username,
    check_identity_mapping,
    check_network_mapping,
    check_zone,
    parse_image,
    resolve_location,
)
from lepton_infra.components.azure.pool import AzureGpuVmPool
from lepton_infra.components.azure.queue import POISON_SUFFIX, QUEUE_ENDPOINT_SUFFIX, AzureJobQueue
from lepton_infra.components.azure.secrets import AzureHostKeySecrets, host_key_fetch
from lepton_infra.components.azure.store import SOFT_DELETE_DAYS, AzureObjectStore

__all__ = [
    "ACTION_DEALLOCATE",
    "ACTION_DELETE",
    "DEFAULT_IMAGE",
    "DEFAULT_LOCATION",
    "INFINIBAND_FAMILIES",
    "INSTALL_TORCH",
    "INSTALL_TORCH_PATH",
    "OS_DISK_TYPE",
    "POISON_SUFFIX",
    "PRIORITY_DENY_ALL",
    "PRIORITY_POOL",
    "PRIORITY_SSH",
    "QUEUE_ENDPOINT_SUFFIX",
    "RESERVED_ADMIN_USERNAMES",
    "ROLE_BLOB_DATA_CONTRIBUTOR",
    "ROLE_KEY_VAULT_SECRETS_USER",
    "ROLE_QUEUE_DATA_CONTRIBUTOR",
    "SOFT_DELETE_DAYS",
    "STOP_PATH",
    "SUBNET_CIDR",
    "TORCH_INDEX",
    "TORCH_PIN",
    "VENV",
    "VNET_CIDR",
    "AzureGpuVmPool",
    "AzureHostKeySecrets",
    "AzureJobQueue",
    "AzureNetwork",
    "AzureNodeIdentity",
    "AzureObjectStore",
    "AzurePlan",
    "azure_boot",
    "azure_slug",
    "check_admin_username",
    "check_identity_mapping",
    "check_network_mapping",
    "check_zone",
    "host_key_fetch",
    "needs_infiniband_group",
    "parse_image",
    "resolve_location",
    "role_definition_id",
    "secure_storage_account",
    "stack_guid",
    "storage_account_name",
    "storage_account_spec",
]
