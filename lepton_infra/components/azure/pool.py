"""`AzureGpuVmPool`: Azure's hooks of the one pool sequence (`components/pool.py` drives it). Each
hook is short and hands the work to the module that knows the part: `plan`, `network`, `secrets`,
`identity`, `instance`."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.compute as compute
import pulumi_azure_native.network as azure_network
import pulumi_azure_native.resources as resources
import pulumi_tls as tls

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.azure.arm import client_config, resource_group
from lepton_infra.components.azure.identity import AzureNodeIdentity, stop_grant, stop_role
from lepton_infra.components.azure.instance import Placement, infiniband_placement, node_vm
from lepton_infra.components.azure.network import AzureNetwork, node_addresses, node_interface
from lepton_infra.components.azure.plan import AzurePlan, plan_azure_pool
from lepton_infra.components.azure.queue import AzureJobQueue
from lepton_infra.components.azure.secrets import AzureHostKeySecrets
from lepton_infra.components.azure.store import AzureObjectStore
from lepton_infra.components.common import PoolNode, child, new_node_image
from lepton_infra.components.pool import PoolPlan, build_pool, granted

Plan = PoolPlan[AzurePlan]


class AzureGpuVmPool(pulumi.ComponentResource):
    """`nodes` GPU VMs (size from the catalog) in the pool's subnet behind its NSG, each with a
    Standard static public IP only when SSH is allowed from outside internal address space, password
    login off and the one SSH key for `user`, its own managed identity, a pinned ed25519 host key
    and the watchdog installed by cloud-init, a Premium OS disk deleted with the VM, and Spot with
    eviction Delete when `spot`. `extra` is merged into every VirtualMachine's arguments. `identity`
    is the first node's identity (as it always was for users)."""

    type_token: ClassVar[str] = "lepton:azure:GpuVmPool"

    entry: CatalogEntry
    pool_plan: Plan
    store: AzureObjectStore | None  # the only data the nodes' identities may touch
    queue: AzureJobQueue | None
    encryption_at_host: bool
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    network: AzureNetwork
    identity: AzureNodeIdentity
    identities: list[AzureNodeIdentity]
    stop_role: authorization.RoleDefinition
    host_key_secrets: AzureHostKeySecrets
    stop_grants: list[authorization.RoleAssignment]
    placement: Placement | None  # the InfiniBand availability set of a multi-node ND pool
    proximity_group: compute.ProximityPlacementGroup | None
    availability_set: compute.AvailabilitySet | None
    host_keys: list[tls.PrivateKey]
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
        plan: Plan | None = None,
        encryption_at_host: bool = False,
    ) -> None:
        self.store = granted("store", store, AzureObjectStore, "azure")
        self.queue = granted("queue", queue, AzureJobQueue, "azure")
        self.encryption_at_host = encryption_at_host
        self.public_ips, self.nics, self.instances, self.stop_grants = [], [], [], []
        self.nodes = build_pool(self, name, args, opts, plan)
        self.entry = self.pool_plan.entry

    @classmethod
    def plan(cls, name: str, args: GpuVmPoolArgs) -> Plan:
        return plan_azure_pool(name, args)

    def build_network(self, plan: Plan) -> None:
        """The pool's resource group (or the existing one `network` names) first, since everything
        lives in one; then its network, with the InfiniBand placement ND pools need."""
        az = plan.cloud
        self.resource_group, self.resource_group_name = resource_group(
            self, plan.name, az.location, plan.tags, az.resource_group_name
        )
        self.network = AzureNetwork(
            plan.name,
            resource_group_name=self.resource_group_name,
            location=az.location,
            allowed_ssh_cidrs=plan.ssh_sources,
            tags=plan.tags,
            existing_subnet_id=az.subnet_id,
            nat=not plan.public,
            zones=az.zones,
            opts=child(self),
        )
        self.placement = None
        if az.infiniband:
            self.placement = infiniband_placement(
                self, plan.name, rg=self.resource_group_name, location=az.location, tags=plan.tags
            )
        self.proximity_group = self.placement.proximity_group if self.placement else None
        self.availability_set = self.placement.availability_set if self.placement else None

    def store_host_keys(self, plan: Plan, host_keys: Sequence[tls.PrivateKey]) -> None:
        self.host_key_secrets = AzureHostKeySecrets(
            plan.name,
            resource_group_name=self.resource_group_name,
            location=plan.cloud.location,
            tags=plan.tags,
            private_keys=[k.private_key_openssh for k in host_keys],
            opts=child(self),
        )

    def make_identity(self, plan: Plan, i: int | None) -> AzureNodeIdentity:
        """Node `i`'s identity, the VM's only one (so every tool on the node gets it from IMDS
        without a client id): its host key secret and the right to stop its own VM are its alone."""
        return AzureNodeIdentity(
            plan.name if i is None else f"{plan.name}-{i}",
            resource_group_name=self.resource_group_name,
            location=plan.cloud.location,
            tags=plan.tags,
            store=self.store,
            queue=self.queue,
            existing=plan.shared_identity,
            opts=child(self),
        )

    def grant_host_keys(self, plan: Plan, identities: Sequence[AzureNodeIdentity]) -> list[pulumi.Input[str]]:
        """Each node's host key secret readable by its identity alone, and the watchdog's stop role
        (assigned per VM in `launch`, once the VM exists)."""
        self.identity = identities[0]
        rg_id = (
            self.resource_group.id
            if self.resource_group is not None
            else pulumi.Output.concat(
                "/subscriptions/", self._subscription, "/resourceGroups/", self.resource_group_name
            )
        )
        self.stop_role = stop_role(self, plan.name, rg_id, self._subscription, spot=plan.args.spot)
        return list(self.host_key_secrets.grant_readers([identity.principal_id for identity in identities]))

    def launch(
        self, plan: Plan, i: int, user_data: pulumi.Output[str]
    ) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
        network = self.network
        pip, nic = node_interface(self, plan, i, network, rg=self.resource_group_name)
        if pip is not None:
            self.public_ips.append(pip)
        self.nics.append(nic)
        secrets = self.host_key_secrets
        vm = node_vm(
            self,
            plan,
            i,
            user_data,
            rg=self.resource_group_name,
            nic_id=nic.id,
            identity_id=self.identities[i].id,
            placement=self.placement,
            encryption_at_host=self.encryption_at_host,
            # Created once its host key is readable by its identity; after the stop role too: a new
            # custom role definition takes a while to become visible to role assignments
            # (RoleDefinitionDoesNotExist), and the VM's minutes of provisioning lie between the two.
            depends_on=[secrets.secrets[i], secrets.readers[i], self.stop_role],
            ignore_changes=self._keep_image,
        )
        self.instances.append(vm)
        self.stop_grants.append(
            stop_grant(
                self,
                plan.name,
                i,
                principal_id=self.identities[i].principal_id,
                role=self.stop_role,
                vm=vm,
                subscription=self._subscription,
            )
        )
        return node_addresses(pip, nic)

    def own_outputs(self, plan: Plan) -> Mapping[str, Any]:
        return {"vm_size": plan.entry.instance_type, "location": plan.cloud.location}

    @functools.cached_property
    def _subscription(self) -> pulumi.Output[str]:
        """The deployment's subscription id (one invoke per pool)."""
        return client_config(self).subscription_id

    @functools.cached_property
    def _keep_image(self) -> list[str]:
        """The VMs' `ignore_changes`, decided (and the image new nodes boot logged) once, at the
        first launch: `latest` takes the newest version when a VM is created, and running nodes
        keep theirs."""
        az = self.pool_plan.cloud
        _, keep = new_node_image(
            "azure",
            az.image,
            moving=az.image_moves,
            image_property="storageProfile.imageReference",
            source=az.image,
            parent=self,
        )
        return keep
