"""`AzureObjectStore`: a private, versioned blob container in its own locked-down storage account.

`force_destroy` has no Azure counterpart: deleting a storage account deletes its contents. Blob and
container soft delete (7 days) protect against deleted blobs, not against `pulumi destroy`."""

from __future__ import annotations

import pulumi
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage

from lepton_infra.components.args import ObjectStoreArgs
from lepton_infra.components.azure.account import account_home, account_inputs
from lepton_infra.components.azure.arm import azure_slug
from lepton_infra.components.common import child, typed_args

SOFT_DELETE_DAYS = 7


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
        inputs = account_inputs(args)  # a bad location or `extra` fails before anything is registered
        super().__init__("lepton:azure:ObjectStore", name, None, opts)
        home = account_home(self, name, args, inputs)
        self.resource_group, self.resource_group_name = home.resource_group, home.resource_group_name
        self.account, self.account_name = home.account, home.account_name
        rg = home.resource_group_name
        self.blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            typed_args(
                storage.BlobServicePropertiesArgs,
                {
                    "account_name": self.account_name,
                    "resource_group_name": rg,
                    "blob_services_name": "default",
                    "is_versioning_enabled": args.versioning,
                    "delete_retention_policy": {"enabled": True, "days": SOFT_DELETE_DAYS},
                    "container_delete_retention_policy": {"enabled": True, "days": SOFT_DELETE_DAYS},
                },
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
            typed_args(
                storage.ManagementPolicyArgs,
                {
                    "account_name": self.account_name,
                    "resource_group_name": rg,
                    "management_policy_name": "default",  # the only name Azure accepts
                    "policy": policy,
                },
            ),
            opts=child(self, depends_on=[self.container]),
        )
