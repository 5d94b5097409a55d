"""What every Azure part addresses resources with (Azure Resource Manager): the subscription and
tenant of the deployment, resource groups, built-in role ids, GUIDs of our choosing, and names
Azure accepts. The parts (store, queue, network, identity, secrets, pool) import these instead of
repeating them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.resources as resources

from lepton_infra.components.common import child, compact_name
from lepton_infra.errors import ConfigError

# Built-in role definition ids (the same GUIDs in every tenant).
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"  # read/write/delete blobs
# send, receive, update (extend visibility), delete, peek, clear messages; read queue metadata
ROLE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"  # read secret values

_RG_RE = re.compile(r"^[-\w._()]{1,89}[-\w_()]$")


def client_config(parent: pulumi.Resource) -> pulumi.Output[Any]:
    """The deployment's subscription and tenant (an invoke: no resource)."""
    return authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=parent))


def check_resource_group(value: object, field_name: str) -> pulumi.Input[str]:
    """An existing resource group's name as given in `field_name`, checked against Azure's rules."""
    if isinstance(value, pulumi.Output):
        return value  # another resource group's name, known at deploy time (e.g. `rg.name`)
    if not isinstance(value, str) or not _RG_RE.match(value):
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: an existing resource group name (1-90 letters, digits, "
            "'_', '-', '.', '(' or ')', not ending in '.')"
        )
    return value


def resource_group(
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


def stack_guid(subscription: str, *parts: str) -> str:
    """A GUID of our choosing, stable for this subscription, project, stack and `parts`: ARM names
    role definitions and assignments by GUID, and a stable one makes a re-run reach the same one."""
    key = "/".join((subscription, pulumi.get_project(), pulumi.get_stack(), *parts))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lepton:{key}"))


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    """The full id of role definition `role` (a GUID) in the subscription."""
    return pulumi.Output.concat(
        "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role
    )


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


def grant_role(
    parent: pulumi.Resource,
    resource_name: str,
    *,
    principal_id: pulumi.Input[str],
    role: pulumi.Input[str],
    scope: pulumi.Input[str],
    description: str,
    assignment_name: pulumi.Input[str] | None = None,
    opts: pulumi.ResourceOptions | None = None,
) -> authorization.RoleAssignment:
    """Role definition `role` (its full id) for `principal_id` on `scope` alone. The principal type
    is named: a just-created identity may not have replicated to Entra ID yet, and naming it skips
    the look-up that would fail (PrincipalNotFound)."""
    return authorization.RoleAssignment(
        resource_name,
        authorization.RoleAssignmentArgs(
            principal_id=principal_id,
            principal_type="ServicePrincipal",
            role_definition_id=role,
            scope=scope,
            description=description,
            role_assignment_name=assignment_name,
        ),
        opts=opts or child(parent),
    )
