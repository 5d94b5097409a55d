"""Working on a run from any later process: `run_status`, `watch_nodes`, `cancel`, `collect`,
`attach` and `read_logs` open the run's nodes again (the nodes are the source of truth; the
controller that started the run may be gone) and fold what they say into the local run.json."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

from lepton_infra.errors import ConfigError, LeptonError, NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import follow, jobspec, steps
from lepton_infra.workload.collecting import Limits
from lepton_infra.workload.group import ConnectedNode, NodeGroup
from lepton_infra.workload.models import NodeStatus, NullEvents, RunEvents, RunResult
from lepton_infra.workload.monitor import (
    HEARTBEAT_TIMEOUT_S,
    READ_CHUNK,
    Event,
    LineSplitter,
    LogLine,
    Offsets,
    deliver,
    monitor,
)
from lepton_infra.workload.record import RunRecord, RunStore
from lepton_infra.workload.remote import NO_SUCH_RUN, agent
from lepton_infra.workload.run_cancel import CANCELLED_BEFORE_START


def _open_run(
    inventory: Inventory, run_id: str, connect_timeout: float, node: str | None = None
) -> NodeGroup:
    """Connect and ask every node (or one) for the run's state. ConfigError if no node knows it."""
    jobspec.check_run_id(run_id)
    steps.check_timeout(connect_timeout)
    targets = [inventory.node(node)] if node is not None else list(inventory.nodes)
    group = NodeGroup.connect(inventory, connect_timeout, targets)
    try:
        answers = group.run(lambda m: agent(m.conn, run_id, "status")).values()
        if all(a.get("detail") == NO_SUCH_RUN for a in answers):
            where = node or f"any of the {len(group)} node(s)"
            raise ConfigError(f"no run {run_id!r} on {where} of {inventory.cluster}")
    except BaseException:
        group.close()
        raise
    for m, a in zip(group, answers, strict=True):
        m.run_dir = str(a.get("run_dir") or "")
        m.status = NodeStatus.from_agent(m.name, a)
    return group


def run_status(inventory: Inventory, run_id: str, *, connect_timeout: float = 10.0) -> list[NodeStatus]:
    """Each node's state of the run, read from the nodes (one agent command per node)."""
    with _open_run(inventory, run_id, connect_timeout) as group:
        return [m.status for m in group if m.status is not None]


def watch_nodes(
    inventory: Inventory, run_id: str, *, every: float = 2.0, connect_timeout: float = 10.0
) -> Generator[list[NodeStatus], None, None]:
    """`lepton-infra top`: every `every` seconds, each node's state with its newest metrics sample
    (`NodeStatus.metrics`), over connections opened once; ends after the view in which every node
    has ended. A node that does not answer shows as unknown with the reason, and is asked again."""
    with _open_run(inventory, run_id, connect_timeout) as group:
        while True:
            answers = group.run(lambda m: agent(m.conn, run_id, "status"))
            rows = [
                NodeStatus.from_agent(m.name, answers.succeeded[m.name])
                if m.name in answers.succeeded
                else NodeStatus(m.name, "unknown", detail=f"no answer: {answers.failed[m.name]}")
                for m in group
            ]
            yield rows
            if all(r.terminal or r.detail == NO_SUCH_RUN for r in rows):
                return
            time.sleep(every)


def cancel(
    inventory: Inventory, run_id: str, *, connect_timeout: float = 10.0, runs_dir: Path | None = None
) -> list[NodeStatus]:
    """Stop the run on every node: the job's process group gets TERM, then KILL after a grace
    period, and anything else carrying the run's environment is killed. Returns the final states.

    A run whose controller is still connecting (its record in `runs_dir` says `connecting` or
    `starting`: no node has it yet) is cancelled through that record instead, without dialling the
    nodes: the controller stops before it launches anything and records the run cancelled."""
    jobspec.check_run_id(run_id)
    if runs_dir is not None:
        store = RunStore(runs_dir)
        record = store.load(run_id)
        if record is not None and record.status in ("connecting", "starting"):
            store.request_cancel(run_id)
            return [NodeStatus(n.name, "cancelled", detail=CANCELLED_BEFORE_START) for n in inventory.nodes]
    with _open_run(inventory, run_id, connect_timeout) as group:
        answers = group.run(lambda m: agent(m.conn, run_id, "cancel")).values()
        return [NodeStatus.from_agent(m.name, a) for m, a in zip(group, answers, strict=True)]


def _update_record(
    inventory: Inventory, run_id: str, group: NodeGroup, store: RunStore, timings: Mapping[str, float]
) -> RunRecord:
    """Fold the nodes' current state (and `timings`) into the local run.json, write it, return it:
    what a later process (`collect`, `attach`) does after talking to the nodes."""
    record = store.load(run_id) or RunRecord.start(run_id, inventory)
    record.observe(group, store.dir(run_id), {**timings, **steps.job_seconds(group)})
    follow.write_report(record, store, inventory, NullEvents())  # saves the record
    return record


def collect(
    inventory: Inventory,
    run_id: str,
    *,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    limits: Limits | None = None,
    events: RunEvents | None = None,
) -> RunResult:
    """(Re)collect every node's outputs, logs and state into `runs_dir/<run-id>/` and rewrite run.json.
    Works while the run is still going (a snapshot; status "running")."""
    t0 = time.monotonic()
    store = RunStore(runs_dir)
    try:
        group = _open_run(inventory, run_id, connect_timeout)
    except (NodeError, ConfigError) as exc:
        return _from_store(inventory, run_id, store, exc)
    with group:
        follow.collect_into(group, run_id, store.dir(run_id), events or NullEvents(), limits)
    record = _update_record(inventory, run_id, group, store, {"collect": round(time.monotonic() - t0, 3)})
    return record.result(store.dir(run_id))


def _from_store(inventory: Inventory, run_id: str, runs: RunStore, exc: LeptonError) -> RunResult:
    """The nodes cannot be asked (gone, or rebuilt without the run): take what they stored, if
    anything; otherwise the original error stands."""
    from lepton_infra.workload import results

    if isinstance(exc, ConfigError) and not str(exc).startswith("no run "):
        raise exc  # bad input stays bad input
    if not results.committed_nodes(inventory, run_id):
        raise exc
    return results.fetch_from_store(inventory, run_id, runs, str(exc)).result(runs.dir(run_id))


def attach(
    inventory: Inventory,
    run_id: str,
    *,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    events: RunEvents | None = None,
    from_start: bool = False,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    limits: Limits | None = None,
) -> RunResult:
    """Reconnect to a run (e.g. after the controller died), stream the rest of its logs (from the
    offsets the last controller saved, or the start), wait for the end, collect everything.
    Like run_job, a failing node gets the others stopped."""
    events = events or NullEvents()
    t0 = time.monotonic()
    store = RunStore(runs_dir)
    local_dir = store.dir(run_id)
    events.on_phase("connect", f"reattaching to run {run_id} on {len(inventory.nodes)} node(s)")
    try:
        group = _open_run(inventory, run_id, connect_timeout)
    except (NodeError, ConfigError) as exc:
        events.on_phase("collect", f"nodes unavailable ({exc}); fetching results from the store")
        return _from_store(inventory, run_id, store, exc)
    if all(m.state in ("unknown", "preparing") for m in group):
        group.close()
        raise ConfigError(
            f"run {run_id!r} was never launched: its controller is still shipping it, or stopped "
            "before the launch; nothing of it ran, so there is nothing to attach to. Start it again "
            "with `lepton-infra run`"
        )
    with group:
        offsets = {} if from_start else store.offsets(run_id)
        running = [m for m in group if m.status and not m.status.terminal and m.state != "unknown"]
        events.on_phase("running", f"{len(running)} of {len(group)} node(s) still running; streaming logs")
        known = group.subset(lambda m: m.state != "unknown")
        for m in group:
            if m.name not in known.names and m.status is not None:
                events.on_node_done(m.name, m.status)
        follow.watch(known, run_id, store, events, offsets=offsets, heartbeat_timeout=heartbeat_timeout)
        follow.report_stopped(known, events)
        follow.collect_into(group, run_id, local_dir, events, limits)
    record = _update_record(inventory, run_id, group, store, {"attach": round(time.monotonic() - t0, 3)})
    events.on_phase("done", f"run {run_id} {record.status}; results in {local_dir}/")
    return record.result(local_dir)


def _whole_log(m: ConnectedNode) -> Iterator[Event]:
    """A node's log as events, read a chunk at a time (a log of gigabytes is never held whole)."""
    lines, offset, path = LineSplitter(m.name), 0, f"{m.run_dir}/logs/node.log"
    while data := m.conn.read_range(path, offset, READ_CHUNK):
        offset += len(data)
        yield from lines.feed(data)
    yield from lines.feed(b"", final=True)


def read_logs(
    inventory: Inventory,
    run_id: str,
    *,
    node: str | None = None,
    follow: bool = False,
    events: RunEvents | None = None,
    connect_timeout: float = 10.0,
    keep: bool = True,
) -> dict[str, str]:
    """A run's logs straight from the nodes: {node name: text} (LEPTON_PROGRESS lines left out).
    With `events`, every line also goes to events.on_log (progress to on_progress). With
    `follow`, keeps streaming until every node's job has ended (it never stops or fails the run).
    `keep=False` returns empty texts (a viewer that only wants the events holds no log in memory)."""
    sink: RunEvents = events or NullEvents()
    texts: dict[str, list[str]] = {}
    with _open_run(inventory, run_id, connect_timeout, node) as group:
        texts = {m.name: [] for m in group}
        known = group.subset(lambda m: m.state != "unknown")
        if follow:
            stream = monitor(known, run_id, offsets={}, stop_gang_on_failure=False)
        else:
            stream = (event for m in known for event in _whole_log(m))
        for event in stream:
            if keep and isinstance(event, LogLine):
                texts[event.node].append(event.line)
            if not isinstance(event, Offsets):
                deliver(event, sink)
    return {name: "\n".join(lines) + ("\n" if lines else "") for name, lines in texts.items()}
