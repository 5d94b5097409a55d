"""A group of connected nodes (as fabric's `Group`): one call runs a function on every member in
parallel and returns one `GroupResult`, whose `.succeeded` and `.failed` say what each node did.

This is the one way the workload layer handles per-node errors: a node's `LeptonError` becomes an
entry in `.failed` (the other nodes' work is never lost to it), and the caller decides whether to
`raise_first()`, report, or undo what the succeeded nodes did."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

from lepton_infra.errors import HostKeyMismatch, LeptonError
from lepton_infra.inventory import Inventory, Node
from lepton_infra.workload.models import NodeStatus
from lepton_infra.workload.ssh import NodeConnection, connect_all, parallel

T = TypeVar("T")


@dataclass
class ConnectedNode:
    """One member of a group: a node the controller holds a connection to, plus what it learnt
    about the node during this run (its run dir there, blobs it lacks, bytes moved, last known
    status). What the node itself reports is a `NodeStatus`; what run.json keeps, a `NodeRecord`;
    what `run_job` returns, a `NodeResult`."""

    conn: NodeConnection
    rank: int
    run_dir: str = ""  # absolute, on the node
    missing: list[str] = field(default_factory=list)
    tree_ready: bool = False  # prepare already wrote the run's tree (nothing was missing)
    bytes_shipped: int = 0
    files_shipped: int = 0
    bytes_collected: int = 0
    status: NodeStatus | None = None
    preflight: dict[str, Any] | None = None  # what the node's python has (steps.preflight)
    collect_error: str | None = None  # why the last collect did not bring its results home
    collect_skipped: list[str] = field(default_factory=list)  # what it did not take, and why
    collect_skipped_count: int = 0

    @property
    def name(self) -> str:
        return self.conn.name

    @property
    def state(self) -> str:
        return self.status.state if self.status else "unknown"


@dataclass
class GroupResult(Generic[T]):
    """What one parallel call did on each node, in the group's order."""

    succeeded: dict[str, T] = field(default_factory=dict)
    failed: dict[str, LeptonError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_first(self) -> None:
        """Raise one node's error if any failed: a HostKeyMismatch before anything else (it is the
        one the user must see), otherwise the first in the group's order."""
        for err in self.failed.values():
            if isinstance(err, HostKeyMismatch):
                raise err
        for err in self.failed.values():
            raise err

    def values(self) -> list[T]:
        """Every node's value, in order; raises the first error if a node failed."""
        self.raise_first()
        return list(self.succeeded.values())


class NodeGroup:
    """The connected nodes of one run (or of a later process working on a run). Closing the group
    closes every connection; use it as a context manager."""

    def __init__(self, members: Sequence[ConnectedNode]) -> None:
        self.members = list(members)

    @classmethod
    def connect(
        cls, inventory: Inventory, connect_timeout: float, nodes: Sequence[Node] | None = None
    ) -> NodeGroup:
        """Connect to every node (or `nodes`) in parallel, all or nothing: NodeError (a
        HostKeyMismatch first) if any node cannot be reached, and then nothing stays open.
        Ranks are the nodes' positions in the inventory."""
        ranks = {n.name: i for i, n in enumerate(inventory.nodes)}
        conns = connect_all(inventory, connect_timeout, nodes)
        return cls([ConnectedNode(conn, ranks[conn.name]) for conn in conns])

    def __iter__(self) -> Iterator[ConnectedNode]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, name: str) -> ConnectedNode:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def subset(self, keep: Callable[[ConnectedNode], bool]) -> NodeGroup:
        """The members for which `keep` is true, sharing their connections with this group."""
        return NodeGroup([m for m in self.members if keep(m)])

    def run(self, fn: Callable[[ConnectedNode], T], *, interruptible: bool = False) -> GroupResult[T]:
        """`fn` on every member in parallel. A member's LeptonError lands in `.failed`; any other
        exception is a bug (or an interrupt) and is raised once every member has finished. With
        `interruptible`, an interrupt (Ctrl-C) closes every connection first, so long transfers
        end at once instead of running to their end."""

        def one(m: ConnectedNode) -> tuple[bool, T | LeptonError]:
            try:
                return True, fn(m)
            except LeptonError as exc:
                return False, exc

        result: GroupResult[T] = GroupResult()
        stop = self.close if interruptible else None
        for m, (ok, value) in zip(self.members, parallel(self.members, one, on_interrupt=stop), strict=True):
            if ok:
                result.succeeded[m.name] = value  # type: ignore[assignment]
            else:
                result.failed[m.name] = value  # type: ignore[assignment]
        return result

    def close(self) -> None:
        for m in self.members:
            m.conn.close()

    def __enter__(self) -> NodeGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
