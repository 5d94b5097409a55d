"""The locked-down storage account a store or a queue lives in (each gets its own), its settings in
one place, and the store's and queue's `extra` checked before any resource exists.

Choices worth knowing (each can be changed through `extra`):
- Storage accounts refuse shared-key (account key / SAS) access. Everything here is created through
  ARM, and the nodes authenticate with their managed identity (Azure AD), so no key is ever needed;
  an account key would be a bearer secret for the whole account that bypasses the role assignments
  on the container and queues. Use `az storage ... --auth-mode login` (with a data role of your
  own) from your laptop, or pass `extra={"allow_shared_key_access": True}` if a tool can only use keys.
- Storage encryption: Microsoft-managed keys (Azure always encrypts at rest) plus infrastructure
  (double) encryption, which can only be chosen when the account is created."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage

from lepton_infra.components.azure.arm import (
    check_resource_group,
    client_config,
    resource_group,
    storage_account_name,
)
from lepton_infra.components.azure.plan import resolve_location
from lepton_infra.components.common import child, cluster_env, merge_extra, tags_for, typed_args


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


def storage_extra(extra: Mapping[str, Any], location: str) -> tuple[dict[str, Any], pulumi.Input[str] | None]:
    """`extra` minus `resource_group_name` (an existing group to use), both checked before any
    resource exists: a misspelled key fails here, not halfway through the graph."""
    extra = dict(extra)
    existing_rg = extra.pop("resource_group_name", None)
    if existing_rg is not None:
        existing_rg = check_resource_group(existing_rg, "extra['resource_group_name']")
    probe = storage_account_spec(resource_group_name="rg", location=location, account_name="probe", tags={})
    typed_args(storage.StorageAccountArgs, merge_extra(probe, extra))
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
    account_name = client_config(parent).subscription_id.apply(lambda sub: storage_account_name(name, sub))
    spec = storage_account_spec(
        resource_group_name=resource_group_name, location=location, account_name=account_name, tags=tags
    )
    kwargs = merge_extra(spec, extra)
    account = storage.StorageAccount(
        f"{name}-account", typed_args(storage.StorageAccountArgs, kwargs), opts=child(parent)
    )
    resolved = pulumi.Output.all(account.id, kwargs["account_name"]).apply(lambda v: str(v[1]))
    return account, resolved


@dataclass(frozen=True)
class AccountInputs:
    """A store's or queue's checked inputs, decided before the component registers anything."""

    location: str
    extra: dict[str, Any]  # for the StorageAccount
    existing_resource_group: pulumi.Input[str] | None


@dataclass(frozen=True)
class AccountHome:
    """Where a store's or queue's data lives: its cluster tags, resource group and storage account."""

    cluster: str
    tags: dict[str, str]
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    account: storage.StorageAccount
    account_name: pulumi.Output[str]


def account_inputs(args: Any) -> AccountInputs:
    """The location and `extra` of a store's or queue's spec, checked (a bad one raises here)."""
    location = resolve_location(args.region)
    extra, existing = storage_extra(args.extra, location)
    return AccountInputs(location, extra, existing)


def account_home(parent: pulumi.Resource, name: str, args: Any, inputs: AccountInputs) -> AccountHome:
    """The resource group (new, or the existing one `extra` names) and the storage account of the
    store or queue `parent`, tagged with its cluster and env."""
    cluster, env = cluster_env(args, name)
    tags = tags_for(cluster, env, args.tags)
    group, rg = resource_group(parent, name, inputs.location, tags, inputs.existing_resource_group)
    account, account_name = secure_storage_account(
        parent, name, resource_group_name=rg, location=inputs.location, tags=tags, extra=inputs.extra
    )
    return AccountHome(cluster, tags, group, rg, account, account_name)
