"""What `--json` prints: each document a pydantic model made of the library's own records (run.json's
`RunRecord`, the nodes' `NodeStatus`, a sweep's `JobRow`), printed by `render.emit`. A field added to one
of those records shows up in the document by itself; the shapes are pinned by
tests/e2e/test_cli_json.py. Imported only by commands that print JSON (it imports the workload layer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, field_serializer

from lepton_infra.workload import NodeStatus
from lepton_infra.workload.record import RunRecord, run_status_of
from lepton_infra.workload.sweep import JobRow

Cost = dict[str, Any] | None  # workload/cost.py's {"usd", "usd_per_node_hour", "market", ...}


class _Document(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")


class NodeState(_Document):
    name: str
    state: str


class ListedRun(_Document):
    """One run of `runs --json`: run.json's identity and node states, where it lives, its cost."""

    run_id: str
    status: str
    nodes: list[NodeState]
    started: str | None
    cluster: str
    cloud: str
    run_dir: str
    cost: Cost

    @classmethod
    def of(cls, record: RunRecord, runs_dir: Path, cost: Cost) -> ListedRun:
        fields = record.model_dump(include={"run_id", "status", "nodes", "cluster", "cloud"})
        extra = {"started": record.created, "run_dir": str(runs_dir / record.run_id), "cost": cost}
        return cls.model_validate(fields | extra)


class RunsListing(_Document):
    """`runs --json`: the runs of a folder (newest first) and what they cost together."""

    runs_dir: str
    since: str | None
    runs: list[ListedRun]
    total_usd: float | int  # 0, an int, when nothing had a price: as it always printed
    runs_without_price: int

    @classmethod
    def of(
        cls, records: Sequence[RunRecord], runs_dir: Path, since: str | None, costs: dict[str, Cost]
    ) -> RunsListing:
        return cls(
            runs_dir=str(runs_dir),
            since=since,
            runs=[ListedRun.of(r, runs_dir, costs[r.run_id]) for r in records],
            total_usd=round(sum(c["usd"] for c in costs.values() if c), 4),
            runs_without_price=sum(1 for c in costs.values() if not c),
        )


class RunStatus(_Document):
    """`status --json` and `cancel --json`: in run.json's shape (`nodes[].name` first), each node
    as the node itself reports it (`metrics`: its newest sample while the job runs)."""

    run_id: str
    status: str
    nodes: list[NodeStatus]
    cost: Cost

    @field_serializer("nodes", mode="wrap")
    def _named(self, nodes: list[NodeStatus], handler: SerializerFunctionWrapHandler) -> list[dict[str, Any]]:
        return [{"name": d.pop("node"), **d} for d in handler(nodes)]

    @classmethod
    def of(cls, run_id: str, rows: list[NodeStatus], cost: Cost = None) -> RunStatus:
        return cls(run_id=run_id, status=run_status_of([r.state for r in rows]), nodes=rows, cost=cost)


class NodeActivity(_Document):
    """`top --json`: one look at each node (with its metrics sample) and the run's cost so far."""

    run_id: str
    nodes: list[NodeStatus]
    cost: Cost


class SweepReport(_Document):
    """`sweep ... --json` (one line): every job, the summary best first, the workers' liveness and
    the malformed messages dead-lettered on the queue since the sweep started."""

    sweep_id: str
    jobs: list[JobRow]
    summary: list[dict[str, Any]]
    workers_alive: list[str]
    stalled: str | None
    malformed: list[dict[str, Any]]
