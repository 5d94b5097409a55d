"""Run a workload on every node of an inventory (`run_job`), and work on a run from any later
process (`attach`, `run_status`, `read_logs`, `collect`, `cancel`).

Per node, a run costs a handful of SSH commands on ONE connection: `prepare` (reserve the run
dir, list missing blobs), `receive` (one tar stream of the missing blobs), `launch` (start the
supervisor detached), then SFTP reads only while it runs (no shell per poll), and `pack` (one tar
stream back). The nodes are the source of truth (`~/.lepton/runs/<run-id>/state.json`); the
controller may die at any point and `attach` picks the run up again.

Where things land, on the node (`~` is the node's $HOME):
    ~/.lepton/runs/<run-id>/workload/     the shipped workload (cwd of the job)
    ~/.lepton/runs/<run-id>/output/       LEPTON_OUTPUT_DIR
    ~/.lepton/runs/<run-id>/logs/node.log torchrun's stdout+stderr (raw, progress lines included)
    ~/.lepton/runs/<run-id>/state.json    state, pid, exit code, times, heartbeat
and locally, under `runs_dir` (default ./runs):
    runs/<run-id>/run.json                the RunRecord: cluster, workload, args, per-node
                                          status, exit codes, timings, bytes moved
    runs/<run-id>/<node>/output/...       that node's LEPTON_OUTPUT_DIR
    runs/<run-id>/<node>/logs/node.log    its log (and logs/agent.log, the supervisor's own)
    runs/<run-id>/<node>/state.json       its final state (and spec.json: the exact command and env)
    runs/<run-id>/.log-offsets.json       how far each node's log was streamed (attach resumes there)

The parts: `group` (the connected nodes, one result type for parallel calls), `steps` (prepare,
ship, launch, collect), `monitor` (typed events while it runs), `record` (run.json), `remote`
(the node-side commands)."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_infra.errors import ConfigError, LeptonError, NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import boot, clients, jobspec, steps
from lepton_infra.workload.collecting import Limits
from lepton_infra.workload.cost import run_cost
from lepton_infra.workload.group import NodeGroup, NodeRun
from lepton_infra.workload.manifest import Manifest, build_manifest
from lepton_infra.workload.metrics import DEFAULT_EVERY_S as DEFAULT_METRICS_S
from lepton_infra.workload.metrics import check_every
from lepton_infra.workload.models import NodeStatus, NullEvents, RunEvents, RunResult
from lepton_infra.workload.monitor import (
    HEARTBEAT_TIMEOUT_S,
    READ_CHUNK,
    Event,
    LineSplitter,
    LogLine,
    Offsets,
    Progress,
    deliver,
    monitor,
)
from lepton_infra.workload.record import RunRecord, RunStore, run_status_of
from lepton_infra.workload.remote import (
    AGENT_DIGEST,
    AGENT_SOURCE,
    CANCELLED_WHILE_SHIPPING,
    NO_SUCH_RUN,
    agent,
)

__all__ = [
    "AGENT_DIGEST",
    "AGENT_SOURCE",
    "attach",
    "cancel",
    "collect",
    "read_logs",
    "run_job",
    "run_status",
    "run_status_of",
    "watch_nodes",
]


@dataclass
class _Clock:
    """Named laps of a run, in seconds (RunResult.timings)."""

    start: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - since, 3)
        return now


@dataclass
class _Plan:
    """A run's validated input: everything checked before any node is contacted."""

    workload_dir: Path
    entrypoint: str
    args: list[str]
    nproc_per_node: int
    env: dict[str, str]
    run_id: str
    manifest: Manifest


def _plan(
    workload_dir: Path,
    args: Sequence[str],
    nproc_per_node: int | None,
    run_id: str | None,
    env: Mapping[str, str] | None,
    connect_timeout: float,
    store: RunStore,
    inventory: Inventory,
    heartbeat_timeout: float,
    follow_links: bool = False,
) -> _Plan:
    workload_dir = Path(workload_dir)
    entrypoint = jobspec.read_entrypoint(workload_dir)
    checked_args = jobspec.check_args(args)
    nproc = jobspec.check_nproc(
        default_nproc(inventory) if nproc_per_node is None else nproc_per_node, inventory
    )
    check_heartbeat_timeout(heartbeat_timeout)
    extra_env = jobspec.check_env(env)
    run_id = jobspec.check_run_id(run_id) if run_id is not None else jobspec.new_run_id()
    steps.check_timeout(connect_timeout)
    if store.exists(run_id):
        raise ConfigError(
            f"run id {run_id!r} already has results in {store.dir(run_id)}/; choose another run id"
        )
    manifest = build_manifest(workload_dir, follow_links=follow_links)
    if entrypoint not in manifest.files:
        raise ConfigError(
            f"entrypoint {entrypoint!r} of {workload_dir} is excluded by .leptonignore; it must ship"
        )
    return _Plan(workload_dir, entrypoint, checked_args, nproc, extra_env, run_id, manifest)


def check_heartbeat_timeout(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 1 <= seconds <= 3600:
        raise ConfigError(f"--heartbeat-timeout must be a number of seconds from 1 to 3600, got {seconds!r}")


def _deliver_safely(event: Event, sink: RunEvents) -> None:
    """Hand an event to the UI; a UI that chokes on one (a progress value it cannot draw) gets it
    as the plain log line instead, and never stops the run: streaming, collecting and recording
    go on whatever the job printed."""
    try:
        deliver(event, sink)
    except Exception:  # noqa: BLE001 - a rendering bug must not lose the run
        if isinstance(event, Progress):
            with contextlib.suppress(Exception):
                sink.on_log(event.node, f"{jobspec.PROGRESS_TAG} {json.dumps(event.data)}")


def default_nproc(inventory: Inventory) -> int:
    """Processes per node when none is asked for: one per GPU the inventory gives every node (the
    fewest, when nodes differ), or 1 on nodes without GPUs (CPU, the local pool)."""
    return min(n.gpus for n in inventory.nodes) or 1


def _watch(
    group: NodeGroup,
    run_id: str,
    store: RunStore,
    events: RunEvents,
    *,
    offsets: Mapping[str, int],
    heartbeat_timeout: float,
    on_first_output: Callable[[], None] | None = None,
) -> None:
    """Monitor until every node ended; a failing (or lost) node gets the others stopped."""
    stream = monitor(
        group, run_id, offsets=offsets, stop_gang_on_failure=True, heartbeat_timeout=heartbeat_timeout
    )
    for event in stream:
        if isinstance(event, Offsets):
            store.save_offsets(run_id, event.offsets)
            continue
        if on_first_output is not None and isinstance(event, LogLine | Progress):
            on_first_output()
            on_first_output = None
        _deliver_safely(event, events)


@contextlib.contextmanager
def _cancel_watch(group: NodeGroup, every_s: float = 0.5) -> Iterator[threading.Event]:
    """While the body ships, look for the cancel marker a `cancel` leaves in a node's run folder;
    when found, close every connection, which ends the uploads at once (the node-side receivers
    see the end of their stream and exit). The event says whether that happened."""
    cancelled = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            for m in group:
                try:
                    if m.run_dir and m.conn.stat_size(f"{m.run_dir}/cancel") is not None:
                        cancelled.set()
                except LeptonError:
                    continue
            if cancelled.is_set():
                for m in group:
                    m.conn.close()
                return

    thread = threading.Thread(target=watch, name="lepton-cancel-watch", daemon=True)
    thread.start()
    try:
        yield cancelled
    finally:
        done.set()
        thread.join()


CANCELLED_BEFORE_START = "cancelled before the run reached the nodes"


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """`fn(*args)` and how many seconds it took."""
    t0 = time.monotonic()
    return fn(*args), round(time.monotonic() - t0, 3)


def _reason(exc: BaseException, checking: Future[Any]) -> BaseException:
    """Why the run failed when a step beside the preflight raised `exc`: the preflight's own error
    when it failed too (a node without torch, exit 3, naming the node, is the reason to give),
    else `exc`. An interrupt is not made to wait for the preflight."""
    if not isinstance(exc, LeptonError):
        return exc
    try:
        checking.result()
    except LeptonError as found:
        return found
    except BaseException:  # noqa: BLE001 - the step's own error stands
        pass
    return exc


def run_job(
    inventory: Inventory,
    workload_dir: Path,
    args: Sequence[str] = (),
    *,
    nproc_per_node: int | None = None,
    run_id: str | None = None,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    events: RunEvents | None = None,
    follow_links: bool = False,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    metrics_every: float = DEFAULT_METRICS_S,
    boot_timeout: float = boot.BOOT_TIMEOUT_S,
    limits: Limits | None = None,
) -> RunResult:
    """Ship `workload_dir` to every node, run its entrypoint under torchrun on all of them, stream
    logs and progress to `events`, collect outputs and logs into `runs_dir/<run-id>/`.
    A symlink leaving the workload folder is a ConfigError unless `follow_links` (then what it
    points to ships); links inside the folder ship as links.
    `nproc_per_node` defaults to the inventory's GPUs per node (1 without GPUs). Every node samples
    its CPU, memory and GPUs each `metrics_every` seconds (0: off) for the live view, run.json,
    metrics.png and TensorBoard (workload/metrics.py, workload/report.py).
    `limits` bounds what the collect takes from each node (workload/collecting.py); what it
    leaves is listed in run.json (`nodes[].skipped`) and said to `events`.

    Nodes still in their first boot (cloud-init installing torch or the clients) are waited for, at
    most `boot_timeout` seconds, with progress (workload/boot.py); a failed boot is a NodeError
    carrying the boot's own log. While the run is prepared and shipped, a preflight asks every node's python for torch and its
    GPUs: a node without torch, or with fewer GPUs than the inventory says, is a NodeError naming
    it, and the run's folders are removed again; nothing is ever launched then.

    Returns the RunResult whatever the job did (status "failed" when a node failed or was lost;
    the other nodes are then stopped). Raises ConfigError for bad input (no workload, no
    entrypoint, bad run id/args/env, a run id already used) before anything runs, and NodeError
    (HostKeyMismatch for a wrong host key) when a node cannot be reached or refuses a command;
    connection problems are found before anything runs on any node."""
    events = events or NullEvents()
    clock = _Clock()
    store = RunStore(runs_dir)
    metrics_every = check_every(metrics_every)
    plan = _plan(
        workload_dir,
        args,
        nproc_per_node,
        run_id,
        env,
        connect_timeout,
        store,
        inventory,
        heartbeat_timeout,
        follow_links,
    )
    boot.check_timeout(boot_timeout)
    run_id, local_dir = plan.run_id, store.dir(plan.run_id)
    if inventory.store:
        # The nodes upload their results there when the job ends: a missing bucket or no
        # credentials must fail now (ConfigError naming the URL), not after the training.
        from lepton_infra.data import open_store

        open_store(inventory.store, region=inventory.region).check()

    # The run exists from its first step on the nodes: a local record once they are connected
    # (a node that fails its host key check leaves nothing behind), a folder on each from prepare.
    record = RunRecord.start(
        run_id,
        inventory,
        status="connecting",
        workload=str(plan.workload_dir.resolve()),
        entrypoint=plan.entrypoint,
        args=plan.args,
        nproc_per_node=plan.nproc_per_node,
        master_addr=inventory.master.private_ip,
    )

    # Recorded from the start, so that `cancel` finds a run whose nodes are still being dialled.
    new_root = not store.root.exists()
    store.save(record)
    events.on_phase("connect", f"connecting to {len(inventory.nodes)} node(s) of {inventory.cluster}")
    try:
        group = NodeGroup.connect(inventory, connect_timeout)
    except BaseException:
        # A node not reached (or not trusted): there is no run, and no trace of one here.
        shutil.rmtree(local_dir, ignore_errors=True)
        if new_root:
            with contextlib.suppress(OSError):
                store.root.rmdir()
        raise
    with group:
        t = clock.lap("connect", clock.start)
        if store.cancel_requested(run_id):
            return _cancelled_before_start(group, record, store, clock, events)
        try:
            boot.wait_booted(group, timeout=boot_timeout, progress=lambda s: events.on_phase("boot", s))
        except LeptonError as exc:
            store.save(record.model_copy(update={"status": "failed", "error": str(exc)}))
            raise
        t = clock.lap("boot", t)
        store.save(record.observe(group, local_dir, status="starting"))

        # The preflight (an `import torch` and a CUDA probe on every node: seconds) runs while the
        # run is prepared and shipped; nothing is launched before it has passed.
        events.on_phase("preflight", f"checking python, torch and GPUs on {len(group)} node(s)")
        with ThreadPoolExecutor(1, thread_name_prefix="lepton-preflight") as background:
            checking = background.submit(_timed, steps.preflight, group, inventory)

            def failed(exc: BaseException, *, remove: bool) -> None:
                """Record the run failed (saying why) and take its half-made folders off the nodes."""
                if remove:
                    steps.remove_run_dirs(group)
                store.save(record.model_copy(update={"status": "failed", "error": str(exc)}))

            files, size = len(plan.manifest.files), plan.manifest.total_bytes
            events.on_phase("prepare", f"run {run_id}: {files} file(s), {size} bytes")
            try:
                master_port = steps.prepare(group, run_id, plan.manifest, inventory)
            except BaseException as exc:
                why = _reason(exc, checking)
                failed(why, remove=False)
                if why is exc:
                    raise
                raise why  # noqa: B904 - the preflight names the node; exc is its context
            record.master_port = master_port
            store.save(record.observe(group, local_dir, status="shipping"))
            t = clock.lap("prepare", t)

            with _cancel_watch(group) as cancelled:
                try:
                    need = {d for m in group for d in m.missing if d != AGENT_DIGEST}
                    events.on_phase(
                        "ship", f"sending {len(need)} changed file(s) of {len(plan.manifest.blobs())}"
                    )
                    steps.ship(group, plan.manifest, inventory)
                except BaseException as exc:
                    if not cancelled.is_set():
                        why = _reason(exc, checking)
                        failed(why, remove=True)
                        if why is exc:
                            raise
                        raise why  # noqa: B904 - the preflight names the node; exc is its context
            if cancelled.is_set():
                # `cancel` marked the run on the nodes while it shipped: it never launches.
                for m in group:
                    m.status = NodeStatus(m.name, "cancelled", detail=CANCELLED_WHILE_SHIPPING)
                clock.lap("ship", t)
                store.save(record.observe(group, local_dir, clock.timings))
                events.on_phase("done", f"run {run_id} cancelled while shipping; nothing was started")
                return record.result(local_dir)
            t = clock.lap("ship", t)
            try:
                found, clock.timings["preflight"] = checking.result()
            except BaseException as exc:
                failed(exc, remove=True)
                raise
            t = clock.lap("preflight_wait", t)  # how long the launch waited for it after shipping
            events.on_phase("preflight", _preflight_summary(found))
            if lacking := clients.lacking(found):
                # Only now, and only for these nodes: a node with its clients costs nothing here.
                try:
                    clients.provide(
                        group.subset(lambda m: m.name in lacking),
                        inventory,
                        found,
                        lambda s: events.on_phase("clients", s),
                    )
                except BaseException as exc:
                    failed(exc, remove=True)
                    raise
                t = clock.lap("clients", t)
        if store.cancel_requested(run_id):  # asked while this controller was connecting or preparing
            steps.remove_run_dirs(group)
            return _cancelled_before_start(group, record, store, clock, events)
        store.save(record.observe(group, local_dir, status="running"))  # so other processes know the run

        events.on_phase(
            "launch",
            f"torchrun on {len(group)} node(s), {plan.nproc_per_node} process(es) each, port {master_port}",
        )
        t_launch = t
        steps.launch(
            group,
            inventory=inventory,
            run_id=run_id,
            entrypoint=plan.entrypoint,
            args=plan.args,
            nproc_per_node=plan.nproc_per_node,
            master_port=master_port,
            env=plan.env,
            metrics_every=metrics_every,
        )
        t = clock.lap("launch", t)
        # Price and nodes recorded now: `runs` and `status` show a running run's cost so far.
        record.cost = run_cost(inventory.price, len(group), record.created, [], running=True)
        store.save(record.observe(group, local_dir, clock.timings, status="running"))

        def first_output() -> None:
            now = time.monotonic()
            clock.timings["first_log"] = round(now - clock.start, 3)
            clock.timings["launch_to_first_log"] = round(now - t_launch, 3)

        events.on_phase("running", f"run {run_id} started; streaming logs")
        _watch(
            group,
            run_id,
            store,
            events,
            offsets={},
            heartbeat_timeout=heartbeat_timeout,
            on_first_output=first_output,
        )
        t = clock.lap("run", t_launch)
        _report_stopped(group, events)

        _collect(group, run_id, local_dir, events, limits)
        clock.lap("collect", t)
        clock.timings.update(steps.job_seconds(group))
        clock.timings["total"] = round(time.monotonic() - clock.start, 3)
        record.observe(group, local_dir, clock.timings)
        _report(record, local_dir, inventory, events)
        store.save(record)
    events.on_phase("done", f"run {run_id} {record.status}; results in {local_dir}/")
    return record.result(local_dir)


def _cancelled_before_start(
    group: NodeGroup, record: RunRecord, store: RunStore, clock: _Clock, events: RunEvents
) -> RunResult:
    """`cancel` came before anything was launched: the run is recorded cancelled, and nothing of
    it is left on the nodes."""
    for m in group:
        m.status = NodeStatus(m.name, "cancelled", detail=CANCELLED_BEFORE_START)
    local_dir = store.dir(record.run_id)
    store.save(record.observe(group, local_dir, clock.timings))
    events.on_phase("done", f"run {record.run_id} cancelled before it started; nothing was launched")
    return record.result(local_dir)


def _preflight_summary(found: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per distinct finding, e.g. `torch 2.13.0+cpu, CUDA no, 0 GPU(s) in /x/python3 on 3 node(s)`,
    and how many nodes answered from their preflight cache."""
    counts: dict[str, int] = {}
    for f in found.values():
        line = f"torch {f.get('torch')}, CUDA {'yes' if f.get('cuda') else 'no'}, {f.get('gpus', 0)} GPU(s) in {f.get('python')}"
        counts[line] = counts.get(line, 0) + 1
    summary = "; ".join(f"{line} on {n} node(s)" for line, n in counts.items())
    # A warm node answers from its cache (node/preflight.py says what its key covers).
    cached = sum(1 for f in found.values() if f.get("cached"))
    return f"{summary} ({cached} answered from the node's cache)" if cached else summary


def _report_stopped(group: NodeGroup, events: RunEvents) -> None:
    """Say on the terminal which processes the nodes' agents had to stop (daemons the job left
    behind, ones that ignored SIGTERM) and whose upload to the store failed; run.json keeps both."""
    for m in group:
        said = m.status.killed_line() if m.status else None
        if said:
            events.on_phase("cleanup", said)
        failed = (m.status.results or {}).get("error") if m.status else None
        if failed:
            events.on_phase("store", f"{m.name}: storing its results failed: {failed}")


def _collect(
    group: NodeGroup, run_id: str, local_dir: Path, events: RunEvents, limits: Limits | None
) -> None:
    # A lost node did not answer within the heartbeat limit: asking it again would only wait.
    lost = [m.name for m in group if m.state == "lost"]
    reachable = group.subset(lambda m: m.state != "lost")
    events.on_phase("collect", f"collecting outputs and logs from {len(reachable)} node(s) into {local_dir}/")
    for name in lost:
        events.on_phase("collect", f"{name}: lost, not collected (`lepton-infra collect` once it answers)")
    for name, err in steps.collect(reachable, run_id, local_dir, limits).failed.items():
        stored = (group[name].status.results or {}).get("url") if group[name].status else None
        safe = f"; its results are safe in {stored}" if stored else ""
        events.on_phase("collect", f"{name}: could not collect: {err}{safe}")
    for m in reachable:
        if m.collect_skipped_count:
            shown = "; ".join(m.collect_skipped[:5])
            more = f"; and {m.collect_skipped_count - 5} more" if m.collect_skipped_count > 5 else ""
            events.on_phase(
                "collect",
                f"{m.name}: {m.collect_skipped_count} file(s) not collected: {shown}{more} "
                "(run.json lists them; limits: --max-collect-bytes, --max-collect-files)",
            )


# --------------------------------------------------------------------------- later processes


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
    _report(record, store.dir(run_id), inventory, NullEvents())
    store.save(record)
    return record


def _report(record: RunRecord, local_dir: Path, inventory: Inventory, events: RunEvents) -> None:
    """Metrics summaries and cost into the record; metrics.png and TensorBoard files beside it."""
    from lepton_infra.workload.report import finish

    for what, where in finish(record, local_dir, inventory.price).items():
        if where.startswith("not written"):  # written ones are listed with the results
            events.on_phase("collect", f"{what}: {where}")


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
        _collect(group, run_id, store.dir(run_id), events or NullEvents(), limits)
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
        _watch(known, run_id, store, events, offsets=offsets, heartbeat_timeout=heartbeat_timeout)
        _report_stopped(known, events)
        _collect(group, run_id, local_dir, events, limits)
    record = _update_record(inventory, run_id, group, store, {"attach": round(time.monotonic() - t0, 3)})
    events.on_phase("done", f"run {run_id} {record.status}; results in {local_dir}/")
    return record.result(local_dir)


def _whole_log(m: NodeRun) -> Iterator[Event]:
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
