"""Azure implementations of the lepton components: a VNet with the pool's network security
group, a user-assigned managed identity granted exactly the cluster's blob container and queue, a
locked-down storage account per store/queue, a storage queue with its `-poison` queue, and a pool of
GPU VMs that boot with the neutral layer's cloud-init.

Naming, tags, validation, host keys, cloud-init and the `extra` merge come from the neutral layer
(`args.py`, `common.py`, `cloudinit.py`); this module maps them onto `pulumi_azure_native`.

Choices worth knowing (each can be changed through `extra`):
- Storage accounts refuse shared-key (account key / SAS) access. Everything here is created through
  ARM, and the nodes authenticate with their managed identity (Azure AD), so no key is ever needed;
  an account key would be a bearer secret for the whole account that bypasses the role assignments
  below. Use `az storage ... --auth-mode login` (with a data role of your own) from your laptop, or
  pass `extra={"allow_shared_key_access": True}` if a tool can only use keys.
- Storage encryption: Microsoft-managed keys (Azure always encrypts at rest) plus infrastructure
  (double) encryption, which can only be chosen when the account is created.
- VMs do not turn on encryption at host by default: it needs the subscription feature
  `Microsoft.Compute/EncryptionAtHost` registered first, and without it every VM creation fails. The
  managed OS disk is encrypted at rest with platform-managed keys either way. Turn it on with
  `AzureGpuVmPool(..., encryption_at_host=True)` or `extra={"security_profile":
  {"encryption_at_host": True}}`.
- Azure queues have no server-side redrive. The poison queue follows Azure's own convention
  (`<queue>-poison`, as Functions/WebJobs use): the data-plane client moves a message whose
  `dequeue_count` exceeds `max_receive_count` there, and passes `visibility_timeout_s` on every
  receive (Azure has no queue-level visibility timeout). Both numbers are stored as metadata on the
  queue, so clients read them from the queue itself. The nodes' identity holds "Storage Queue Data
  Contributor" on the queue and on its poison queue, scoped to each queue: the clients send (sweep
  enqueue), receive, extend a running job's visibility (Update Message, which neither "Message
  Processor" nor "Message Sender" allows), delete, read the queue's metadata, and peek and clear
  the poison queue. No narrower built-in role has Update Message.
- `force_destroy` has no Azure counterpart: deleting a storage account deletes its contents. Blob
  and container soft delete (7 days) protect against deleted blobs, not against `pulumi destroy`.
"""

from __future__ import annotations

import base64
import functools
import inspect
import re
import uuid
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.compute as compute
import pulumi_azure_native.keyvault as keyvault
import pulumi_azure_native.managedidentity as managedidentity
import pulumi_azure_native.network as azure_network
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage
import pulumi_random as random

from lepton_infra.catalog import CatalogEntry, lookup
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs
from lepton_infra.components.cloudinit import BootFile, CloudBoot
from lepton_infra.components.common import (
    PoolNode,
    child,
    cluster_env,
    compact_name,
    ipv4_ssh_cidrs,
    merge_extra,
    new_node_image,
    pool_tags,
    short_hash,
    ssh_needs_public_ip,
    tags_for,
    typed_args,
    unwrap,
)
from lepton_infra.components.images import default_image, image_row
from lepton_infra.components.pool import launch_nodes, node_host_keys, node_identities, pool_outputs
from lepton_infra.components.secret_fetch import fetch_command, node_script
from lepton_infra.errors import ConfigError

DEFAULT_LOCATION = "eastus"
# Data Science VM for HPC: Ubuntu 22.04 with NVIDIA drivers, CUDA, NCCL and InfiniBand drivers,
# provisioned by cloud-init (which reads `custom_data`), no marketplace plan needed.
DEFAULT_IMAGE = "microsoft-dsvm:ubuntu-hpc:2204:latest"
VNET_CIDR = "10.43.0.0/16"
SUBNET_CIDR = "10.43.0.0/20"
OS_DISK_TYPE = "Premium_LRS"  # every catalog size is an 's' (premium storage capable) size
POISON_SUFFIX = "-poison"
QUEUE_ENDPOINT_SUFFIX = "queue.core.windows.net"  # public Azure cloud; sovereign clouds differ
SOFT_DELETE_DAYS = 7

# Built-in role definition ids (the same GUIDs in every tenant).
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"  # read/write/delete blobs
# send, receive, update (extend visibility), delete, peek, clear messages; read queue metadata
ROLE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"  # read secret values

# The watchdog's only rights: deallocate its own VM (Spot: delete it; a deleted VM bills nothing).
ACTION_DEALLOCATE = "Microsoft.Compute/virtualMachines/deallocate/action"
ACTION_DELETE = "Microsoft.Compute/virtualMachines/delete"

# ND sizes with InfiniBand (the "r" in the family name: RDMA); NCCL uses it between nodes.
INFINIBAND_FAMILIES = frozenset({"NDasr_v4", "NDamsrA100_v4", "NDisrH100_v5"})

# NSG rule priorities: lower wins. The explicit deny sits below ours and above Azure's default
# AllowVnetInBound / AllowAzureLoadBalancerInBound (65000+), so only our two allows remain.
PRIORITY_SSH = 100
PRIORITY_POOL = 200
PRIORITY_DENY_ALL = 4096

# Names Azure refuses as a Linux VM's admin user (ARM validation of osProfile.adminUsername).
RESERVED_ADMIN_USERNAMES = frozenset(
    """administrator admin user user1 test user2 test1 user3 admin1 1 123 a actuser adm admin2 aspnet
    backup console david guest john owner root server sql support support_388945a0 sys test2 test3
    user4 user5""".split()
)

_LOCATION_RE = re.compile(r"^[a-z][a-z0-9]{2,39}$")
_ZONES = ("1", "2", "3")
_RG_RE = re.compile(r"^[-\w._()]{1,89}[-\w_()]$")
_ARM_ID = r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
_SUBNET_ID_RE = re.compile(
    _ARM_ID + r"Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$", re.IGNORECASE
)
_IDENTITY_ID_RE = re.compile(
    _ARM_ID + r"Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<name>[^/]+)$", re.IGNORECASE
)
_NETWORK_KEYS = frozenset({"subnet_id", "resource_group_name"})
_IDENTITY_KEYS = frozenset({"user_assigned_identity_id", "principal_id"})


# --------------------------------------------------------------------------- validation and names


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


def needs_infiniband_group(entry: CatalogEntry, nodes: int) -> bool:
    """Whether the pool's VMs must share an availability set to reach each other over InfiniBand."""
    return nodes > 1 and entry.family in INFINIBAND_FAMILIES


def check_admin_username(user: str) -> str:
    if user.lower() in RESERVED_ADMIN_USERNAMES:
        raise ConfigError(
            f"user is {user!r}, a name Azure reserves and refuses as a VM's admin user; pick another "
            "(the default is 'lepton')"
        )
    return user


def _check_resource_group(value: object, field_name: str) -> pulumi.Input[str]:
    if isinstance(value, pulumi.Output):
        return value  # another resource group's name, known at deploy time (e.g. `rg.name`)
    if not isinstance(value, str) or not _RG_RE.match(value):
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: an existing resource group name (1-90 letters, digits, "
            "'_', '-', '.', '(' or ')', not ending in '.')"
        )
    return value


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
        out["resource_group_name"] = _check_resource_group(
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


def stack_guid(subscription: str, *parts: str) -> str:
    """A GUID of our choosing, stable for this subscription, project, stack and `parts`: ARM names
    role definitions and assignments by GUID, and a stable one makes a re-run reach the same one."""
    key = "/".join((subscription, pulumi.get_project(), pulumi.get_stack(), *parts))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lepton:{key}"))


def azure_slug(name: str, max_len: int = 63) -> str:
    """`name` as a container/queue/computer name: lowercase letters, digits and single hyphens,
    starting and ending with a letter or digit, at least 3 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-")
    slug = slug[:max_len].strip("-")
    return slug if len(slug) >= 3 else f"lepton-{slug}".strip("-")[:max_len]


def storage_account_name(name: str, subscription_id: str) -> str:
    """3-24 lowercase alphanumerics, globally unique: the component's name plus a hash of the
    subscription, Pulumi project and stack, so re-running keeps the name and two stacks never clash."""
    salt = f"{subscription_id}/{pulumi.get_project()}/{pulumi.get_stack()}"
    return compact_name(name, 24, salt=salt)


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role
    )


# --------------------------------------------------------------------------- typed args from dicts

_FORWARD_ARGS = re.compile(r"ForwardRef\('(\w+Args)'\)")


def typed(cls: type, value: Any, module: ModuleType) -> Any:
    """`cls(**value)` with every nested dict (and list of dicts) turned into the provider's own
    `*Args` class, found from `cls`'s annotations, so a misspelled key anywhere (ours or the user's in
    `extra`) is a ConfigError naming it instead of being silently ignored. Typed values and Outputs
    pass through unchanged."""
    if not isinstance(value, Mapping):
        return value
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    out: dict[str, Any] = {}
    for key, item in value.items():
        param = params.get(key)
        if param is not None and item is not None:
            annotation = repr(param.annotation)
            match = _FORWARD_ARGS.search(annotation)
            if match and not annotation.startswith("typing.Union[typing.Mapping"):
                nested = getattr(module, match.group(1))
                if annotation.startswith("typing.Union[typing.Sequence") and isinstance(item, (list, tuple)):
                    item = [typed(nested, x, module) for x in item]
                else:
                    item = typed(nested, item, module)
        out[key] = item
    return typed_args(cls, out)


def _resource_group(
    parent: pulumi.Resource,
    name: str,
    location: str,
    tags: Mapping[str, str],
    existing: pulumi.Input[str] | None,
) -> tuple[resources.ResourceGroup | None, pulumi.Input[str]]:
    """A new resource group for the component (deleted with it), or the name of an existing one."""
    if existing is not None:
        return None, existing
    group = resources.ResourceGroup(
        f"{name}-rg", resources.ResourceGroupArgs(location=location, tags=dict(tags)), opts=child(parent)
    )
    return group, group.name


def _client_config(parent: pulumi.Resource) -> pulumi.Output[Any]:
    return authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=parent))


# --------------------------------------------------------------------------- storage


def storage_account_spec(
    *,
    resource_group_name: pulumi.Input[str],
    location: str,
    account_name: pulumi.Input[str],
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The one place the storage account settings live (store and queue both use it): StorageV2,
    LRS, HTTPS only, TLS 1.2+, no public blob access, no shared keys, Microsoft-managed keys with
    infrastructure encryption."""
    return {
        "resource_group_name": resource_group_name,
        "location": location,
        "account_name": account_name,
        "kind": "StorageV2",
        "sku": {"name": "Standard_LRS"},
        "access_tier": "Hot",
        "enable_https_traffic_only": True,
        "minimum_tls_version": "TLS1_2",
        "allow_blob_public_access": False,
        "allow_shared_key_access": False,
        "default_to_o_auth_authentication": True,
        "allow_cross_tenant_replication": False,
        "encryption": {
            "key_source": "Microsoft.Storage",
            "require_infrastructure_encryption": True,
            # Account-scoped keys for queues too (the default there is service-scoped), so one
            # customer-managed key could later cover both; fixed at creation like the line above.
            "services": {
                "blob": {"enabled": True, "key_type": "Account"},
                "queue": {"enabled": True, "key_type": "Account"},
            },
        },
        "tags": dict(tags),
    }


def _storage_extra(
    extra: Mapping[str, Any], location: str
) -> tuple[dict[str, Any], pulumi.Input[str] | None]:
    """`extra` minus `resource_group_name` (an existing group to use), both checked before any
    resource exists: a misspelled key fails here, not halfway through the graph."""
    extra = dict(extra)
    existing_rg = extra.pop("resource_group_name", None)
    if existing_rg is not None:
        existing_rg = _check_resource_group(existing_rg, "extra['resource_group_name']")
    probe = storage_account_spec(resource_group_name="rg", location=location, account_name="probe", tags={})
    typed(storage.StorageAccountArgs, merge_extra(probe, extra), storage)
    return extra, existing_rg


def secure_storage_account(
    parent: pulumi.Resource,
    name: str,
    *,
    resource_group_name: pulumi.Input[str],
    location: str,
    tags: Mapping[str, str],
    extra: Mapping[str, Any] | None,
) -> tuple[storage.StorageAccount, pulumi.Output[str]]:
    """A storage account with `storage_account_spec`'s settings (and `extra` on top) under `parent`.
    Returns the account and its globally unique name, as an Output that waits for the account."""
    account_name = _client_config(parent).subscription_id.apply(lambda sub: storage_account_name(name, sub))
    spec = storage_account_spec(
        resource_group_name=resource_group_name, location=location, account_name=account_name, tags=tags
    )
    kwargs = merge_extra(spec, extra)
    account = storage.StorageAccount(
        f"{name}-account", typed(storage.StorageAccountArgs, kwargs, storage), opts=child(parent)
    )
    resolved = pulumi.Output.all(account.id, kwargs["account_name"]).apply(lambda v: str(v[1]))
    return account, resolved


class AzureObjectStore(pulumi.ComponentResource):
    """A private blob container in its own locked-down storage account, versioned (BlobService
    properties) and with a lifecycle policy when `retention_days` is set. Output `url`
    (`az://<account>/<container>`). `extra` goes into the StorageAccount's arguments, except
    `resource_group_name`, which places everything in an existing resource group."""

    url: pulumi.Output[str]
    account_name: pulumi.Output[str]
    container_name: str
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    account: storage.StorageAccount
    blob_service: storage.BlobServiceProperties
    container: storage.BlobContainer
    lifecycle: storage.ManagementPolicy | None

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        location = resolve_location(args.region)
        extra, existing_rg = _storage_extra(args.extra, location)
        super().__init__("lepton:azure:ObjectStore", name, None, opts)
        cluster, env = cluster_env(args, name)
        tags = tags_for(cluster, env, args.tags)

        self.resource_group, rg = _resource_group(self, name, location, tags, existing_rg)
        self.resource_group_name = rg
        self.account, self.account_name = secure_storage_account(
            self, name, resource_group_name=rg, location=location, tags=tags, extra=extra
        )
        self.blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            typed(
                storage.BlobServicePropertiesArgs,
                {
                    "account_name": self.account_name,
                    "resource_group_name": rg,
                    "blob_services_name": "default",
                    "is_versioning_enabled": args.versioning,
                    "delete_retention_policy": {"enabled": True, "days": SOFT_DELETE_DAYS},
                    "container_delete_retention_policy": {"enabled": True, "days": SOFT_DELETE_DAYS},
                },
                storage,
            ),
            opts=child(self),
        )
        self.container_name = azure_slug(name)
        self.container = storage.BlobContainer(
            f"{name}-container",
            storage.BlobContainerArgs(
                account_name=self.account_name,
                resource_group_name=rg,
                container_name=self.container_name,
                public_access=storage.PublicAccess.NONE,
            ),
            opts=child(self, depends_on=[self.blob_service]),
        )
        self.lifecycle = None
        if args.retention_days is not None:
            self.lifecycle = self._lifecycle(name, rg, args.retention_days)
        container_name = self.container_name
        self.url = pulumi.Output.all(self.account_name, self.container.id).apply(
            lambda v: f"az://{v[0]}/{container_name}"
        )
        self.register_outputs({"url": self.url, "account_name": self.account_name})

    def _lifecycle(self, name: str, rg: pulumi.Input[str], days: int) -> storage.ManagementPolicy:
        # Current blobs older than `days`, and versions superseded more than `days` ago, are deleted,
        # in this container only (the account holds nothing else, but say so explicitly).
        policy = {
            "rules": [
                {
                    "name": "lepton-retention",
                    "type": "Lifecycle",
                    "enabled": True,
                    "definition": {
                        "filters": {"blob_types": ["blockBlob"], "prefix_match": [f"{self.container_name}/"]},
                        "actions": {
                            "base_blob": {"delete": {"days_after_modification_greater_than": days}},
                            "version": {"delete": {"days_after_creation_greater_than": days}},
                        },
                    },
                }
            ]
        }
        return storage.ManagementPolicy(
            f"{name}-lifecycle",
            typed(
                storage.ManagementPolicyArgs,
                {
                    "account_name": self.account_name,
                    "resource_group_name": rg,
                    "management_policy_name": "default",  # the only name Azure accepts
                    "policy": policy,
                },
                storage,
            ),
            opts=child(self, depends_on=[self.container]),
        )


class AzureJobQueue(pulumi.ComponentResource):
    """A storage queue and its `<queue>-poison` queue in their own locked-down storage account.
    Outputs `url` and `dead_letter_url` (`https://<account>.queue.core.windows.net/<queue>`). Azure
    has no server-side redrive: clients honour `visibility_timeout_s` and `max_receive_count` (stored
    as the queue's metadata) and move a message received too often to the poison queue."""

    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]
    account_name: pulumi.Output[str]
    queue_name: str
    poison_queue_name: str
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    account: storage.StorageAccount
    queue: storage.Queue
    poison_queue: storage.Queue

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        location = resolve_location(args.region)
        extra, existing_rg = _storage_extra(args.extra, location)
        super().__init__("lepton:azure:JobQueue", name, None, opts)
        cluster, env = cluster_env(args, name)
        tags = tags_for(cluster, env, args.tags)

        self.resource_group, rg = _resource_group(self, name, location, tags, existing_rg)
        self.resource_group_name = rg
        self.account, self.account_name = secure_storage_account(
            self, name, resource_group_name=rg, location=location, tags=tags, extra=extra
        )
        # Leave room for the suffix: queue names are at most 63 characters.
        self.queue_name = azure_slug(name, 63 - len(POISON_SUFFIX))
        self.poison_queue_name = self.queue_name + POISON_SUFFIX
        # Metadata names must be C# identifiers (no '-' or ':'); Azure stores them lowercase.
        self.queue = storage.Queue(
            f"{name}-jobs",
            storage.QueueArgs(
                account_name=self.account_name,
                resource_group_name=rg,
                queue_name=self.queue_name,
                metadata={
                    "lepton_cluster": cluster,
                    "lepton_visibility_timeout_s": str(args.visibility_timeout_s),
                    "lepton_max_receive_count": str(args.max_receive_count),
                    "lepton_poison_queue": self.poison_queue_name,
                },
            ),
            opts=child(self),
        )
        self.poison_queue = storage.Queue(
            f"{name}-poison",
            storage.QueueArgs(
                account_name=self.account_name,
                resource_group_name=rg,
                queue_name=self.poison_queue_name,
                metadata={"lepton_cluster": cluster, "lepton_poison_of": self.queue_name},
            ),
            opts=child(self),
        )
        self.url = self._url(self.queue, self.queue_name)
        self.dead_letter_url = self._url(self.poison_queue, self.poison_queue_name)
        self.register_outputs({"url": self.url, "dead_letter_url": self.dead_letter_url})

    def _url(self, queue: storage.Queue, queue_name: str) -> pulumi.Output[str]:
        return pulumi.Output.all(self.account_name, queue.id).apply(
            lambda v: f"https://{v[0]}.{QUEUE_ENDPOINT_SUFFIX}/{queue_name}"
        )


# --------------------------------------------------------------------------- network and identity


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
        # The VNet and public IPs are IPv4-only (and one NSG rule cannot mix address families).
        ssh_sources = ipv4_ssh_cidrs(allowed_ssh_cidrs, "azure")
        self.asg = azure_network.ApplicationSecurityGroup(
            f"{name}-nodes",
            azure_network.ApplicationSecurityGroupInitArgs(
                resource_group_name=rg, location=location, tags=dict(tags)
            ),
            opts=child(self),
        )
        pool = [azure_network.ApplicationSecurityGroupArgs(id=self.asg.id)]
        rules = [
            azure_network.SecurityRuleArgs(
                name="lepton-ssh",
                description="SSH from the allowed networks only",
                priority=PRIORITY_SSH,
                direction="Inbound",
                access="Allow",
                protocol="Tcp",
                source_address_prefixes=ssh_sources,
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
        self.nsg = azure_network.NetworkSecurityGroup(
            f"{name}-nsg",
            azure_network.NetworkSecurityGroupInitArgs(
                resource_group_name=rg, location=location, security_rules=rules, tags=dict(tags)
            ),
            opts=child(self),
        )
        self.nat_ip = None
        self.nat_gateway = None
        if existing_subnet_id is not None:
            self.vnet = None
            self.subnet = None
            self.subnet_id = existing_subnet_id
        else:
            if nat:
                self.nat_ip = azure_network.PublicIPAddress(
                    f"{name}-nat-ip",
                    azure_network.PublicIPAddressInitArgs(
                        resource_group_name=rg,
                        location=location,
                        sku=azure_network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
                        public_ip_allocation_method="Static",
                        public_ip_address_version="IPv4",
                        zones=zones,
                        tags=dict(tags),
                    ),
                    opts=child(self),
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
            self.subnet_id = self.subnet.id
        self.register_outputs({"subnet_id": self.subnet_id, "nsg_id": self.nsg.id})


class AzureNodeIdentity(pulumi.ComponentResource):
    """The nodes' user-assigned managed identity (or an existing one) and its role assignments,
    scoped to exactly the store's blob container and the queue (and its poison queue); no
    subscription- or resource-group-wide role."""

    identity: managedidentity.UserAssignedIdentity | None
    id: pulumi.Input[str]
    principal_id: pulumi.Input[str]
    client_id: pulumi.Input[str] | None
    role_assignments: list[authorization.RoleAssignment]

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        tags: Mapping[str, str],
        store: AzureObjectStore | None = None,
        queue: AzureJobQueue | None = None,
        existing: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:azure:NodeIdentity", name, None, opts)
        if existing is not None:
            self.identity = None
            self.id = existing["user_assigned_identity_id"]
            self.client_id = None
            if "principal_id" in existing:
                self.principal_id = existing["principal_id"]
            else:
                self.principal_id = self._lookup_principal(existing["user_assigned_identity_id"])
        else:
            self.identity = managedidentity.UserAssignedIdentity(
                f"{name}-identity",
                managedidentity.UserAssignedIdentityArgs(
                    resource_group_name=resource_group_name, location=location, tags=dict(tags)
                ),
                opts=child(self),
            )
            self.id = self.identity.id
            self.principal_id = self.identity.principal_id
            self.client_id = self.identity.client_id

        subscription = _client_config(self).subscription_id
        grants: list[tuple[str, pulumi.Input[str], str, str]] = []
        if store is not None:
            grants.append(
                ("blob", store.container.id, ROLE_BLOB_DATA_CONTRIBUTOR, "read/write the cluster's container")
            )
        if queue is not None:
            grants.append(
                ("queue", queue.queue.id, ROLE_QUEUE_DATA_CONTRIBUTOR, "send/receive/extend/ack jobs")
            )
            grants.append(
                (
                    "poison",
                    queue.poison_queue.id,
                    ROLE_QUEUE_DATA_CONTRIBUTOR,
                    "move, read and clear poisoned jobs",
                )
            )
        self.role_assignments = [
            authorization.RoleAssignment(
                f"{name}-{suffix}",
                authorization.RoleAssignmentArgs(
                    principal_id=self.principal_id,
                    # A new identity may not have replicated yet; naming the type skips the lookup.
                    principal_type="ServicePrincipal",
                    role_definition_id=role_definition_id(subscription, role),
                    scope=scope,
                    description=f"lepton nodes of {name}: {why}",
                ),
                opts=child(self),
            )
            for suffix, scope, role, why in grants
        ]
        self.register_outputs({"id": self.id, "principal_id": self.principal_id})

    def _lookup_principal(self, identity_id: str) -> pulumi.Output[str]:
        parts = identity_id.split("/")
        found = managedidentity.get_user_assigned_identity_output(
            resource_group_name=parts[4],
            resource_name=parts[-1],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        return found.principal_id


# --------------------------------------------------------------------------- host keys and boot


class AzureHostKeySecrets(pulumi.ComponentResource):
    """The pool's Key Vault (RBAC authorization, no access policies) with each node's SSH host
    private key as its own secret, so custom data never holds it (VM custom data is readable
    through the instance metadata service by every process on the node). Each secret is readable
    ("Key Vault Secrets User", scoped to that secret alone) only by its node's identity, which
    fetches it at first boot with an IMDS token. The vault's name carries a random suffix: Azure
    keeps a deleted vault's name for its soft-delete retention, so a recreated pool needs a new one."""

    vault: keyvault.Vault
    secrets: list[keyvault.Secret]
    readers: list[authorization.RoleAssignment]
    locations: list[pulumi.Output[Sequence[str]]]

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        tags: Mapping[str, str],
        private_keys: Sequence[pulumi.Input[str]],
        readers: Sequence[pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:azure:HostKeySecrets", name, None, opts)
        config = _client_config(self)
        suffix = random.RandomString(
            f"{name}-kv-suffix",
            random.RandomStringArgs(length=6, special=False, upper=False, numeric=True),
            opts=child(self),
        )
        vault_name = pulumi.Output.concat(
            compact_name(f"kv{name}", 18, salt=pulumi.get_stack()), suffix.result
        )
        self.vault = keyvault.Vault(
            f"{name}-kv",
            typed(
                keyvault.VaultArgs,
                {
                    "resource_group_name": resource_group_name,
                    "location": location,
                    "vault_name": vault_name,
                    "properties": {
                        "tenant_id": config.tenant_id,
                        "sku": {"family": "A", "name": "standard"},
                        "enable_rbac_authorization": True,
                        "soft_delete_retention_in_days": 7,  # Azure's minimum
                        "enabled_for_deployment": False,
                        "enabled_for_template_deployment": False,
                        "enabled_for_disk_encryption": False,
                    },
                    "tags": dict(tags),
                },
                keyvault,
            ),
            opts=child(self),
        )
        self.secrets, self.readers, self.locations = [], [], []
        subscription = config.subscription_id
        for i, (private_key, principal) in enumerate(zip(private_keys, readers, strict=True)):
            secret_name = f"node-{i}-host-key"
            secret = keyvault.Secret(
                f"{name}-{i}-host-key",
                keyvault.SecretArgs(
                    resource_group_name=resource_group_name,
                    vault_name=self.vault.name,
                    secret_name=secret_name,
                    properties=keyvault.SecretPropertiesArgs(
                        value=pulumi.Output.secret(private_key), content_type="application/x-openssh-key"
                    ),
                    tags=dict(tags),
                ),
                opts=child(self),
            )
            self.secrets.append(secret)
            self.readers.append(
                authorization.RoleAssignment(
                    f"{name}-{i}-host-key-reader",
                    authorization.RoleAssignmentArgs(
                        principal_id=principal,
                        principal_type="ServicePrincipal",
                        role_definition_id=role_definition_id(subscription, ROLE_KEY_VAULT_SECRETS_USER),
                        scope=secret.id,  # this secret alone, not the vault
                        description=f"lepton node {i} of {name}: read its own SSH host key",
                    ),
                    opts=child(self),
                )
            )
            # (vault URI, secret name), resolved once the secret exists.
            self.locations.append(
                pulumi.Output.all(self.vault.properties.vault_uri, secret.id).apply(
                    functools.partial(_location, secret_name)
                )
            )
        self.register_outputs({"vault": self.vault.id})


def _location(secret_name: str, values: list[Any]) -> list[str]:
    """(vault URI, secret name): the secret's id in `values` only makes the fetch wait for it."""
    return [str(values[0]), secret_name]


def host_key_fetch(location: Sequence[str]) -> str:
    """The `host_key_fetch` commands of an Azure node: `location` is (vault URI, secret name)."""
    vault_uri, secret_name = location
    return fetch_command("azure", vault_uri, secret_name)


STOP_PATH = "/usr/local/sbin/lepton-azure-stop"


# The HPC image has the driver, CUDA, NCCL and MPI but no torch: the default image's nodes install
# this pinned CUDA build into their own venv at first boot (cloud-init's final stage; `cloud-init
# status --wait` on a node returns once it is there), and the inventory names that venv's python
# (images.py). cu126 wheels carry their CUDA runtime and run on the image's 5xx driver.
TORCH_PIN = "torch==2.9.1+cu126"
TORCH_INDEX = "https://download.pytorch.org/whl/cu126"
VENV = "/opt/lepton/venv"
INSTALL_TORCH_PATH = "/usr/local/sbin/lepton-install-torch"
INSTALL_TORCH = (
    r"""#!/bin/sh
# lepton: a venv with a pinned CUDA build of torch (the HPC image has none). Idempotent.
set -u
venv="${LEPTON_VENV:-__VENV__}"
if "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "lepton: $venv already has torch"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q || true
apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-venv || exit 1
python3 -m venv "$venv" || exit 1
for try in 1 2 3; do
    if "$venv/bin/pip" install --no-cache-dir -q --extra-index-url __INDEX__ '__TORCH__' numpy; then
        "$venv/bin/python" -c 'import torch; print("lepton: torch", torch.__version__, "in", "'"$venv"'")'
        exit 0
    fi
    echo "lepton: pip install of __TORCH__ failed (try $try)" >&2
    sleep $((try * 20))
done
exit 1
""".replace("__VENV__", VENV)
    .replace("__INDEX__", TORCH_INDEX)
    .replace("__TORCH__", TORCH_PIN)
)


def azure_boot(*, spot: bool, install_torch: bool = True) -> CloudBoot:
    """Azure's additions to every node's cloud-init: the stop command (`azure_stop.py`) and a
    systemd drop-in that makes the watchdog run it instead of a guest power-off, which would
    leave the VM allocated and billed; and, for the default image, the torch venv."""
    action = "delete" if spot else "deallocate"
    dropin = f'[Service]\nEnvironment="LEPTON_POWEROFF={STOP_PATH} {action}"\n'
    files = [
        BootFile(STOP_PATH, "#!/usr/bin/env python3\n" + node_script("azure_stop.py") + "\n", "0755"),
        BootFile("/etc/systemd/system/lepton-watchdog.service.d/50-azure-stop.conf", dropin),
    ]
    if install_torch:
        files.append(BootFile(INSTALL_TORCH_PATH, INSTALL_TORCH, "0755"))
    return CloudBoot(files=tuple(files), runcmd=(INSTALL_TORCH_PATH,) if install_torch else ())


# --------------------------------------------------------------------------- the pool


class AzureGpuVmPool(pulumi.ComponentResource):
    """`nodes` GPU VMs (size from the catalog) in the pool's subnet behind its NSG, each with a
    Standard static public IP only when SSH is allowed from outside internal address space, password
    login off and the one SSH key for `user`, the nodes' managed identity, a pinned ed25519 host key
    and the watchdog installed by cloud-init, a Premium OS disk deleted with the VM, and Spot with
    eviction Delete when `spot`. `extra` is merged into every VirtualMachine's arguments."""

    entry: CatalogEntry
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    network: AzureNetwork
    identity: AzureNodeIdentity
    identities: list[AzureNodeIdentity]
    stop_role: authorization.RoleDefinition
    host_key_secrets: AzureHostKeySecrets
    stop_grants: list[authorization.RoleAssignment]
    proximity_group: compute.ProximityPlacementGroup | None
    availability_set: compute.AvailabilitySet | None
    host_keys: list[Any]
    public_ips: list[azure_network.PublicIPAddress]
    nics: list[azure_network.NetworkInterface]
    instances: list[compute.VirtualMachine]
    nodes: list[PoolNode]

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: Any = None,
        queue: Any = None,
        encryption_at_host: bool = False,
    ) -> None:
        # Azure-specific shapes first: their messages are more precise than the neutral ones.
        existing_net = check_network_mapping(args.network)
        existing_identity = check_identity_mapping(args.identity)
        image_reference = parse_image(args.image)
        zone = check_zone(args.zone)
        location = resolve_location(args.region)
        # The catalog row for the location actually used (the stack's default when `region` is
        # unset); the caller's spec is left as it was.
        self.entry = entry = lookup("azure", args.accelerator, args.gpus_per_node, location)
        check_admin_username(args.user)
        ssh_sources = ipv4_ssh_cidrs(args.allowed_ssh_cidrs, "azure")
        store, queue = unwrap(store), unwrap(queue)
        for given, cls, what in ((store, AzureObjectStore, "store"), (queue, AzureJobQueue, "queue")):
            if given is not None and not isinstance(given, cls):
                raise ConfigError(
                    f"{what} is a {type(given).__name__}; an Azure pool can only be granted an Azure {what} "
                    f"({cls.__name__} or a neutral one with cloud='azure')"
                )
        if zone is not None and needs_infiniband_group(entry, args.nodes):
            raise ConfigError(
                f"zone is {zone!r}, but {args.nodes} {entry.instance_type} nodes need one availability set "
                "to share an InfiniBand network, and an availability set cannot be zonal: leave zone unset"
            )
        zones = [zone] if zone else None
        vm_spec = functools.partial(
            self._vm_spec,
            args,
            entry,
            location=location,
            image_reference=image_reference,
            zones=zones,
            encryption_at_host=encryption_at_host,
        )
        # A misspelled `extra` key fails here, before any resource exists.
        probe = vm_spec(
            rg="rg", computer_name="probe", custom_data="", nic_id="nic", identity_id="id", tags={}
        )
        typed(compute.VirtualMachineArgs, merge_extra(probe, args.extra), compute)
        super().__init__("lepton:azure:GpuVmPool", name, None, opts)
        cluster, env = cluster_env(args, name)
        tags, node_tags = pool_tags(args, cluster, env)

        self.resource_group, rg = _resource_group(
            self, name, location, tags, existing_net.get("resource_group_name")
        )
        self.resource_group_name = rg
        public = ssh_needs_public_ip(ssh_sources)
        self.network = AzureNetwork(
            name,
            resource_group_name=rg,
            location=location,
            allowed_ssh_cidrs=ssh_sources,
            tags=tags,
            existing_subnet_id=existing_net.get("subnet_id"),
            nat=not public,
            zones=zones,
            opts=child(self),
        )
        self.proximity_group, self.availability_set = None, None
        if needs_infiniband_group(entry, args.nodes):
            # InfiniBand joins only VMs of one availability set (or scale set): without it each ND
            # node sits on its own IB fabric and NCCL falls back to TCP. The proximity placement
            # group keeps them in one datacenter; one fault domain keeps them on one IB network.
            # Azure's documentation (read 2026-12-05): CycleCloud's "Availability Sets" how-to
            # (learn.microsoft.com/azure/cyclecloud/how-to/availability-sets) uses an availability
            # set to put VMs "in the same Infiniband group"; a scale set does the same only within
            # one placement group (single_placement_group). Separate VMs, as here, take the set.
            self.proximity_group = compute.ProximityPlacementGroup(
                f"{name}-ppg",
                compute.ProximityPlacementGroupArgs(
                    resource_group_name=rg,
                    location=location,
                    proximity_placement_group_type="Standard",
                    tags=dict(tags),
                ),
                opts=child(self),
            )
            self.availability_set = compute.AvailabilitySet(
                f"{name}-ib",
                compute.AvailabilitySetArgs(
                    resource_group_name=rg,
                    location=location,
                    sku=compute.SkuArgs(name="Aligned"),  # managed disks
                    platform_fault_domain_count=1,
                    platform_update_domain_count=1,
                    proximity_placement_group=compute.SubResourceArgs(id=self.proximity_group.id),
                    tags=dict(tags),
                ),
                opts=child(self),
            )
        # One identity per node, the VM's only one (so every tool on the node gets it from IMDS
        # without a client id): its host key secret and the right to stop its own VM are that
        # node's alone. An existing identity given in `identity` is shared by all nodes instead.
        self.identities = node_identities(
            args.nodes,
            existing_identity,
            lambda i: AzureNodeIdentity(
                name if i is None else f"{name}-{i}",
                resource_group_name=rg,
                location=location,
                tags=tags,
                store=store,
                queue=queue,
                existing=existing_identity,
                opts=child(self),
            ),
        )
        self.identity = self.identities[0]
        subscription = _client_config(self).subscription_id
        rg_id = (
            self.resource_group.id
            if self.resource_group is not None
            else pulumi.Output.concat("/subscriptions/", subscription, "/resourceGroups/", rg)
        )
        self.stop_role = self._stop_role(name, rg_id, subscription, spot=args.spot)
        self.host_keys = node_host_keys(name, args.nodes, self)
        self.host_key_secrets = AzureHostKeySecrets(
            name,
            resource_group_name=rg,
            location=location,
            tags=tags,
            private_keys=[k.private_key_openssh for k in self.host_keys],
            readers=[identity.principal_id for identity in self.identities],
            opts=child(self),
        )
        # `latest` takes the newest version when a VM is created: running nodes keep theirs.
        _, keep_image = new_node_image(
            "azure",
            args.image or DEFAULT_IMAGE,
            moving=image_reference.get("version", "").lower() == "latest",
            image_property="storageProfile.imageReference",
            source=args.image or DEFAULT_IMAGE,
            parent=self,
        )
        # The venv only for the default image: another image brings its own interpreter (`python`).
        boot = azure_boot(
            spot=args.spot, install_torch=image_row("azure", args.image) == default_image("azure")
        )
        stem = azure_slug(name, 56)

        self.public_ips, self.nics, self.instances, self.stop_grants = [], [], [], []

        def launch(i: int, user_data: pulumi.Output[str]) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
            pip = None
            if public:
                pip = azure_network.PublicIPAddress(
                    f"{name}-ip-{i}",
                    azure_network.PublicIPAddressInitArgs(
                        resource_group_name=rg,
                        location=location,
                        # Standard SKU: closed to inbound unless an NSG allows it; static so the
                        # inventory's address stays valid across VM restarts.
                        sku=azure_network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
                        public_ip_allocation_method="Static",
                        public_ip_address_version="IPv4",
                        zones=zones,
                        tags=dict(tags),
                    ),
                    opts=child(self),
                )
                self.public_ips.append(pip)
            nic = azure_network.NetworkInterface(
                f"{name}-nic-{i}",
                azure_network.NetworkInterfaceArgs(
                    resource_group_name=rg,
                    location=location,
                    network_security_group=azure_network.NetworkSecurityGroupArgs(id=self.network.nsg.id),
                    # Every catalog size supports accelerated networking (SR-IOV): lower latency for
                    # NCCL/gloo between nodes.
                    enable_accelerated_networking=True,
                    ip_configurations=[
                        azure_network.NetworkInterfaceIPConfigurationArgs(
                            name="primary",
                            primary=True,
                            subnet=azure_network.SubnetArgs(id=self.network.subnet_id),
                            private_ip_allocation_method="Dynamic",
                            public_ip_address=azure_network.PublicIPAddressArgs(id=pip.id) if pip else None,
                            application_security_groups=[
                                azure_network.ApplicationSecurityGroupArgs(id=self.network.asg.id)
                            ],
                        )
                    ],
                    tags=dict(tags),
                ),
                opts=child(self),
            )
            self.nics.append(nic)
            base = vm_spec(
                rg=rg,
                computer_name=f"{stem}-{i}",
                custom_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode("ascii")),
                nic_id=nic.id,
                identity_id=self.identities[i].id,
                tags=node_tags,
            )
            if self.availability_set is not None and self.proximity_group is not None:
                base["availability_set"] = {"id": self.availability_set.id}
                base["proximity_placement_group"] = {"id": self.proximity_group.id}
            vm = compute.VirtualMachine(
                f"{name}-{i}",
                typed(compute.VirtualMachineArgs, merge_extra(base, args.extra), compute),
                # custom_data cannot change in place: a new cloud-init means a new VM, and the old one
                # must let go of the NIC first. Created once its host key is readable by its identity.
                opts=child(
                    self,
                    delete_before_replace=True,
                    # After the stop role too: a new custom role definition takes a while to become
                    # visible to role assignments (RoleDefinitionDoesNotExist), and the VM's minutes
                    # of provisioning lie between the two.
                    depends_on=[
                        self.host_key_secrets.secrets[i],
                        self.host_key_secrets.readers[i],
                        self.stop_role,
                    ],
                    ignore_changes=keep_image,
                ),
            )
            self.instances.append(vm)
            self.stop_grants.append(
                authorization.RoleAssignment(
                    f"{name}-{i}-stop",
                    authorization.RoleAssignmentArgs(
                        principal_id=self.identities[i].principal_id,
                        # Skips Entra ID's look-up of a just-created identity (PrincipalNotFound).
                        principal_type="ServicePrincipal",
                        role_definition_id=self.stop_role.id,
                        scope=vm.id,  # this VM alone
                        # A stable name: a re-run after a replication-delay failure PUTs the same
                        # assignment again instead of colliding with one Azure did create.
                        role_assignment_name=subscription.apply(
                            lambda sub: stack_guid(sub, name, "stop", str(i))
                        ),
                        description=f"lepton watchdog of {name} node {i}: stop this VM's bill when idle",
                    ),
                    opts=child(self, depends_on=[self.stop_role, vm]),
                )
            )
            private_ip = nic.ip_configurations.apply(
                lambda cfgs: str(cfgs[0].private_ip_address) if cfgs else ""
            )
            host = pip.ip_address.apply(lambda a: str(a)) if pip else private_ip
            return host, private_ip

        self.nodes = launch_nodes(
            args,
            cloud="azure",
            cluster=cluster,
            host_keys=self.host_keys,
            fetch=[url.apply(host_key_fetch) for url in self.host_key_secrets.locations],
            launch=launch,
            boot=boot,
        )
        self.register_outputs(pool_outputs(self.nodes, vm_size=entry.instance_type, location=location))

    def _stop_role(
        self, name: str, rg_id: pulumi.Input[str], subscription: pulumi.Output[str], *, spot: bool
    ) -> authorization.RoleDefinition:
        """The watchdog's custom role: deallocate a VM (and delete it, for Spot), nothing else; no
        built-in role is that narrow (Virtual Machine Contributor could also run commands as root
        on the VM). Defined for the resource group, assigned per node on that node's VM only."""
        actions = [ACTION_DEALLOCATE] + ([ACTION_DELETE] if spot else [])
        # Custom role names are unique in the whole tenant: name, stack and subscription in it.
        role_name = subscription.apply(
            lambda sub: (
                f"lepton vm stop {short_hash(sub, pulumi.get_project(), pulumi.get_stack(), name, length=12)}"
            )
        )
        # The definition's id is a GUID of our choosing; a stable one keeps re-runs on the same role.
        role_id = subscription.apply(lambda sub: stack_guid(sub, name))
        return authorization.RoleDefinition(
            f"{name}-stop-role",
            authorization.RoleDefinitionArgs(
                scope=rg_id,
                role_definition_id=role_id,
                role_name=role_name,
                role_type="CustomRole",
                description="lepton watchdog: stop the bill of the idle VM this role is assigned on",
                permissions=[authorization.PermissionArgs(actions=actions)],
                assignable_scopes=[rg_id],
            ),
            opts=child(self),
        )

    @staticmethod
    def _vm_spec(
        args: GpuVmPoolArgs,
        entry: CatalogEntry,
        *,
        rg: pulumi.Input[str],
        location: str,
        computer_name: str,
        custom_data: pulumi.Input[str],
        image_reference: Mapping[str, str],
        nic_id: pulumi.Input[str],
        identity_id: pulumi.Input[str],
        tags: Mapping[str, str],
        zones: list[str] | None,
        encryption_at_host: bool,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "resource_group_name": rg,
            "location": location,
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
                            {
                                "path": f"/home/{args.user}/.ssh/authorized_keys",
                                "key_data": args.ssh_public_key,
                            }
                        ]
                    },
                },
            },
            "storage_profile": {
                "image_reference": dict(image_reference),
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
        if zones:
            spec["zones"] = zones
        return spec


def check_pool_args(args: GpuVmPoolArgs) -> None:
    """Azure's own pool checks, which register nothing (the neutral layer runs them before a
    cluster's first resource): location, zone number, image URN, admin user name and the
    `network`/`identity` mappings. AzureGpuVmPool repeats them for direct users."""
    check_network_mapping(args.network)
    check_identity_mapping(args.identity)
    parse_image(args.image)
    check_zone(args.zone)
    resolve_location(args.region)
    check_admin_username(args.user)
