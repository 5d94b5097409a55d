"""`run_job` as an object: one `Run` per call, whose phases (connect, boot, preflight beside prepare
and ship, launch, watch, collect) are methods that each save the run record themselves, so run.json
always says how far the run got (`cancel`, `status` and `attach` read it). The input was checked
before (`run_plan.plan_run`); `runner.run_job` is the thin public function over both."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from lepton_infra.errors import LeptonError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import boot, clients, follow, steps
from lepton_infra.workload.cost import run_cost
from lepton_infra.workload.group import NodeGroup
from lepton_infra.workload.models import NodeStatus, RunEvents, RunResult
from lepton_infra.workload.preflight_beside import BackgroundPreflight, summary
from lepton_infra.workload.record import RunRecord, RunStore
from lepton_infra.workload.remote import AGENT_DIGEST, CANCELLED_WHILE_SHIPPING
from lepton_infra.workload.run_cancel import CANCELLED_BEFORE_START, cancel_watch
from lepton_infra.workload.run_plan import RunPlan


@dataclass
class Laps:
    """Named laps of a run, in seconds (RunResult.timings); each lap runs from the end of the last
    one unless told where it began."""

    start: float = field(default_factory=time.monotonic)
    mark: float = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mark = self.start

    def lap(self, name: str, since: float | None = None) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - (self.mark if since is None else since), 3)
        self.mark = now


class _Stopped(Exception):  # noqa: N818 - not an error: the run ended early, on request
    """A phase ended the run early (it was cancelled before launching); carries its result."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.status)
        self.result = result


class Run:
    """One run of a checked `plan` on every node of `inventory`, recorded in `store`, told to
    `events`. `execute()` drives the phases in order; each phase saves the record when the run's
    state changes, and a failing phase records why before its error propagates."""

    def __init__(
        self, inventory: Inventory, plan: RunPlan, store: RunStore, events: RunEvents, laps: Laps
    ) -> None:
        self.inventory, self.plan, self.store, self.events, self.laps = inventory, plan, store, events, laps
        self.run_id = plan.run_id
        self.local_dir = store.dir(plan.run_id)
        self.group = NodeGroup([])  # the connected nodes, from `connect` on
        self.master_port = 0
        self._launched_at = 0.0
        self._preflight: BackgroundPreflight | None = None
        # The run exists from its first step on the nodes: a local record once they are connected
        # (a node that fails its host key check leaves nothing behind), a folder on each from prepare.
        self.record = RunRecord.start(
            plan.run_id,
            inventory,
            status="connecting",
            workload=str(plan.workload_dir.resolve()),
            entrypoint=plan.entrypoint,
            args=plan.args,
            nproc_per_node=plan.nproc_per_node,
            master_addr=inventory.master.private_ip,
        )

    def execute(self) -> RunResult:
        self.connect()
        try:
            with self.group:
                self.wait_booted()
                with self.preflight():
                    self.prepare()
                    self.ship()
                    self.await_preflight()
                self.launch()
                self.watch()
                self.collect()
        except _Stopped as stopped:
            return stopped.result
        self.events.on_phase("done", f"run {self.run_id} {self.record.status}; results in {self.local_dir}/")
        return self.record.result(self.local_dir)

    # ----------------------------------------------------------------- recording
    def _save_failed(self, exc: BaseException) -> None:
        self.store.save(self.record.model_copy(update={"status": "failed", "error": str(exc)}))

    @contextlib.contextmanager
    def _recording_failure(self, *, remove: bool, unless: threading.Event | None = None) -> Iterator[None]:
        """What the body raises records the run failed, saying why (the preflight's error when it
        failed too), and with `remove` takes the run's half-made folders off the nodes. Nothing is
        recorded, and the error is dropped, once `unless` is set (a cancel closed the connections)."""
        try:
            yield
        except BaseException as exc:
            if unless is not None and unless.is_set():
                return
            why = self._preflight.reason(exc) if self._preflight is not None else exc
            if remove:
                steps.remove_run_dirs(self.group)
            self._save_failed(why)
            if why is exc:
                raise
            raise why  # noqa: B904 - the preflight names the node; exc is its context

    def _stop_before_start(self) -> NoReturn:
        """`cancel` came before anything was launched: the run is recorded cancelled, and nothing of
        it is left on the nodes."""
        for m in self.group:
            m.status = NodeStatus(m.name, "cancelled", detail=CANCELLED_BEFORE_START)
        self.store.save(self.record.observe(self.group, self.local_dir, self.laps.timings))
        self.events.on_phase("done", f"run {self.run_id} cancelled before it started; nothing was launched")
        raise _Stopped(self.record.result(self.local_dir))

    # ----------------------------------------------------------------- phases
    def connect(self) -> None:
        """Recorded before dialling, so that `cancel` finds a run whose nodes are still being
        dialled; a node not reached (or not trusted) leaves no trace of the run here."""
        new_root = not self.store.root.exists()
        self.store.save(self.record)
        self.events.on_phase(
            "connect", f"connecting to {len(self.inventory.nodes)} node(s) of {self.inventory.cluster}"
        )
        try:
            self.group = NodeGroup.connect(self.inventory, self.plan.connect_timeout)
        except BaseException:
            shutil.rmtree(self.local_dir, ignore_errors=True)
            if new_root:
                with contextlib.suppress(OSError):
                    self.store.root.rmdir()
            raise
        self.laps.lap("connect")

    def wait_booted(self) -> None:
        """Nodes still in their first boot are waited for; a failed boot fails the run."""
        if self.store.cancel_requested(self.run_id):
            self._stop_before_start()
        try:
            boot.wait_booted(
                self.group, timeout=self.plan.boot_timeout, progress=lambda s: self.events.on_phase("boot", s)
            )
        except LeptonError as exc:
            self._save_failed(exc)
            raise
        self.laps.lap("boot")
        self.store.save(self.record.observe(self.group, self.local_dir, status="starting"))

    @contextlib.contextmanager
    def preflight(self) -> Iterator[None]:
        """The preflight (an `import torch` and a CUDA probe on every node: seconds) runs while the
        body prepares and ships; `await_preflight` holds the launch until it has passed."""
        self.events.on_phase("preflight", f"checking python, torch and GPUs on {len(self.group)} node(s)")
        self._preflight = BackgroundPreflight(self.group, self.inventory)
        with self._preflight.running():
            yield

    def prepare(self) -> None:
        """Reserve the run's folder on every node and learn which blobs each lacks."""
        files, size = len(self.plan.manifest.files), self.plan.manifest.total_bytes
        self.events.on_phase("prepare", f"run {self.run_id}: {files} file(s), {size} bytes")
        with self._recording_failure(remove=False):
            self.master_port = steps.prepare(self.group, self.run_id, self.plan.manifest, self.inventory)
        self.record.master_port = self.master_port
        self.store.save(self.record.observe(self.group, self.local_dir, status="shipping"))
        self.laps.lap("prepare")

    def ship(self) -> None:
        """Send what each node lacks; a `cancel` meanwhile ends the uploads and the run."""
        manifest = self.plan.manifest
        with cancel_watch(self.group) as cancelled, self._recording_failure(remove=True, unless=cancelled):
            need = {d for m in self.group for d in m.missing if d != AGENT_DIGEST}
            self.events.on_phase("ship", f"sending {len(need)} changed file(s) of {len(manifest.blobs())}")
            steps.ship(self.group, manifest, self.inventory)
        if cancelled.is_set():
            # `cancel` marked the run on the nodes while it shipped: it never launches.
            for m in self.group:
                m.status = NodeStatus(m.name, "cancelled", detail=CANCELLED_WHILE_SHIPPING)
            self.laps.lap("ship")
            self.store.save(self.record.observe(self.group, self.local_dir, self.laps.timings))
            self.events.on_phase("done", f"run {self.run_id} cancelled while shipping; nothing was started")
            raise _Stopped(self.record.result(self.local_dir))
        self.laps.lap("ship")

    def await_preflight(self) -> None:
        """The preflight's findings; nodes that lack the store's clients get them now, and only
        those (a node with its clients costs nothing here)."""
        assert self._preflight is not None, "await_preflight runs inside preflight()"
        with self._recording_failure(remove=True):
            found, self.laps.timings["preflight"] = self._preflight.result()
        self.laps.lap("preflight_wait")  # how long the launch waited for it after shipping
        self.events.on_phase("preflight", summary(found))
        if lacking := clients.lacking(found):
            with self._recording_failure(remove=True):
                clients.provide(
                    self.group.subset(lambda m: m.name in lacking),
                    self.inventory,
                    found,
                    lambda s: self.events.on_phase("clients", s),
                )
            self.laps.lap("clients")

    def launch(self) -> None:
        """Start torchrun on every node (unless a `cancel` came while connecting or preparing)."""
        if self.store.cancel_requested(self.run_id):
            steps.remove_run_dirs(self.group)
            self._stop_before_start()
        self.store.save(
            self.record.observe(self.group, self.local_dir, status="running")
        )  # so other processes know the run
        plan = self.plan
        self.events.on_phase(
            "launch",
            f"torchrun on {len(self.group)} node(s), {plan.nproc_per_node} process(es) each, port {self.master_port}",
        )
        self._launched_at = self.laps.mark
        steps.launch(
            self.group,
            inventory=self.inventory,
            run_id=self.run_id,
            entrypoint=plan.entrypoint,
            args=plan.args,
            nproc_per_node=plan.nproc_per_node,
            master_port=self.master_port,
            env=plan.env,
            metrics_every=plan.metrics_every,
        )
        self.laps.lap("launch")
        # Price and nodes recorded now: `runs` and `status` show a running run's cost so far.
        self.record.cost = run_cost(
            self.inventory.price, len(self.group), self.record.created, [], running=True
        )
        self.store.save(self.record.observe(self.group, self.local_dir, self.laps.timings, status="running"))

    def watch(self) -> None:
        """Stream logs and progress until every node ended (a failing node stops the others)."""
        self.events.on_phase("running", f"run {self.run_id} started; streaming logs")
        follow.watch(
            self.group,
            self.run_id,
            self.store,
            self.events,
            offsets={},
            heartbeat_timeout=self.plan.heartbeat_timeout,
            on_first_output=self._first_output,
        )
        self.laps.lap("run", since=self._launched_at)
        follow.report_stopped(self.group, self.events)

    def _first_output(self) -> None:
        now = time.monotonic()
        self.laps.timings["first_log"] = round(now - self.laps.start, 3)
        self.laps.timings["launch_to_first_log"] = round(now - self._launched_at, 3)

    def collect(self) -> None:
        """Bring every node's outputs and logs home; the record gets its final form and report."""
        follow.collect_into(self.group, self.run_id, self.local_dir, self.events, self.plan.limits)
        self.laps.lap("collect")
        self.laps.timings.update(steps.job_seconds(self.group))
        self.laps.timings["total"] = round(time.monotonic() - self.laps.start, 3)
        self.record.observe(self.group, self.local_dir, self.laps.timings)
        follow.write_report(self.record, self.store, self.inventory, self.events)  # saves the record
