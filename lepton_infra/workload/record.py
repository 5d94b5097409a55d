"""The local record of a run, `runs/<run-id>/run.json`, as one pydantic model, and the store that
reads and writes it (with the log offsets `attach` resumes from).

The nodes stay the source of truth for a run's state; the record is what the controller last
learnt, kept so a later process (`attach`, `status`, `runs`) knows the run and so a script can
read per-node status, exit codes, timings and bytes moved without talking to the nodes."""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton_infra.errors import ConfigError, NoSpace
from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec
from lepton_infra.workload.group import ConnectedNode
from lepton_infra.workload.models import TERMINAL_STATES, NodeResult, RunResult, iso

RECORD = "run.json"
OFFSETS = ".log-offsets.json"
CANCEL_REQUESTED = "cancel-requested"  # left by `cancel` while the controller has not reached the nodes


def run_status_of(states: Sequence[str]) -> str:
    """A run's status from its nodes' states."""
    if not all(s in TERMINAL_STATES or s == "unknown" for s in states):
        return "running"
    if any(s in ("failed", "lost", "unknown") for s in states):
        return "failed"
    if any(s == "cancelled" for s in states):
        return "cancelled"
    return "succeeded"


class NodeRecord(BaseModel):
    """One node's part of a run, as last seen by the controller."""

    # Records written by a newer version keep the fields this one does not know.
    model_config = ConfigDict(extra="allow")

    name: str
    host: str = ""
    rank: int = 0
    remote_run_dir: str | None = None
    state: str = "unknown"
    exit_code: int | None = None
    pid: int | None = None
    started: str | None = None
    ended: str | None = None
    detail: str = ""
    bytes_shipped: int = 0
    files_shipped: int = 0
    bytes_collected: int = 0
    output_dir: str = ""
    log_path: str = ""
    # Where the node itself put its results in the inventory's store (None: no store, or not yet).
    store_url: str | None = None
    store_error: str | None = None
    preflight: dict[str, Any] | None = None  # interpreter, torch version, CUDA, GPUs seen
    # Mean and peak of the node's sampled metrics (workload/metrics.py `summarise`); None: no samples.
    metrics: dict[str, Any] | None = None
    # Processes the node's agent had to stop when the job ended or was cancelled (see NodeStatus).
    killed: list[dict[str, Any]] = Field(default_factory=list)
    killed_count: int = 0
    # Why the node's results are not (all) here: the last collect failed (None once one succeeds).
    collect_error: str | None = None
    # What the last collect did not take from the node (limits, unsafe names or links), with why.
    skipped: list[str] = Field(default_factory=list)
    skipped_count: int = 0


class BytesMoved(BaseModel):
    shipped: int = 0
    collected: int = 0


class RunRecord(BaseModel):
    """`run.json`: what ran where, and how it went."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    cluster: str
    cloud: str
    status: str = "running"
    workload: str | None = None
    entrypoint: str | None = None
    args: list[str] = Field(default_factory=list)
    nproc_per_node: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    created: str | None = None
    updated: str | None = None
    nodes: list[NodeRecord] = Field(default_factory=list)
    bytes: BytesMoved = Field(default_factory=BytesMoved)
    timings: dict[str, float] = Field(default_factory=dict)
    # price per node-hour x nodes x time (workload/cost.py); None when the inventory has no price.
    cost: dict[str, Any] | None = None

    def observe(
        self,
        members: Iterable[ConnectedNode],
        local_dir: Path,
        timings: Mapping[str, float] | None = None,
        *,
        status: str | None = None,
    ) -> RunRecord:
        """Fold what the controller now knows of `members` (and `timings`) into the record; a value
        the members do not know (a later process that shipped nothing) keeps the recorded one.
        The run's status follows the nodes' states unless `status` is given (before launch the
        nodes have none yet)."""
        old = {n.name: n for n in self.nodes}
        nodes = []
        for m in members:
            prev = old.get(m.name) or NodeRecord(name=m.name)
            st = m.status
            nodes.append(
                prev.model_copy(
                    update={
                        "host": m.conn.node.host,
                        "rank": m.rank,
                        "remote_run_dir": m.run_dir or prev.remote_run_dir,
                        "preflight": m.preflight or prev.preflight,
                        "bytes_shipped": m.bytes_shipped or prev.bytes_shipped,
                        "files_shipped": m.files_shipped or prev.files_shipped,
                        "bytes_collected": m.bytes_collected or prev.bytes_collected,
                        "output_dir": str(local_dir / m.name / "output"),
                        "log_path": str(local_dir / m.name / "logs" / "node.log"),
                        "collect_error": m.collect_error,
                        "skipped": m.collect_skipped,
                        "skipped_count": m.collect_skipped_count,
                    }
                    | (
                        {
                            "state": st.state,
                            "exit_code": st.exit_code,
                            "pid": st.pid,
                            "started": st.started,
                            "ended": st.ended,
                            "detail": st.detail,
                        }
                        | ({"killed": st.killed, "killed_count": st.killed_count} if st.killed_count else {})
                        | (
                            {"store_url": st.results.get("url"), "store_error": st.results.get("error")}
                            if st.results
                            else {}
                        )
                        if st
                        else {}
                    )
                )
            )
        self.nodes = nodes
        self.status = status or run_status_of([n.state for n in nodes])
        if self.status == "succeeded" and any(n.collect_error and not n.store_url for n in nodes):
            self.status = "failed"  # succeeded only with every node's results home (or stored)
        self.bytes = BytesMoved(
            shipped=sum(n.bytes_shipped for n in nodes), collected=sum(n.bytes_collected for n in nodes)
        )
        self.timings = {**self.timings, **(timings or {})}
        self.updated = iso(time.time())
        return self

    def result(self, local_dir: Path) -> RunResult:
        """The public RunResult; output and log paths only where they were collected."""
        nodes = []
        for n in self.nodes:
            out = local_dir / n.name / "output"
            log = local_dir / n.name / "logs" / "node.log"
            nodes.append(
                NodeResult(
                    name=n.name,
                    state=n.state,
                    exit_code=n.exit_code,
                    started=n.started,
                    ended=n.ended,
                    bytes_shipped=n.bytes_shipped,
                    files_shipped=n.files_shipped,
                    bytes_collected=n.bytes_collected,
                    output_dir=out if out.is_dir() else None,
                    log_path=log if log.is_file() else None,
                    detail=n.detail,
                    collect_error=n.collect_error,
                    store_url=n.store_url,
                )
            )
        return RunResult(
            run_id=self.run_id, status=self.status, nodes=nodes, run_dir=local_dir, timings=dict(self.timings)
        )

    @classmethod
    def start(cls, run_id: str, inventory: Inventory, **fields: Any) -> RunRecord:
        return cls(
            run_id=run_id,
            cluster=inventory.cluster,
            cloud=inventory.cloud,
            created=iso(time.time()),
            **fields,
        )


def _write_json(path: Path, text: str) -> None:
    """Write-then-rename, so a reader never sees half a file. On a full disk the old file stays
    as it was, the temporary one is removed, and the error (NoSpace, exit 3) names the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        raise NoSpace(
            f"no space left on device: cannot write {path} ({len(text.encode())} bytes needed, "
            f"{free} free); it keeps its last complete version. Free some space and retry"
        ) from exc


class RunStore:
    """The runs under one local folder (default `./runs`): `<run-id>/run.json` each."""

    def __init__(self, runs_dir: Path) -> None:
        self.root = Path(runs_dir)

    def dir(self, run_id: str) -> Path:
        return self.root / run_id

    def exists(self, run_id: str) -> bool:
        return (self.dir(run_id) / RECORD).exists()

    def load(self, run_id: str) -> RunRecord | None:
        """The run's record, or None when there is none (or it is unreadable)."""
        try:
            return RunRecord.model_validate_json((self.dir(run_id) / RECORD).read_bytes())
        except (OSError, ValueError, ValidationError):
            return None

    def save(self, record: RunRecord) -> None:
        _write_json(self.dir(record.run_id) / RECORD, record.model_dump_json(indent=2) + "\n")

    def request_cancel(self, run_id: str) -> None:
        """Ask the controller of a run that is still connecting or preparing to stop before it
        launches anything (it looks for this marker after connecting and before the launch)."""
        (self.dir(run_id) / CANCEL_REQUESTED).touch()

    def cancel_requested(self, run_id: str) -> bool:
        return (self.dir(run_id) / CANCEL_REQUESTED).exists()

    def offsets(self, run_id: str) -> dict[str, int]:
        """How far each node's log was streamed by the last controller (empty if never)."""
        try:
            data = json.loads((self.dir(run_id) / OFFSETS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int)}

    def save_offsets(self, run_id: str, offsets: Mapping[str, int]) -> None:
        _write_json(self.dir(run_id) / OFFSETS, json.dumps(dict(offsets), indent=2) + "\n")

    def records(self) -> list[RunRecord]:
        """Every readable run record, newest first (by creation time, then run id)."""
        found = []
        if self.root.is_dir():
            for path in self.root.glob(f"*/{RECORD}"):
                record = self.load(path.parent.name)
                if record is not None and record.run_id == path.parent.name:
                    found.append(record)
        return sorted(found, key=lambda r: (r.created or "", r.run_id), reverse=True)

    def latest(self) -> str:
        """The newest run's id; ConfigError saying where it looked when there is none."""
        records = self.records()
        if not records:
            raise ConfigError(f"no runs in {self.root}/ (run.json files); pass a RUN_ID or --runs-dir")
        return jobspec.check_run_id(records[0].run_id)
