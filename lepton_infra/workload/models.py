"""Result and status types of the workload layer, and the `RunEvents` callbacks a UI implements.

Everything here is plain data (dataclasses) so a CLI can render it and `dataclasses.asdict` can
turn it into JSON."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "lost"})


def iso(ts: float | None) -> str | None:
    """Node timestamps (epoch seconds) as ISO-8601 UTC, for humans and run.json."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat(timespec="seconds")


@dataclass
class NodeStatus:
    """One node's view of a run, read from its `state.json` by the node-side agent.

    `state`: starting | running | succeeded | failed | cancelled | lost (supervisor or node gone)
    | unknown (no such run there). Times are ISO-8601 UTC strings; `heartbeat_age_s` is measured
    on the node itself, so clock skew between controller and node does not matter."""

    node: str
    state: str
    exit_code: int | None = None
    pid: int | None = None
    started: str | None = None
    ended: str | None = None
    heartbeat: str | None = None
    heartbeat_age_s: float | None = None
    detail: str = ""
    # The node's upload of its results to the store, when the inventory has one: {"url"} or {"error"}.
    results: dict[str, Any] | None = None
    # The node's newest metrics sample (CPU, memory, GPUs) while the job runs; None without one.
    metrics: dict[str, Any] | None = None
    # Processes the node's agent had to stop (leftovers of the job, or ones that needed SIGKILL):
    # [{"pid", "command", "signal", "escaped"}], the first few of `killed_count`.
    killed: list[dict[str, Any]] = field(default_factory=list)
    killed_count: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_agent(cls, node: str, data: dict[str, Any]) -> NodeStatus:
        now = data.get("now")
        hb = data.get("heartbeat")
        age = round(now - hb, 1) if isinstance(now, int | float) and isinstance(hb, int | float) else None
        return cls(
            node=node,
            state=str(data.get("state", "unknown")),
            exit_code=data.get("exit_code"),
            pid=data.get("pid"),
            started=iso(data.get("started")),
            ended=iso(data.get("ended")),
            heartbeat=iso(hb),
            heartbeat_age_s=age if data.get("state") in ("starting", "running") else None,
            detail=str(data.get("detail") or ""),
            results=data["results"] if isinstance(data.get("results"), dict) else None,
            metrics=data["metrics"] if isinstance(data.get("metrics"), dict) else None,
            killed=[k for k in data.get("killed") or [] if isinstance(k, dict)],
            killed_count=int(data.get("killed_count") or 0),
        )

    def killed_line(self) -> str | None:
        """One line naming what had to be stopped, or None when nothing was."""
        if not self.killed_count:
            return None
        shown = ", ".join(
            f"pid {k.get('pid')} `{k.get('command', '?')}` ({k.get('signal', '?')})" for k in self.killed[:5]
        )
        more = f" and {self.killed_count - 5} more" if self.killed_count > 5 else ""
        return f"{self.node}: stopped {self.killed_count} process(es) the job left running: {shown}{more}"


@dataclass
class NodeResult:
    """What one node did in a run. `output_dir` is the local copy of its LEPTON_OUTPUT_DIR
    (`runs/<run-id>/<node>/output/`); `log_path` the local copy of its log."""

    name: str
    state: str
    exit_code: int | None = None
    started: str | None = None
    ended: str | None = None
    bytes_shipped: int = 0
    files_shipped: int = 0
    bytes_collected: int = 0
    output_dir: Path | None = None
    log_path: Path | None = None
    detail: str = ""
    collect_error: str | None = None  # why its results are not (all) here; see `store_url`
    store_url: str | None = None  # where the node itself stored its results, if it did


@dataclass
class RunResult:
    """The outcome of `run_job`/`attach`/`collect`. `status` is "succeeded" only if every node
    succeeded and its results are here (or in the store); "failed" if any node failed or was lost,
    or its results could not be brought home (`NodeResult.collect_error`); "cancelled" if it was stopped on request.
    `timings` (seconds): connect, preflight, prepare, ship, launch, first_log (launch start to the first log
    line seen), run (launch start to the last node's end), collect, total."""

    run_id: str
    status: str
    nodes: list[NodeResult]
    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def node(self, name: str) -> NodeResult:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


class RunEvents(Protocol):
    """Callbacks for a live view of a run. All are called from the thread that called `run_job`
    (never concurrently), in order. Subclass it to get no-op defaults for the ones you skip.

    - on_phase(phase, detail): phase is one of connect, boot (nodes finishing their first
      boot), preflight, prepare, ship, launch, running, cancel,
      collect, done; detail is a human sentence.
    - on_log(node, line): one line of a node's log, without trailing newline and without the
      `LEPTON_PROGRESS` lines (those go to on_progress; they stay in the raw log file).
    - on_progress(node, progress): the parsed JSON of a `LEPTON_PROGRESS {...}` line
      (keys epoch, epochs, step, steps, loss by convention).
    - on_node_done(node, status): the node's job ended (status.state is terminal).
    - on_metrics(node, sample): a sample of the node's metrics (CPU, memory, GPUs; see
      `lepton_infra.workload.metrics`), every few seconds while the job runs."""

    def on_phase(self, phase: str, detail: str) -> None:
        return None

    def on_log(self, node: str, line: str) -> None:
        return None

    def on_progress(self, node: str, progress: dict[str, Any]) -> None:
        return None

    def on_node_done(self, node: str, status: NodeStatus) -> None:
        return None

    def on_metrics(self, node: str, sample: dict[str, Any]) -> None:
        return None


class NullEvents(RunEvents):
    """Ignores everything; the default when no `events` is given."""
