"""`GcpGpuVmPool`: GCP's hooks for the neutral pool sequence (`components/pool.py: build_pool`), each
a few lines that hand over to the module doing that part (plan, network, secrets, identity, instance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pulumi
import pulumi_tls as tls
from pulumi_gcp import compute

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.common import PoolNode, child, gcp_labels
from lepton_infra.components.gcp.apis import POOL_APIS, enable_apis
from lepton_infra.components.gcp.identity import GcpNodeIdentity
from lepton_infra.components.gcp.image import boot_image
from lepton_infra.components.gcp.instance import instance_args, instance_spec, node_addresses
from lepton_infra.components.gcp.names import gcp_slug, host_key_secret_id, node_tag
from lepton_infra.components.gcp.network import COMPACT_PLACEMENT_FAMILIES, GcpNetwork, compact_placement
from lepton_infra.components.gcp.plan import GcpPlan, plan_pool
from lepton_infra.components.gcp.queue import GcpJobQueue
from lepton_infra.components.gcp.secrets import GcpHostKeySecret
from lepton_infra.components.gcp.store import GcpObjectStore
from lepton_infra.components.pool import PoolPlan, build_pool, granted


class GcpGpuVmPool(pulumi.ComponentResource):
    """`nodes` Compute Engine instances with `gpus_per_node` x `accelerator` each (machine type from
    the catalog; N1 rows get the GPUs attached as guest accelerators, g2/a2/a3 bundle them), in their
    own network unless one is given, running as a dedicated service account allowed exactly `store`
    and `queue`, booting with cloud-init that installs the `lepton` user, the node's pinned host key
    and the idle/lifetime watchdog.

    Secure defaults: GPUs force `on_host_maintenance=TERMINATE` (and no automatic restart), shielded
    VM with vTPM and integrity monitoring, OS Login off and project-wide SSH keys blocked (the only
    key is the one cloud-init installs), an external IP only when SSH is allowed from outside
    internal address space (otherwise the nodes reach out through Cloud NAT and Private Google
    Access, and are reached through a VPN or a jump host). Multi-node A100/H100 pools (a2/a3) get a
    compact placement policy, so NCCL's traffic between nodes stays on one low-latency network
    (it names the exact node count, as GCE requires, so changing `nodes` there replaces the nodes).
    `network={"subnetwork": <self link>}` puts the nodes in an existing subnet (egress is then that
    network's own business).

    Secure Boot is off on these GPU nodes: with it on, the kernel loads only modules signed by a key
    in the VM's UEFI database, and the NVIDIA driver that Deep Learning VM images carry or install at
    first boot (`install-nvidia-driver`) is built for the running kernel and not signed by such a
    key, so the driver would not load and the node would have no GPU. vTPM (measured boot) and
    integrity monitoring stay on. An image with a signed driver can turn it back on through `extra`:
    `{"shielded_instance_config": {"enable_secure_boot": True}}`. `extra` is merged into every
    instance's arguments."""

    type_token: ClassVar[str] = "lepton:gcp:GpuVmPool"

    network: GcpNetwork
    identities: list[GcpNodeIdentity]
    host_key_secrets: list[GcpHostKeySecret]
    apis: list[Any]
    placement: compute.ResourcePolicy | None
    instances: list[compute.Instance]
    host_keys: list[tls.PrivateKey]
    nodes: list[PoolNode]
    pool_plan: PoolPlan[GcpPlan]

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: Any = None,
        queue: Any = None,
        plan: PoolPlan[GcpPlan] | None = None,
    ) -> None:
        self.store = granted("store", store, GcpObjectStore, "gcp")
        self.queue = granted("queue", queue, GcpJobQueue, "gcp")
        self.instances = []
        self._image: tuple[pulumi.Output[str], list[str]] | None = None
        self.nodes = build_pool(self, name, args, opts, plan)

    @property
    def entry(self) -> CatalogEntry:
        """The catalog row the nodes are (machine type, GPUs, price)."""
        return self.pool_plan.entry

    @property
    def zone(self) -> str:
        """The zone every node runs in."""
        return self.pool_plan.cloud.zone

    @classmethod
    def plan(cls, name: str, args: GpuVmPoolArgs) -> PoolPlan[GcpPlan]:
        """GCP's checks and decisions (`plan.py`), before anything is registered."""
        return plan_pool(name, args)

    def build_network(self, plan: PoolPlan[GcpPlan]) -> None:
        """The APIs first (when asked: every later resource waits for them), then the network, then
        the compact placement of multi-node a2/a3 pools."""
        gcp = plan.cloud
        self.apis = enable_apis(self, gcp_slug(plan.name), gcp.project, POOL_APIS) if gcp.enable_apis else []
        self.network = GcpNetwork(
            f"{plan.name}-net",
            region=str(plan.region),
            project=gcp.project,
            allowed_ssh_cidrs=plan.ssh_sources,
            tag=node_tag(plan.name, gcp.project),
            existing=gcp.subnetwork,
            # An external IP only when someone outside internal address space may SSH in (as on AWS
            # and Azure); SSH from a VPN range reaches the internal address, egress goes through NAT.
            nat=not plan.public,
            opts=self._after_apis(),
        )
        self.placement = None
        if plan.args.nodes > 1 and plan.entry.family in COMPACT_PLACEMENT_FAMILIES:
            self.placement = compact_placement(
                gcp_slug(plan.name),
                project=gcp.project,
                region=str(plan.region),
                nodes=plan.args.nodes,
                cluster=plan.cluster,
                opts=self._after_apis(),
            )

    def store_host_keys(self, plan: PoolPlan[GcpPlan], host_keys: Sequence[tls.PrivateKey]) -> None:
        """Each node's host key in its own Secret Manager secret; readers are granted in `grant_host_keys`."""
        labels = gcp_labels(plan.tags)
        self.host_key_secrets = [
            GcpHostKeySecret(
                f"{plan.name}-{i}-host-key",
                project=plan.cloud.project,
                secret_id=host_key_secret_id(plan.name, plan.cloud.project, i),
                private_key=key.private_key_openssh,
                labels=labels,
                opts=self._after_apis(),
            )
            for i, key in enumerate(host_keys)
        ]

    def make_identity(self, plan: PoolPlan[GcpPlan], i: int | None) -> GcpNodeIdentity:
        """Node `i`'s own service account (each node's host key secret is then readable by that node
        alone), or the existing one given in `identity` (`i` None), allowed the store and queue."""
        return GcpNodeIdentity(
            f"{plan.name}-identity" if i is None else f"{plan.name}-{i}-identity",
            project=plan.cloud.project,
            store=self.store,
            queue=self.queue,
            service_account_email=plan.cloud.service_account_email,
            opts=self._after_apis(),
        )

    def grant_host_keys(
        self, plan: PoolPlan[GcpPlan], identities: Sequence[GcpNodeIdentity]
    ) -> list[pulumi.Input[str]]:
        """Node i's account may read node i's secret (a child of that secret, as it always was)."""
        for secret, identity in zip(self.host_key_secrets, identities, strict=True):
            secret.allow_reader(identity.email)
        return [secret.fetch() for secret in self.host_key_secrets]

    def launch(
        self, plan: PoolPlan[GcpPlan], i: int, user_data: pulumi.Output[str]
    ) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
        """Node i's instance, created once its secret is readable by it (the first-boot fetch)."""
        if self._image is None:  # the family is resolved once, for the first node
            self._image = boot_image(plan.args.image, plan.cloud.project, self, self.apis)
        image, keep_image = self._image
        network = self.network
        spec = instance_spec(
            plan,
            i,
            user_data=user_data,
            image=image,
            subnetwork=network.subnetwork_link,
            tag=network.tag,
            email=self.identities[i].email,
            placement=self.placement.self_link if self.placement is not None else None,
        )
        secret = self.host_key_secrets[i]
        instance = compute.Instance(
            f"{gcp_slug(plan.name)}-{i}",
            instance_args(spec),
            opts=child(
                self, depends_on=[*self.apis, secret.version, secret.reader], ignore_changes=keep_image
            ),
        )
        self.instances.append(instance)
        return node_addresses(instance, plan.public)

    def own_outputs(self, plan: PoolPlan[GcpPlan]) -> Mapping[str, Any]:
        """The machine type and zone, beside the nodes' addresses."""
        return {"machine_type": plan.entry.instance_type, "zone": plan.cloud.zone}

    def _after_apis(self) -> pulumi.ResourceOptions:
        """A child that waits for the APIs this pool enables (none unless asked)."""
        return child(self, depends_on=self.apis)
