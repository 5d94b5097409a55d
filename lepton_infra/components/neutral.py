"""The cloud-neutral components users build stacks from. Their args arrive valid (a `*Args` spec is
validated when it is built, see `args`). Each picks its cloud's class (`cloud_classes`, imported only
when that cloud is used, so an AWS stack never loads the GCP or Azure SDKs). A pool is planned once,
before anything is registered (`CloudPool.plan`: the cloud's checks, catalog row, zone, image), and
that plan is handed down, so a bad zone or image fails the whole cluster up front."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import pulumi
import pulumi_tls as tls

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs, TrainingClusterArgs
from lepton_infra.components.common import PoolNode, child, inventory_json, price_doc, unwrap
from lepton_infra.components.images import python_for
from lepton_infra.components.pool import PoolPlan, pool_outputs


class StoreLike(Protocol):
    url: pulumi.Output[str]


class QueueLike(Protocol):
    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]


class PoolLike(Protocol):
    nodes: list[PoolNode]


class CloudClasses(NamedTuple):
    """One cloud's public component classes."""

    pool: Any  # a `CloudPool` component class
    store: Any
    queue: Any


def cloud_classes(cloud: str) -> CloudClasses:
    """The component classes of `cloud`, imported here and only here, when first used."""
    if cloud == "aws":
        from lepton_infra.components import aws

        return CloudClasses(aws.AwsGpuVmPool, aws.AwsObjectStore, aws.AwsJobQueue)
    if cloud == "gcp":
        from lepton_infra.components import gcp

        return CloudClasses(gcp.GcpGpuVmPool, gcp.GcpObjectStore, gcp.GcpJobQueue)
    if cloud == "azure":
        from lepton_infra.components import azure

        return CloudClasses(azure.AzureGpuVmPool, azure.AzureObjectStore, azure.AzureJobQueue)
    raise ValueError(f"no such cloud: {cloud!r}")  # args.check_cloud admits only the three


def plan_pool(name: str, args: GpuVmPoolArgs) -> PoolPlan[Any]:
    """The pool's plan by its cloud (checks included); registers nothing and calls no cloud API,
    so `lepton_infra.config` runs it before the program does."""
    plan: PoolPlan[Any] = cloud_classes(args.cloud).pool.plan(name, args)
    return plan


def check_pool_args(args: GpuVmPoolArgs) -> None:
    """The cloud's own pool checks (zone in region, image form, `network`/`identity` keys, ...)."""
    plan_pool("check", args)


def node_region(plan: PoolPlan[Any]) -> pulumi.Input[str]:
    """The region the nodes run in, for the inventory (the nodes' store and queue clients need it):
    the plan's, else (AWS without `region`) the provider's."""
    if plan.region:
        return plan.region
    import pulumi_aws as aws

    return aws.get_region_output().region


class ObjectStore(pulumi.ComponentResource):
    """A private, encrypted, versioned bucket on `args.cloud`. Output `url` (`s3://`, `gs://`, `az://`)."""

    url: pulumi.Output[str]
    impl: Any

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:storage:ObjectStore", name, None, opts)
        self.impl = cloud_classes(args.cloud).store(name, args, child(self))
        self.url = self.impl.url
        self.register_outputs({"url": self.url})


class JobQueue(pulumi.ComponentResource):
    """A work queue with a dead-letter queue on `args.cloud`. Outputs `url`, `dead_letter_url`."""

    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]
    impl: Any

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:queue:JobQueue", name, None, opts)
        self.impl = cloud_classes(args.cloud).queue(name, args, child(self))
        self.url = self.impl.url
        self.dead_letter_url = self.impl.dead_letter_url
        self.register_outputs({"url": self.url, "dead_letter_url": self.dead_letter_url})


class GpuVmPool(pulumi.ComponentResource):
    """`nodes` GPU VMs with pinned host keys on `args.cloud`. `store`/`queue` (components of the same
    cloud, neutral or per-cloud) are the only data the nodes' identity may touch."""

    nodes: list[PoolNode]
    entry: CatalogEntry
    impl: Any

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: Any = None,
        queue: Any = None,
        plan: PoolPlan[Any] | None = None,
    ) -> None:
        plan = plan or plan_pool(name, args)
        self.entry = plan.entry  # the catalog row of the region the cloud resolved
        super().__init__("lepton:compute:GpuVmPool", name, None, opts)
        pool = cloud_classes(args.cloud).pool
        self.impl = pool(name, args, child(self), store=unwrap(store), queue=unwrap(queue), plan=plan)
        self.nodes = self.impl.nodes
        self.register_outputs(pool_outputs(self.nodes))


class TrainingCluster(pulumi.ComponentResource):
    """Network, identity, GPU pool, object store and job queue for one cluster, with the nodes
    allowed exactly this store and queue. Outputs: `inventory` (the workload layer's contract),
    `store_url`, `queue_url`, `hourly_cost_usd`, and `private_key` (secret) when the login key was
    generated here because `ssh_public_key` was not given."""

    inventory: pulumi.Output[str]
    store_url: pulumi.Output[str] | None
    queue_url: pulumi.Output[str] | None
    hourly_cost_usd: float | None
    private_key: pulumi.Output[str] | None
    store: ObjectStore | None
    queue: JobQueue | None
    pool: GpuVmPool
    login_key: tls.PrivateKey | None

    def __init__(
        self, name: str, args: TrainingClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        cluster = args.cluster or name
        env = args.env or pulumi.get_stack()
        plan = plan_pool(f"{name}-pool", args.with_values(cluster=cluster, env=env).pool_args())
        entry = plan.entry  # the catalog row of the region the cloud resolved (looked up once)
        super().__init__("lepton:index:TrainingCluster", name, None, opts)

        self.login_key = None
        self.private_key = None
        key = args.ssh_public_key
        if key is None:
            self.login_key = tls.PrivateKey(
                f"{name}-login", tls.PrivateKeyArgs(algorithm="ED25519"), opts=child(self)
            )
            key = self.login_key.public_key_openssh
            self.private_key = pulumi.Output.secret(self.login_key.private_key_openssh)
        # A copy with this cluster's name, env and key: the caller's args may build further
        # clusters (each must get its own name tags and its own key).
        args = args.with_values(cluster=cluster, env=env, ssh_public_key=key)

        self.store = ObjectStore(f"{name}-store", args.store_args(), child(self)) if args.store else None
        self.queue = JobQueue(f"{name}-queue", args.queue_args(), child(self)) if args.queue else None
        plan = dataclasses.replace(plan, args=args.pool_args())  # with the login key, made only now
        self.pool = GpuVmPool(
            f"{name}-pool", args.pool_args(), child(self), store=self.store, queue=self.queue, plan=plan
        )

        self.store_url = self.store.url if self.store else None
        self.queue_url = self.queue.url if self.queue else None
        price = entry.hourly_usd(args.spot)
        self.hourly_cost_usd = round(price * args.nodes, 4) if price is not None else None
        self.inventory = inventory_json(
            cluster=cluster,
            cloud=args.cloud,
            user=args.user,
            nodes=self.pool.nodes,
            accelerator=entry.accelerator,
            gpus=entry.gpus,
            store_url=self.store_url,
            queue_url=self.queue_url,
            python=python_for(args.cloud, args.image, args.python),
            jump=args.jump,
            price=price_doc(entry, args.spot),
            region=node_region(plan),
        )
        outputs: dict[str, Any] = {
            "inventory": self.inventory,
            "store_url": self.store_url,
            "queue_url": self.queue_url,
            "hourly_cost_usd": self.hourly_cost_usd,
        }
        if self.private_key is not None:
            outputs["private_key"] = self.private_key
        self.register_outputs(outputs)
