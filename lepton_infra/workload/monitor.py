"""Follow a running job on every node and yield what happens as typed events.

Per node, each poll is SFTP reads only (state.json, then the log from the last offset): no shell
per poll, each under a deadline. A heartbeat that stops moving makes the node's agent decide
whether the supervisor is gone; a node that has not answered for `heartbeat_timeout` (a hung sshd,
a frozen machine: its reads end at their deadline) is lost. A node's end is not left to the next
poll: one `_EndWaiter` per node blocks in the agent's `wait` and wakes the loop the moment the end
is recorded. `run_job` and `attach` turn the events into `RunEvents` callbacks with `deliver`."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lepton_infra.errors import LeptonError
from lepton_infra.workload import jobspec
from lepton_infra.workload.group import ConnectedNode, NodeGroup
from lepton_infra.workload.metrics import MetricsTail
from lepton_infra.workload.models import TERMINAL_STATES, NodeStatus, RunEvents
from lepton_infra.workload.remote import agent, agent_cmd, json_answer

POLL_INTERVAL_S = 0.5
BUSY_POLL_INTERVAL_S = 0.1
# Until a node's first output, for at most this long, it is polled as if busy: the first line is
# what a user waits for after `run`, and at the idle interval it arrived up to 0.5 s late.
FIRST_OUTPUT_FAST_S = 30.0
# The heartbeat limit: a node that has not answered for this long (hung sshd, frozen machine, cut
# network) is lost; a node that answers but whose supervisor's heartbeat has not moved for this
# long gets its agent asked whether the supervisor still lives.
HEARTBEAT_TIMEOUT_S = 30.0
METRICS_POLL_S = 2.0  # how often the node's metrics file is read (the sampler writes every few s)
READ_CHUNK = 1 << 20  # what one SFTP log read returns at most (one per node per poll)
MIN_READ_CHUNK = 16 << 10  # a slow link gets smaller reads, down to this
FIRST_READ_CHUNK = 64 << 10  # doubled while reads are quick: a fast link reaches READ_CHUNK at once
# What a view gets of one line: the rest is cut (said at the end of the line), whatever the job
# printed (a 20 MB line without a newline, binary); the node's logs/node.log keeps every byte.
MAX_LINE_BYTES = 16 << 10
MAX_STATE_BYTES = 1 << 18  # a node's state.json is ~8 KB; anything past this is not read
CUT_MARK = " ... [line cut; every byte of it is in the node's logs/node.log]"
END_WAIT_S = 20.0  # the node agent's `wait` answers after at most this long (node/agent.py WAIT_MAX_S)


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
    """Bytes of a log in, complete lines out (as LogLine or Progress events), each line at most
    MAX_LINE_BYTES: memory stays bounded by one read, whatever the job prints."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.partial = b""
        self.skipping = False  # inside a line already passed on cut: drop bytes up to its newline

    def feed(self, data: bytes, *, final: bool = False) -> Iterator[LogLine | Progress]:
        """The lines `data` completes, made lazily (a 1 MB read of empty lines is a million)."""
        limit = MAX_LINE_BYTES
        body: bytes | None = None  # the complete lines, joined by newlines
        last = data.rfind(b"\n")
        tail = data[last + 1 :]
        if last >= 0:
            if self.skipping:  # data starts with the end of a line already passed on cut
                first = data.find(b"\n")
                body = data[first + 1 : last] if first < last else None
                self.skipping = False
            else:
                body = self.partial + data[:last]
            self.partial = b""
        head: bytes | None = None  # the start of a line too long to wait for, or the last one
        if not self.skipping:
            self.partial += tail[: limit + 1 - len(self.partial)]
            if len(self.partial) > limit:
                # A "line" that never ends (a binary dump, a progress bar using \r): its head now.
                head, self.partial, self.skipping = self.partial, b"", True
        if final:
            head = head or self.partial or None
            self.partial, self.skipping = b"", False
        del data, tail
        return self._events(body, head)

    def _events(self, body: bytes | None, head: bytes | None) -> Iterator[LogLine | Progress]:
        # Decode the complete lines in one go (a 1 MB read is ~25k lines: per-line calls dominate;
        # and never bytes.join of a million pieces: it costs 80 bytes of bookkeeping each).
        node = self.node
        if body is not None:
            text = body.decode("utf-8", "replace")
            del body
            tagged = jobspec.PROGRESS_TAG in text
            for line in text.split("\n"):
                line = line.rstrip("\r")
                if len(line) > MAX_LINE_BYTES:
                    yield LogLine(node, line[:MAX_LINE_BYTES] + CUT_MARK)
                    continue
                progress = jobspec.parse_progress(line) if tagged else None
                yield Progress(node, progress) if progress is not None else LogLine(node, line)
        if head is not None:
            line = head[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
            yield LogLine(node, line + CUT_MARK if len(head) > MAX_LINE_BYTES else line)


class _Watch:
    """Follows one node's log (SFTP reads from an offset) and state.json; never raises from poll."""

    def __init__(self, member: ConnectedNode, offset: int, heartbeat_timeout: float, run_id: str) -> None:
        self.member = member
        self.run_id = run_id
        self.offset = offset
        self.lines = LineSplitter(member.name)
        self.hb: float | None = None
        self.hb_changed = time.monotonic()
        self.last_heard = time.monotonic()
        self.heartbeat_timeout = heartbeat_timeout
        self.done = False
        self.metrics = MetricsTail()
        self.metrics_at = 0.0
        self.more = False  # the last read was a full chunk: there is more log to read at once
        self.started = time.monotonic()
        self.heard_output = False
        # Sized to the link: a read must end well inside its deadline, or a slow but healthy
        # link (a backlog of log at 30 KB/s) would time out every read and the node look lost.
        self.chunk = FIRST_READ_CHUNK
        # Each read must end well inside the heartbeat limit, or one hung read would outlast it.
        conn = member.conn
        conn.op_timeout = min(conn.op_timeout, max(1.0, heartbeat_timeout / 2))
        conn.connect_timeout = min(conn.connect_timeout, max(1.0, heartbeat_timeout / 2))

    @property
    def eager(self) -> bool:
        """Poll again soon: more log is waiting, or the job's first output may come any moment."""
        waiting = not self.heard_output and time.monotonic() - self.started < FIRST_OUTPUT_FAST_S
        return not self.done and (self.more or waiting)

    def _finish(self, status: NodeStatus) -> list[Iterable[Event]]:
        self.done = True
        self.member.status = status
        return [[NodeDone(self.member.name, status)]]

    def poll(self) -> list[Iterable[Event]]:
        """What happened since the last poll, as iterables to chain (lines are made lazily)."""
        events: list[Iterable[Event]] = []
        conn, run_dir = self.member.conn, self.member.run_dir
        try:
            if not conn.alive:
                conn.reconnect()
            # Written by the node (and so by anything the job does there): read a bounded amount.
            raw = conn.read_range(f"{run_dir}/state.json", 0, MAX_STATE_BYTES)
            self.last_heard = time.monotonic()  # it answers: slow, maybe, but not lost
            # The log is read AFTER the state: once the state is terminal and a read comes back
            # short, the log is complete. One chunk per poll: memory is bounded by it.
            started = time.monotonic()
            data = conn.read_range(f"{run_dir}/logs/node.log", self.offset, self.chunk)
            took = time.monotonic() - started
            self.offset += len(data)
            self.more = len(data) >= self.chunk
            self.heard_output = self.heard_output or bool(data)
            if took > conn.op_timeout / 4:
                self.chunk = max(MIN_READ_CHUNK, self.chunk // 2)
            elif self.more and took < conn.op_timeout / 8:
                self.chunk = min(READ_CHUNK, self.chunk * 2)
            events.append(self.lines.feed(data))
            del data
            if time.monotonic() - self.metrics_at >= METRICS_POLL_S:  # one more read, now and then
                self.metrics_at = time.monotonic()
                events.append([NodeMetrics(conn.name, s) for s in self.metrics.poll(conn, run_dir)])
        except Exception as exc:  # noqa: BLE001 - any failure to read means unreachable for now
            self.chunk = MIN_READ_CHUNK
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
            if self.more:
                return events  # the rest of the log first, at the next poll
            events.append(self.lines.feed(b"", final=True))
            return events + self._finish(NodeStatus.from_agent(conn.name, state))
        hb = state.get("heartbeat")
        now = time.monotonic()
        if hb != self.hb:
            self.hb, self.hb_changed = hb, now
        elif now - self.hb_changed > self.heartbeat_timeout:
            # Stale heartbeat: the node's agent decides (is the supervisor process still there?).
            try:
                answer = agent(conn, self.run_id, "status")  # ours, never the one state.json names
            except LeptonError:
                return events
            self.hb_changed = now
            if answer.get("state") == "lost":
                return events + self._finish(NodeStatus.from_agent(conn.name, answer))
        self.member.status = NodeStatus.from_agent(conn.name, state)
        return events


class _EndWaiter(threading.Thread):
    """Blocks in the node agent's `wait` (which sleeps in flock on the supervisor's end lock) and
    sets `wake` the moment the node's run has ended, so the monitor reads the end at once instead
    of at its next poll. Any failure just ends the waiter: the polling finds the end all the same."""

    def __init__(self, member: ConnectedNode, run_id: str, wake: threading.Event) -> None:
        super().__init__(name=f"end-wait-{member.name}", daemon=True)
        self.member, self.run_id, self.wake = member, run_id, wake

    def run(self) -> None:
        conn = self.member.conn
        while True:
            started = time.monotonic()
            try:
                command = agent_cmd(conn.inventory.python, self.run_id, "wait")
                # A deadline well past the node's own limit: a node that answers never trips it.
                result = conn.run(command, timeout=END_WAIT_S + max(conn.op_timeout, 10.0))
                state = json_answer(conn, result.stdout, "agent wait").get("state")
            except Exception:  # noqa: BLE001 - a lost connection is the monitor's business
                return
            if state not in ("starting", "running"):
                self.wake.set()
                return
            if time.monotonic() - started < END_WAIT_S / 2:
                return  # it answered early while running: it cannot block there; polling it is


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
    watches = [_Watch(m, offsets.get(m.name, 0), heartbeat_timeout, run_id) for m in group]
    by_name = {w.member.name: w for w in watches}
    wake = threading.Event()  # set by a node's end waiter: poll now rather than after the sleep
    for w in watches:
        _EndWaiter(w.member, run_id, wake).start()
    gang_stopped = False
    saved: dict[str, int] = {}
    while True:
        pending = NodeGroup([w.member for w in watches if not w.done])
        if not len(pending):
            return
        wake.clear()  # before the poll: an end recorded during it wakes the next sleep
        # poll() never raises, so every pending node is in .succeeded.
        batches = pending.run(lambda m: by_name[m.name].poll()).values()
        busy = any(w.eager for w in watches)
        for batch in batches:
            for event in itertools.chain.from_iterable(batch):
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
        if all(w.done for w in watches):
            return  # the last end just seen: no sleep before saying so
        # While lines flow, poll again soon (live logs), but never spin: each poll costs round trips.
        wake.wait(BUSY_POLL_INTERVAL_S if busy else POLL_INTERVAL_S)


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
