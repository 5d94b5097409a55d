"""Many nodes at once: `parallel` runs a function per item in threads and raises the error the
user must see first; `connect_all` opens every node's connection, all or nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lepton_infra.errors import HostKeyMismatch
from lepton_infra.inventory import Inventory, Node
from lepton_infra.workload.ssh.connection import NodeConnection
from lepton_infra.workload.ssh.keys import load_client_key

T = TypeVar("T")
R = TypeVar("R")


def parallel(
    items: Sequence[T],
    fn: Callable[[T], R],
    *,
    max_workers: int = 32,
    on_interrupt: Callable[[], None] | None = None,
) -> list[R]:
    """fn over items in threads; results in order. Waits for all, then raises the first error in
    item order (a HostKeyMismatch before anything else: it is the one the user must see).
    An interrupt while waiting calls `on_interrupt` (close the connections, so the threads end)
    before the pool is waited for."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            errors = [f.exception() for f in futures]
        except BaseException:
            if on_interrupt is not None:
                on_interrupt()
            raise
    for wanted in (HostKeyMismatch, BaseException):
        for err in errors:
            if isinstance(err, wanted):
                raise err
    return [f.result() for f in futures]


def connect_all(
    inventory: Inventory, connect_timeout: float = 10.0, nodes: Sequence[Node] | None = None
) -> list[NodeConnection]:
    """One connection per node, opened in parallel. All or nothing: on any failure every opened
    connection is closed and the error (naming the node) is raised."""
    targets = list(nodes if nodes is not None else inventory.nodes)
    pkey = load_client_key(inventory)  # once, before any node: a bad key file is one clear error
    conns = [NodeConnection(inventory, node, connect_timeout, pkey=pkey) for node in targets]
    try:
        parallel(conns, lambda c: c.connect())
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns
