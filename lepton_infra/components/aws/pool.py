"""The AWS GPU pool: AWS's hooks of the one pool sequence (`components.pool.build_pool`), each a few
lines handing over to the module that knows the part."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pulumi
import pulumi_aws.ec2 as ec2
import pulumi_aws.iam as iam
import pulumi_tls as tls

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.aws import plan as aws_plan
from lepton_infra.components.aws.identity import AwsNodeIdentity
from lepton_infra.components.aws.instance import NodeImage, node_image, node_instance_args
from lepton_infra.components.aws.network import AwsNetwork
from lepton_infra.components.aws.placement import efa_placement, efa_public_address, pool_zone
from lepton_infra.components.aws.queue import AwsJobQueue
from lepton_infra.components.aws.secrets import AwsHostKeySecrets, host_key_fetch
from lepton_infra.components.aws.store import AwsObjectStore
from lepton_infra.components.common import PoolNode, child
from lepton_infra.components.pool import PoolPlan, build_pool, granted


class AwsGpuVmPool(pulumi.ComponentResource):
    """`nodes` EC2 instances of the catalog's instance type, in their own VPC unless `args.network`
    names one, with an identity allowed exactly `store` and `queue`. Secure defaults: IMDSv2 only
    (hop limit 1, so containers cannot steal the role), encrypted gp3 root volume, a public IP only
    when SSH is allowed from outside private address space, spot as one-time/terminate (a reclaimed
    node never comes back half-configured). `extra` is merged into every `ec2.Instance`'s args.

    What it builds stays readable as attributes: `network` (the `AwsNetwork`), `zone`, `placement_group`, `launch_template`, `host_keys`,
    `host_key_secrets`, `identities`, `instances`, `addresses` (EFA nodes' public IPs), `nodes`."""

    type_token: ClassVar[str] = "lepton:aws:GpuVmPool"

    pool_plan: PoolPlan[aws_plan.AwsPlan]
    network: AwsNetwork
    zone: pulumi.Output[str] | None
    placement_group: ec2.PlacementGroup | None
    launch_template: ec2.LaunchTemplate | None
    shared_profile: pulumi.Output[Any] | None  # an existing instance profile (`identity`), looked up
    host_keys: list[tls.PrivateKey]
    host_key_secrets: AwsHostKeySecrets
    identities: list[AwsNodeIdentity]
    image: NodeImage | None
    instances: list[ec2.Instance]
    addresses: list[ec2.Eip]
    nodes: list[PoolNode]
    entry: CatalogEntry

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: AwsObjectStore | None = None,
        queue: AwsJobQueue | None = None,
        plan: PoolPlan[aws_plan.AwsPlan] | None = None,
    ) -> None:
        self._store = granted("store", store, AwsObjectStore, "aws")
        self._queue = granted("queue", queue, AwsJobQueue, "aws")
        self.image, self.instances, self.addresses = None, [], []
        self.nodes = build_pool(self, name, args, opts, plan)
        self.entry = self.pool_plan.entry

    @classmethod
    def plan(cls, name: str, args: GpuVmPoolArgs) -> PoolPlan[aws_plan.AwsPlan]:
        """AWS's checks and decisions (`aws.plan`); registers nothing, calls no AWS API."""
        return aws_plan.plan(name, args)

    def build_network(self, plan: PoolPlan[aws_plan.AwsPlan]) -> None:
        """The zone, the network and, for EFA types, the placement group and EFA launch template."""
        self.zone = pool_zone(plan, parent=self)
        network = AwsNetwork(
            f"{plan.name}-net",
            allowed_ssh_cidrs=plan.ssh_sources,
            public=plan.public,
            tags=plan.tags,
            zone=self.zone,
            region=plan.region,
            existing=plan.cloud.network,
            private_egress=plan.args.private_egress,
            opts=child(self),
        )
        # From here on `self.network` is the network itself (what users and tests read).
        self.network = network
        self.placement_group, self.launch_template = efa_placement(plan, network, parent=self)

    def store_host_keys(self, plan: PoolPlan[aws_plan.AwsPlan], host_keys: Sequence[tls.PrivateKey]) -> None:
        """Each node's host key in Secrets Manager; a shared existing role is admitted to their KMS key."""
        profile = plan.shared_identity
        self.shared_profile = (
            iam.get_instance_profile_output(name=profile, opts=pulumi.InvokeOptions(parent=self))
            if profile is not None
            else None
        )
        self.host_key_secrets = AwsHostKeySecrets(
            f"{plan.name}-hostkeys",
            private_keys=[k.private_key_openssh for k in host_keys],
            tags=plan.tags,
            region=plan.region,
            shared_role_arn=self.shared_profile.role_arn if self.shared_profile is not None else None,
            opts=child(self),
        )

    def make_identity(self, plan: PoolPlan[aws_plan.AwsPlan], i: int | None) -> AwsNodeIdentity:
        """Node `i`'s role allowed the store, the queue and its own host key; or the existing profile."""
        if i is None:
            return AwsNodeIdentity(
                f"{plan.name}-identity",
                tags=plan.tags,
                existing_profile=plan.shared_identity,
                opts=child(self),
            )
        return AwsNodeIdentity(
            f"{plan.name}-identity-{i}",
            tags=plan.tags,
            store=self._store,
            queue=self._queue,
            host_key_secret=self.host_key_secrets.secrets[i],
            host_key_kms=self.host_key_secrets.key,
            opts=child(self),
        )

    def grant_host_keys(
        self, plan: PoolPlan[aws_plan.AwsPlan], identities: Sequence[AwsNodeIdentity]
    ) -> list[pulumi.Input[str]]:
        """Each node's secret admits its own role (or the shared one) and the deployer, nobody else."""
        shared = self.shared_profile
        self.host_key_secrets.admit_only(
            [
                (shared.role_arn, shared.role_id)
                if shared is not None
                else (identity.role.arn, identity.role.unique_id)  # type: ignore[union-attr]
                for identity in identities
            ],
            plan.region,
        )
        return [secret.arn.apply(host_key_fetch) for secret in self.host_key_secrets.secrets]

    def launch(
        self, plan: PoolPlan[aws_plan.AwsPlan], i: int, user_data: pulumi.Output[str]
    ) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
        """Node `i`'s instance, started only once its host key and its grant exist."""
        if self.image is None:  # looked up for the first node, booted by all
            self.image = node_image(plan, parent=self)
        identity, secrets = self.identities[i], self.host_key_secrets
        network = self.network
        # The node reads its key at first boot: the value and the grant exist before it starts.
        ready: list[pulumi.Resource] = [secrets.versions[i], *secrets.policies[i : i + 1]]
        if identity.policy is not None:
            ready.append(identity.policy)
        instance = ec2.Instance(
            f"{plan.name}-node-{i}",
            node_instance_args(
                plan,
                i,
                ami=self.image.ami,
                profile=identity.instance_profile_name,
                user_data=user_data,
                subnet_id=network.subnet_id,
                security_group_id=network.security_group.id,
                placement_group=self.placement_group,
                launch_template=self.launch_template,
            ),
            opts=child(self, depends_on=ready, ignore_changes=self.image.ignore_changes),
        )
        self.instances.append(instance)
        if not plan.public:
            return instance.private_ip, instance.private_ip
        if self.launch_template is None:
            return instance.public_ip, instance.private_ip
        self.addresses.append(efa_public_address(plan, i, instance, parent=self))
        return self.addresses[-1].public_ip, instance.private_ip

    def own_outputs(self, plan: PoolPlan[aws_plan.AwsPlan]) -> Mapping[str, Any]:
        """The instance type and the zone (None: an existing subnet's own)."""
        return {"instance_type": plan.entry.instance_type, "zone": self.zone}
