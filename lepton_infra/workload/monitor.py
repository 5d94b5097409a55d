"""Follow a running job on every node and yield what happens as typed events.

Per node, each poll is SFTP reads only (state.json, then the log from the last offset): no shell
per poll, each under a deadline. A heartbeat that stops moving makes the node's agent decide
whether the supervisor is gone; a node that has not answered for `heartbeat_timeout` (a hung sshd,
a frozen machine: its reads end at their deadline) is lost. `run_job` and `attach` turn the events into
`RunEvents` callbacks with `deliver`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lepton_infra.errors import LeptonError
from lepton_infra.workload import jobspec
from lepton_infra.workload.group import NodeGroup, NodeRun
from lepton_infra.workload.metrics import MetricsTail
from lepton_infra.workload.models import TERMINAL_STATES, NodeStatus, RunEvents
from lepton_infra.workload.remote import agent

POLL_INTERVAL_S = 0.5
BUSY_POLL_INTERVAL_S = 0.1
# The heartbeat limit: a node that has not answered for this long (hung sshd, frozen machine, cut
# network) is lost; a node that answers but whose supervisor's heartbeat has not moved for this
# long gets its agent asked whether the supervisor still lives.
HEARTBEAT_TIMEOUT_S = 30.0
METRICS_POLL_S = 2.0  # how often the node's metrics file is read (the sampler writes every few s)
READ_CHUNK = 1 << 20  # what one SFTP log read returns at most
MAX_LINE_BYTES = 1 << 20  # an unterminated line longer than this is passed on as it is


@dataclass(frozen=True)
class LogLine:
    """One line of a node's log (no newline, never a LEPTON_PROGRESS line)."""

    node: str
    line: str


@dataclass(frozen=True)
class Progress:
    """The parsed JSON of a node's `LEPTON_PROGRESS {...}` line."""

    node: str
    data: dict[str, Any]


@dataclass(frozen=True)
class NodeDone:
    """The node's job ended (status.state is terminal)."""

    node: str
    status: NodeStatus


@dataclass(frozen=True)
class GangStop:
    """A node failed or was lost; the still-running `others` are being cancelled."""

    failed: NodeStatus
    others: tuple[str, ...]


@dataclass(frozen=True)
class Offsets:
    """How far each node's log has been read (saved so `attach` resumes there)."""

    offsets: dict[str, int]


@dataclass(frozen=True)
class NodeMetrics:
    """One sample of a node's metrics sampler (workload/metrics.py describes its fields)."""

    node: str
    sample: dict[str, Any]


Event = LogLine | Progress | NodeDone | GangStop | Offsets | NodeMetrics


class LineSplitter:
    """Bytes of a log in, complete lines out (as LogLine or Progress events)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.partial = b""

    def feed(self, data: bytes, *, final: bool = False) -> list[LogLine | Progress]:
        out: list[LogLine | Progress] = []
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        if (final and self.partial) or len(self.partial) > MAX_LINE_BYTES:
            # A "line" that never ends (a binary dump, a progress bar using \r) is passed on in
            # pieces rather than held in memory; the node's log file keeps it whole.
            chunks.append(self.partial)
            self.partial = b""
        if not chunks:
            return out
        # Decode the complete lines in one go (a 1 MB read is ~25k lines: per-line calls dominate).
        text = b"\n".join(chunks).decode("utf-8", "replace")
        tagged = jobspec.PROGRESS_TAG in text
        node = self.node
        for line in text.split("\n"):
            line = line.rstrip("\r")
            progress = jobspec.parse_progress(line) if tagged else None
            out.append(Progress(node, progress) if progress is not None else LogLine(node, line))
        return out


class _Watch:
    """Follows one node's log (SFTP reads from an offset) and state.json; never raises from poll."""

    def __init__(self, member: NodeRun, offset: int, heartbeat_timeout: float) -> None:
        self.member = member
        self.offset = offset
        self.lines = LineSplitter(member.name)
        self.hb: float | None = None
        self.hb_changed = time.monotonic()
        self.last_heard = time.monotonic()
        self.heartbeat_timeout = heartbeat_timeout
        self.done = False
        self.metrics = MetricsTail()
        self.metrics_at = 0.0
        # Each read must end well inside the heartbeat limit, or one hung read would outlast it.
        conn = member.conn
        conn.op_timeout = min(conn.op_timeout, max(1.0, heartbeat_timeout / 2))
        conn.connect_timeout = min(conn.connect_timeout, max(1.0, heartbeat_timeout / 2))

    def _finish(self, status: NodeStatus) -> list[Event]:
        self.done = True
        self.member.status = status
        return [NodeDone(self.member.name, status)]

    def poll(self) -> list[Event]:
        events: list[Event] = []
        conn, run_dir = self.member.conn, self.member.run_dir
        try:
            if not conn.alive:
                conn.reconnect()
            raw = conn.read_file(f"{run_dir}/state.json")
            # The log is read AFTER the state: once the state is terminal the log is complete.
            while True:
                data = conn.read_range(f"{run_dir}/logs/node.log", self.offset)
                self.offset += len(data)
                events += self.lines.feed(data)
                if len(data) < READ_CHUNK:
                    break
            if time.monotonic() - self.metrics_at >= METRICS_POLL_S:  # one more read, now and then
                self.metrics_at = time.monotonic()
                events += [NodeMetrics(conn.name, s) for s in self.metrics.poll(conn, run_dir)]
            self.unreachable_since = None
        except Exception as exc:  # noqa: BLE001 - any failure to read means unreachable for now
            silent = time.monotonic() - self.last_heard
            if silent > self.heartbeat_timeout:
                detail = f"no answer for {silent:.0f} s (heartbeat limit {self.heartbeat_timeout:g} s): {exc}"
                return events + self._finish(NodeStatus(conn.name, "lost", detail=detail))
            return events
        self.last_heard = time.monotonic()
        try:
            state = json.loads(raw) if raw else None
        except ValueError:
            state = None  # caught mid-rewrite (the in-place path of a full disk): next poll
        if not isinstance(state, dict):
            return events
        if state.get("state") in TERMINAL_STATES:
            events += self.lines.feed(b"", final=True)
            return events + self._finish(NodeStatus.from_agent(conn.name, state))
        hb = state.get("heartbeat")
        now = time.monotonic()
        if hb != self.hb:
            self.hb, self.hb_changed = hb, now
        elif now - self.hb_changed > self.heartbeat_timeout:
            # Stale heartbeat: the node's agent decides (is the supervisor process still there?).
            try:
                answer = agent(conn, str(state.get("run_id")), "status")
            except LeptonError:
                return events
            self.hb_changed = now
            if answer.get("state") == "lost":
                return events + self._finish(NodeStatus.from_agent(conn.name, answer))
        self.member.status = NodeStatus.from_agent(conn.name, state)
        return events


def monitor(
    group: NodeGroup,
    run_id: str,
    *,
    offsets: Mapping[str, int],
    stop_gang_on_failure: bool,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
) -> Iterator[Event]:
    """Stream every member's log and wait for every member's end. With `stop_gang_on_failure`, the
    first node that fails or is lost gets every other node cancelled (no orphans, no 300 s
    barriers). Members' `status` is kept current as a side effect."""
    watches = [_Watch(m, offsets.get(m.name, 0), heartbeat_timeout) for m in group]
    by_name = {w.member.name: w for w in watches}
    gang_stopped = False
    saved: dict[str, int] = {}
    while True:
        pending = NodeGroup([w.member for w in watches if not w.done])
        if not len(pending):
            return
        # poll() never raises, so every pending node is in .succeeded.
        batches = pending.run(lambda m: by_name[m.name].poll()).values()
        busy = False
        for batch in batches:
            for event in batch:
                busy = busy or isinstance(event, LogLine | Progress)
                yield event
        current = {w.member.name: w.offset for w in watches}
        if current != saved:
            yield Offsets(current)
            saved = current
        failed = [w for w in watches if w.done and w.member.state in ("failed", "lost")]
        if stop_gang_on_failure and failed and not gang_stopped:
            gang_stopped = True
            first = failed[0].member.status
            assert first is not None
            others = NodeGroup([w.member for w in watches if not w.done])
            yield GangStop(first, tuple(others.names))
            # A node that cannot be told to stop is watched on until it ends or is lost.
            others.run(lambda m: agent(m.conn, run_id, "cancel"))
            continue
        # While lines flow, poll again soon (live logs), but never spin: each poll costs round trips.
        time.sleep(BUSY_POLL_INTERVAL_S if busy else POLL_INTERVAL_S)


def deliver(event: Event, sink: RunEvents) -> None:
    """Hand one event to the `RunEvents` callbacks a UI implements (Offsets are not for UIs)."""
    if isinstance(event, LogLine):
        sink.on_log(event.node, event.line)
    elif isinstance(event, Progress):
        sink.on_progress(event.node, event.data)
    elif isinstance(event, NodeMetrics):
        handler = getattr(sink, "on_metrics", None)  # a UI written before metrics existed has none
        if handler is not None:
            handler(event.node, event.sample)
    elif isinstance(event, NodeDone):
        sink.on_node_done(event.node, event.status)
    elif isinstance(event, GangStop):
        st = event.failed
        why = f"exit code {st.exit_code}" if st.exit_code is not None else st.detail
        sink.on_phase(
            "cancel", f"{st.node} {st.state} ({why}); stopping the other {len(event.others)} node(s)"
        )
