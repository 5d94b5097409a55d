"""What a node's identity is and may do: `AzureNodeIdentity` (a user-assigned managed identity, or
an existing one, with data roles on exactly the cluster's container and queues), and the
watchdog's right to stop its own VM (`stop_role`, `stop_grant`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.compute as compute
import pulumi_azure_native.managedidentity as managedidentity

from lepton_infra.components.azure.arm import (
    ROLE_BLOB_DATA_CONTRIBUTOR,
    ROLE_QUEUE_DATA_CONTRIBUTOR,
    client_config,
    grant_role,
    role_definition_id,
    stack_guid,
)
from lepton_infra.components.common import child, short_hash

if TYPE_CHECKING:
    from lepton_infra.components.azure.queue import AzureJobQueue
    from lepton_infra.components.azure.store import AzureObjectStore

# The watchdog's only rights: deallocate its own VM (Spot: delete it; a deleted VM bills nothing).
ACTION_DEALLOCATE = "Microsoft.Compute/virtualMachines/deallocate/action"
ACTION_DELETE = "Microsoft.Compute/virtualMachines/delete"


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

        subscription = client_config(self).subscription_id
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
            grant_role(
                self,
                f"{name}-{suffix}",
                principal_id=self.principal_id,
                role=role_definition_id(subscription, role),
                scope=scope,
                description=f"lepton nodes of {name}: {why}",
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


def stop_role(
    parent: pulumi.Resource,
    name: str,
    rg_id: pulumi.Input[str],
    subscription: pulumi.Output[str],
    *,
    spot: bool,
) -> authorization.RoleDefinition:
    """The watchdog's custom role: deallocate a VM (and delete it, for Spot), nothing else; no
    built-in role is that narrow (Virtual Machine Contributor could also run commands as root on
    the VM). Defined for the resource group, assigned per node on that node's VM only."""
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
        opts=child(parent),
    )


def stop_grant(
    parent: pulumi.Resource,
    name: str,
    i: int,
    *,
    principal_id: pulumi.Input[str],
    role: authorization.RoleDefinition,
    vm: compute.VirtualMachine,
    subscription: pulumi.Output[str],
) -> authorization.RoleAssignment:
    """Node `i`'s identity the stop role on its own VM alone."""
    return grant_role(
        parent,
        f"{name}-{i}-stop",
        principal_id=principal_id,
        role=role.id,
        scope=vm.id,  # this VM alone
        description=f"lepton watchdog of {name} node {i}: stop this VM's bill when idle",
        # A stable name: a re-run after a replication-delay failure PUTs the same assignment again
        # instead of colliding with one Azure did create.
        assignment_name=subscription.apply(lambda sub: stack_guid(sub, name, "stop", str(i))),
        opts=child(parent, depends_on=[role, vm]),
    )
