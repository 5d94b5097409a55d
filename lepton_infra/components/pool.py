"""The node loop every cloud's pool runs, kept once: a host key per node, the node's cloud-init (its
login key, the pinned host key fetched from the cloud's secret store at first boot, the watchdog),
the instance, and the node record the inventory is built from.

A cloud's pool supplies only what differs: its network and identities, where each node's host key
secret lives (`fetch`: the shell that prints the private key on the node), and `launch`, which
creates one instance from its cloud-init and returns the node's (dialled address, private address).
The resource names stay the cloud's own, so moving a pool onto this loop replaces nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pulumi
import pulumi_tls as tls

from lepton_infra.components.cloudinit import CloudBoot, node_user_data
from lepton_infra.components.common import PoolNode, child

T = TypeVar("T")

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
