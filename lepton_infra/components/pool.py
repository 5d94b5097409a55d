"""How every pool is built, once, for all clouds: the neutral layer drives, each cloud supplies hooks.

The sequence (`build_pool`):

    plan -> network -> host keys -> secrets -> identities -> grants -> user data -> instances -> outputs

`plan` decides everything that needs no resource and no cloud call (checks, the catalog row, zone,
image form, public or private), once, as a typed `PoolPlan` that every later step reads; a bad zone
or image therefore fails before anything is registered. A cloud implements `CloudPool` (its public
`<Cloud>GpuVmPool` component class does) and nothing of the sequence itself.

Per-cloud pools keep their own component type (`lepton:aws:GpuVmPool`, ...) under the neutral
`lepton:compute:GpuVmPool`: a resource's URN names every ancestor's type, so removing that level
would delete and re-create every node of every existing stack."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pulumi
import pulumi_tls as tls

from lepton_infra.catalog import CatalogEntry
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.cloudinit import CloudBoot, node_user_data
from lepton_infra.components.common import (
    PoolNode,
    child,
    cluster_env,
    ipv4_ssh_cidrs,
    pool_tags,
    ssh_needs_public_ip,
    unwrap,
)
from lepton_infra.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C")  # a cloud's own part of the plan


@dataclass(frozen=True)
class PoolPlan(Generic[C]):
    """Everything a pool decides before it registers anything; read by every later step, never
    recomputed. `cloud` holds the cloud's own decisions (its dataclass: project, location, parsed
    image, existing network and identity, ...)."""

    name: str
    args: GpuVmPoolArgs
    entry: CatalogEntry  # the catalog row of the region actually used
    cluster: str
    env: str
    tags: dict[str, str]  # every resource's
    node_tags: dict[str, str]  # the instances': also the watchdog's limits
    ssh_sources: list[str]  # the IPv4 sources SSH is allowed from
    public: bool  # nodes get public addresses (SSH allowed from outside internal address space)
    region: str | None  # None: the provider's (AWS without `region`), read by `CloudPool.region`
    cloud: C
    boot: CloudBoot | None = None  # the cloud's additions to every node's cloud-init
    # An existing identity named in `identity`, shared by all nodes (None: one identity per node).
    shared_identity: Any = None


def neutral_plan(name: str, args: GpuVmPoolArgs, entry: CatalogEntry, **cloud_parts: Any) -> PoolPlan[Any]:
    """The parts of a plan every cloud decides alike (cluster and env names, tags, SSH sources and
    whether nodes are public), plus the cloud's (`region`, `cloud`, `boot`, ...)."""
    cluster, env = cluster_env(args, name)
    tags, node_tags = pool_tags(args, cluster, env)
    # The nodes have IPv4 addresses only: IPv6 sources are dropped (with a warning), only-IPv6 is an
    # error (nobody could log in), and the public-address decision looks at IPv4 sources alone.
    sources = ipv4_ssh_cidrs(args.allowed_ssh_cidrs, args.cloud)
    return PoolPlan(
        name=name,
        args=args,
        entry=entry,
        cluster=cluster,
        env=env,
        tags=tags,
        node_tags=node_tags,
        ssh_sources=sources,
        public=ssh_needs_public_ip(sources),
        **cloud_parts,
    )


class CloudPool(Protocol):
    """What one cloud supplies to build a pool: its component type and seven small steps. The
    driver calls them in the order below, each once (per node where `i` is given); the cloud
    keeps what they create as attributes of its component (`network`, `identities`, `instances`)."""

    type_token: ClassVar[str]

    @classmethod
    def plan(cls, name: str, args: GpuVmPoolArgs) -> PoolPlan[Any]:
        """All the cloud's checks and decisions; registers nothing and calls no cloud API, so the
        stack configuration can be checked with it before the program runs."""
        ...

    def build_network(self, plan: PoolPlan[Any]) -> None:
        """The pool's network (or the existing one `args.network` names) and its SSH rules."""
        ...

    def store_host_keys(self, plan: PoolPlan[Any], host_keys: Sequence[tls.PrivateKey]) -> None:
        """Each node's host private key in the cloud's secret store."""
        ...

    def make_identity(self, plan: PoolPlan[Any], i: int | None) -> Any:
        """Node `i`'s identity, allowed exactly the pool's store and queue (`i` None: the existing
        shared identity, wrapped once)."""
        ...

    def grant_host_keys(self, plan: PoolPlan[Any], identities: Sequence[Any]) -> list[pulumi.Input[str]]:
        """Each node's identity the right to read its own host key secret and nothing else's; returns
        per node the shell that prints that key at first boot."""
        ...

    def launch(
        self, plan: PoolPlan[Any], i: int, user_data: pulumi.Output[str]
    ) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
        """Node `i`'s instance from its cloud-init; returns (address the controller dials, address
        its peers use)."""
        ...

    def own_outputs(self, plan: PoolPlan[Any]) -> Mapping[str, Any]:
        """The cloud's own few registered outputs beside the nodes' addresses (instance type, zone)."""
        ...


_POOL_OF = {"aws": ("an", "AWS"), "gcp": ("a", "GCP"), "azure": ("an", "Azure")}


def granted(what: str, part: Any, cls: type, cloud: str) -> Any:
    """`part` (a `cls`, or the neutral component wrapping one) or None: the store or queue a pool's
    nodes are allowed. A part of another cloud is a ConfigError here, naming what was given and what
    is allowed, rather than an attribute error deep in the identity's grants."""
    part = unwrap(part)
    if part is not None and not isinstance(part, cls):
        article, label = _POOL_OF[cloud]
        raise ConfigError(
            f"{what} is a {type(part).__name__}; {article} {label} pool can only be granted {article} {label} "
            f"{what} ({cls.__name__} or a neutral one with cloud={cloud!r})"
        )
    return part


def build_pool(
    pool: Any, name: str, args: GpuVmPoolArgs, opts: pulumi.ResourceOptions | None, plan: PoolPlan[Any] | None
) -> list[PoolNode]:
    """Register the pool component `pool` (a `CloudPool`) and build its nodes in the one sequence.
    `plan` is the caller's when it planned already (the neutral components do, before they register
    anything); otherwise the pool plans here."""
    plan = plan or type(pool).plan(name, args)
    pulumi.ComponentResource.__init__(pool, type(pool).type_token, name, None, opts)
    pool.pool_plan = plan
    pool.build_network(plan)
    pool.host_keys = node_host_keys(name, args.nodes, pool)
    pool.store_host_keys(plan, pool.host_keys)
    pool.identities = node_identities(args.nodes, plan.shared_identity, lambda i: pool.make_identity(plan, i))
    fetch = pool.grant_host_keys(plan, pool.identities)
    nodes = launch_nodes(
        args,
        cloud=args.cloud,
        cluster=plan.cluster,
        host_keys=pool.host_keys,
        fetch=fetch,
        launch=lambda i, user_data: pool.launch(plan, i, user_data),
        boot=plan.boot,
    )
    pool.register_outputs(pool_outputs(nodes, **pool.own_outputs(plan)))
    return nodes


# launch(i, cloud-init text) -> (address the controller dials, address peers use)
Launch = Callable[[int, pulumi.Output[str]], tuple[pulumi.Input[str], pulumi.Input[str]]]


def node_host_keys(name: str, count: int, parent: pulumi.Resource) -> list[tls.PrivateKey]:
    """One ed25519 host key per node, generated in the program so its public half is known before the
    VM boots and clients can pin it (no trust on first use)."""
    return [
        tls.PrivateKey(f"{name}-hostkey-{i}", tls.PrivateKeyArgs(algorithm="ED25519"), opts=child(parent))
        for i in range(count)
    ]


def node_identities(count: int, existing: object, make: Callable[[int | None], T]) -> list[T]:
    """One identity per node, `make(i)`, so each node's host key secret (and on Azure the right to
    stop its own VM) is that node's alone; an existing identity named in the pool's `identity`
    mapping is wrapped once, `make(None)`, and shared by all nodes instead."""
    if existing is not None:
        return [make(None)] * count
    return [make(i) for i in range(count)]


def launch_nodes(
    args: Any,
    *,
    cloud: str,
    cluster: str,
    host_keys: Sequence[tls.PrivateKey],
    fetch: Sequence[pulumi.Input[str]],
    launch: Launch,
    boot: CloudBoot | None = None,
) -> list[PoolNode]:
    """Node `i`'s cloud-init (with `fetch[i]`, the commands that print its host private key), its
    instance (`launch`), and its node record, for every host key in order."""
    nodes = []
    for i, host_key in enumerate(host_keys):
        user_data = node_user_data(
            args, cloud=cloud, cluster=cluster, host_key=host_key, host_key_fetch=fetch[i], boot=boot
        )
        host, private_ip = launch(i, user_data)
        nodes.append(
            PoolNode(name=f"node-{i}", host=host, private_ip=private_ip, host_key=host_key.public_key_openssh)
        )
    return nodes


def pool_outputs(nodes: Sequence[PoolNode], **extra: Any) -> dict[str, Any]:
    """A pool's registered outputs: the addresses of its nodes (in node order), plus the cloud's
    own few (instance type or machine type, zone)."""
    return {"hosts": [n.host for n in nodes], "private_ips": [n.private_ip for n in nodes], **extra}
