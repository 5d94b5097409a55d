"""Following a run to its end and bringing it home, the part `run_job` and `attach` share: stream
the nodes' events to the UI (a UI that chokes never stops the run), say what the nodes' agents had
to stop, collect every reachable node, and write the report beside run.json."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec, steps
from lepton_infra.workload.collecting import Limits
from lepton_infra.workload.group import NodeGroup
from lepton_infra.workload.models import RunEvents
from lepton_infra.workload.monitor import Event, LogLine, Offsets, Progress, deliver, monitor
from lepton_infra.workload.record import RunRecord, RunStore


def deliver_safely(event: Event, sink: RunEvents) -> None:
    """Hand an event to the UI; a UI that chokes on one (a progress value it cannot draw) gets it
    as the plain log line instead, and never stops the run: streaming, collecting and recording
    go on whatever the job printed."""
    try:
        deliver(event, sink)
    except Exception:  # noqa: BLE001 - a rendering bug must not lose the run
        if isinstance(event, Progress):
            with contextlib.suppress(Exception):
                sink.on_log(event.node, f"{jobspec.PROGRESS_TAG} {json.dumps(event.data)}")


def watch(
    group: NodeGroup,
    run_id: str,
    store: RunStore,
    events: RunEvents,
    *,
    offsets: Mapping[str, int],
    heartbeat_timeout: float,
    on_first_output: Callable[[], None] | None = None,
) -> None:
    """Monitor until every node ended; a failing (or lost) node gets the others stopped. The log
    offsets are saved as they move, so a later `attach` resumes where this one stopped."""
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
        deliver_safely(event, events)


def report_stopped(group: NodeGroup, events: RunEvents) -> None:
    """Say on the terminal which processes the nodes' agents had to stop (daemons the job left
    behind, ones that ignored SIGTERM) and whose upload to the store failed; run.json keeps both."""
    for m in group:
        said = m.status.killed_line() if m.status else None
        if said:
            events.on_phase("cleanup", said)
        failed = (m.status.results or {}).get("error") if m.status else None
        if failed:
            events.on_phase("store", f"{m.name}: storing its results failed: {failed}")


def collect_into(
    group: NodeGroup, run_id: str, local_dir: Path, events: RunEvents, limits: Limits | None
) -> None:
    """Collect every node that still answers into `local_dir`, saying which ones were not (and
    where their results are safe, when they stored them) and what the limits left behind."""
    # A lost node did not answer within the heartbeat limit: asking it again would only wait.
    lost = [m.name for m in group if m.state == "lost"]
    reachable = group.subset(lambda m: m.state != "lost")
    events.on_phase("collect", f"collecting outputs and logs from {len(reachable)} node(s) into {local_dir}/")
    for name in lost:
        events.on_phase("collect", f"{name}: lost, not collected (`lepton-infra collect` once it answers)")
    for name, err in steps.collect(reachable, run_id, local_dir, limits).failed.items():
        status = group[name].status
        stored = (status.results or {}).get("url") if status else None
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


def write_report(record: RunRecord, store: RunStore, inventory: Inventory, events: RunEvents) -> None:
    """Metrics summaries and cost into the record, TensorBoard files beside it; then the record is
    saved and metrics.png drawn from it by a background process (report.start_plot), so the
    run returns without waiting for matplotlib (`report.wait_for_plot` waits for it)."""
    from lepton_infra.workload.report import finish, start_plot

    written = finish(record, store.dir(record.run_id), inventory.price)
    store.save(record)  # the drawing process reads the record as saved here, never writes it
    if written:  # finish writes nothing for a run without samples or progress: nothing to draw
        written["plot"] = start_plot(store.dir(record.run_id))
    for what, where in written.items():
        if where.startswith("not written"):  # written ones are listed with the results
            events.on_phase("collect", f"{what}: {where}")
