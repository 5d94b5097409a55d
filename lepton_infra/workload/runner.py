"""Run a workload on every node of an inventory: connect, ship, launch, monitor, collect; and the
later-process operations on a run (attach, status, logs, collect, cancel).

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
    runs/<run-id>/run.json                run id, cluster, workload, args, per-node status,
                                          exit codes, timings, bytes moved
    runs/<run-id>/<node>/output/...       that node's LEPTON_OUTPUT_DIR
    runs/<run-id>/<node>/logs/node.log    its log (and logs/agent.log, the supervisor's own)
    runs/<run-id>/<node>/state.json       its final state (and spec.json: the exact command and env)
    runs/<run-id>/.log-offsets.json       how far each node's log was streamed (attach resumes there)

A controller interrupted (Ctrl-C, SIGKILL) leaves the job running; `attach` picks it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lepton_infra.errors import ConfigError, LeptonError, NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec
from lepton_infra.workload.manifest import Manifest, build_manifest, write_stream
from lepton_infra.workload.models import (
    TERMINAL_STATES,
    NodeResult,
    NodeStatus,
    NullEvents,
    RunEvents,
    RunResult,
    iso,
)
from lepton_infra.workload.ssh import NodeConnection, connect_all, parallel

_NODE_CODE = Path(__file__).parent / "node"
BOOTSTRAP_SOURCE = (_NODE_CODE / "bootstrap.py").read_text(encoding="utf-8")
AGENT_SOURCE = (_NODE_CODE / "agent.py").read_bytes()
AGENT_DIGEST = hashlib.sha256(AGENT_SOURCE).hexdigest()

POLL_INTERVAL_S = 0.5
BUSY_POLL_INTERVAL_S = 0.1
STALE_AFTER_S = 30.0  # heartbeat unchanged this long: ask the node whether the supervisor lives
LOST_AFTER_S = 60.0  # node unreachable this long: it is lost
RECORD = "run.json"
OFFSETS = ".log-offsets.json"


# --------------------------------------------------------------------------- remote commands


def _remote_run_dir(run_id: str) -> str:
    return '"$HOME"/.lepton/runs/' + shlex.quote(run_id)


def _bootstrap_cmd(python: str, *args: str) -> str:
    return " ".join([shlex.quote(python), "-c", shlex.quote(BOOTSTRAP_SOURCE), *map(shlex.quote, args)])


def _agent_cmd(python: str, run_id: str, verb: str) -> str:
    """The agent shipped with the run; a node without the run answers 'unknown' instead of failing."""
    missing = json.dumps({"state": "unknown", "detail": "no such run on this node"})
    return (
        f'R={_remote_run_dir(run_id)}; if [ -f "$R/.agent/agent.py" ]; then '
        f'exec {shlex.quote(python)} "$R/.agent/agent.py" {verb} "$R"; '
        f"else echo {shlex.quote(missing)}; fi"
    )


def _json_out(conn: NodeConnection, data: bytes, what: str) -> dict[str, Any]:
    try:
        # Login shells may print banners first: the agent's answer is the last line.
        value = json.loads(data.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise NodeError(conn.name, f"unreadable answer from {what}: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise NodeError(conn.name, f"unexpected answer from {what}: {value!r}")
    return value


def _agent(conn: NodeConnection, run_id: str, verb: str, *, stdin: bytes | None = None) -> dict[str, Any]:
    result = conn.run(_agent_cmd(conn.inventory.python, run_id, verb), stdin=stdin)
    return _json_out(conn, result.stdout, f"agent {verb}")


# --------------------------------------------------------------------------- local record


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_status_of(states: Sequence[str]) -> str:
    """A run's status from its nodes' states."""
    if not all(s in TERMINAL_STATES or s == "unknown" for s in states):
        return "running"
    if any(s in ("failed", "lost", "unknown") for s in states):
        return "failed"
    if any(s == "cancelled" for s in states):
        return "cancelled"
    return "succeeded"


@dataclass
class _NodeRun:
    """Controller-side bookkeeping for one node of a run."""

    conn: NodeConnection
    rank: int
    run_dir: str = ""  # absolute, on the node
    missing: list[str] = field(default_factory=list)
    bytes_shipped: int = 0
    files_shipped: int = 0
    bytes_collected: int = 0
    status: NodeStatus | None = None

    @property
    def name(self) -> str:
        return self.conn.name


def _record(
    *,
    run_id: str,
    inventory: Inventory,
    status: str,
    nodes: Sequence[_NodeRun],
    local_dir: Path,
    base: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = dict(base or {})
    old_nodes = {n.get("name"): n for n in record.get("nodes", []) if isinstance(n, dict)}
    record.update(run_id=run_id, cluster=inventory.cluster, cloud=inventory.cloud, status=status)
    node_records = []
    for n in nodes:
        old = old_nodes.get(n.name, {})
        st = n.status
        node_records.append(
            {
                **old,
                "name": n.name,
                "host": n.conn.node.host,
                "rank": n.rank,
                "remote_run_dir": n.run_dir or old.get("remote_run_dir"),
                "state": st.state if st else old.get("state", "unknown"),
                "exit_code": st.exit_code if st else old.get("exit_code"),
                "pid": st.pid if st else old.get("pid"),
                "started": st.started if st else old.get("started"),
                "ended": st.ended if st else old.get("ended"),
                "detail": st.detail if st else old.get("detail", ""),
                "bytes_shipped": n.bytes_shipped or old.get("bytes_shipped", 0),
                "files_shipped": n.files_shipped or old.get("files_shipped", 0),
                "bytes_collected": n.bytes_collected or old.get("bytes_collected", 0),
                "output_dir": str(local_dir / n.name / "output"),
                "log_path": str(local_dir / n.name / "logs" / "node.log"),
            }
        )
    record["nodes"] = node_records
    record["bytes"] = {
        "shipped": sum(int(n.get("bytes_shipped") or 0) for n in node_records),
        "collected": sum(int(n.get("bytes_collected") or 0) for n in node_records),
    }
    record["timings"] = {**record.get("timings", {}), **(timings or {})}
    record["updated"] = iso(time.time())
    return record


def _result(record: Mapping[str, Any], local_dir: Path) -> RunResult:
    nodes = []
    for n in record.get("nodes", []):
        out = local_dir / n["name"] / "output"
        log = local_dir / n["name"] / "logs" / "node.log"
        nodes.append(
            NodeResult(
                name=n["name"],
                state=n.get("state", "unknown"),
                exit_code=n.get("exit_code"),
                started=n.get("started"),
                ended=n.get("ended"),
                bytes_shipped=int(n.get("bytes_shipped") or 0),
                files_shipped=int(n.get("files_shipped") or 0),
                bytes_collected=int(n.get("bytes_collected") or 0),
                output_dir=out if out.is_dir() else None,
                log_path=log if log.is_file() else None,
                detail=n.get("detail", ""),
            )
        )
    return RunResult(
        run_id=record["run_id"],
        status=record.get("status", "unknown"),
        nodes=nodes,
        run_dir=local_dir,
        timings=dict(record.get("timings", {})),
    )


# --------------------------------------------------------------------------- monitoring


class _Watch:
    """Follows one node's log (SFTP reads from an offset) and state.json; never raises from poll."""

    def __init__(self, node_run: _NodeRun, offset: int, connect_timeout: float) -> None:
        self.nr = node_run
        self.offset = offset
        self.partial = b""
        self.hb: float | None = None
        self.hb_changed = time.monotonic()
        self.unreachable_since: float | None = None
        self.done = False
        self.connect_timeout = connect_timeout

    @property
    def conn(self) -> NodeConnection:
        return self.nr.conn

    def _lines(self, data: bytes, final: bool) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        if final and self.partial:
            chunks.append(self.partial)
            self.partial = b""
        for raw in chunks:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            progress = jobspec.parse_progress(line)
            out.append(("progress", progress) if progress is not None else ("log", line))
        return out

    def _finish(self, status: NodeStatus) -> list[tuple[str, Any]]:
        self.done = True
        self.nr.status = status
        return [("done", status)]

    def poll(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        run_dir = self.nr.run_dir
        try:
            if not self.conn.alive:
                self.conn.reconnect()
            raw = self.conn.read_file(f"{run_dir}/state.json")
            # The log is read AFTER the state: once the state is terminal the log is complete.
            while True:
                data = self.conn.read_range(f"{run_dir}/logs/node.log", self.offset)
                self.offset += len(data)
                events += self._lines(data, final=False)
                if len(data) < (1 << 20):
                    break
            self.unreachable_since = None
        except (LeptonError, OSError, EOFError, Exception) as exc:  # noqa: BLE001 - any failure = unreachable
            now = time.monotonic()
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since > LOST_AFTER_S:
                return events + self._finish(NodeStatus(self.conn.name, "lost", detail=f"unreachable: {exc}"))
            return events
        state = json.loads(raw) if raw else None
        if not isinstance(state, dict):
            return events
        if state.get("state") in TERMINAL_STATES:
            events += self._lines(b"", final=True)
            return events + self._finish(NodeStatus.from_agent(self.conn.name, state))
        hb = state.get("heartbeat")
        now = time.monotonic()
        if hb != self.hb:
            self.hb, self.hb_changed = hb, now
        elif now - self.hb_changed > STALE_AFTER_S:
            # Stale heartbeat: the node's agent decides (is the supervisor process still there?).
            try:
                answer = _agent(self.conn, str(state.get("run_id")), "status")
            except LeptonError:
                return events
            self.hb_changed = now
            if answer.get("state") == "lost":
                return events + self._finish(NodeStatus.from_agent(self.conn.name, answer))
        self.nr.status = NodeStatus.from_agent(self.conn.name, state)
        return events


def _monitor(
    nodes: Sequence[_NodeRun],
    run_id: str,
    events: RunEvents,
    *,
    offsets: Mapping[str, int],
    connect_timeout: float,
    stop_gang_on_failure: bool,
    on_first_log: Callable[[], None] | None = None,
    save_offsets: Callable[[dict[str, int]], None] | None = None,
) -> None:
    """Stream every node's log and wait for every node's end. With `stop_gang_on_failure`, the first
    node that fails or is lost gets every other node cancelled (no orphans, no 300 s barriers)."""
    watches = [_Watch(n, offsets.get(n.name, 0), connect_timeout) for n in nodes]
    gang_stopped = False
    saved: dict[str, int] = {}
    while True:
        pending = [w for w in watches if not w.done]
        if not pending:
            break
        batches = parallel(pending, lambda w: w.poll())
        busy = False
        for watch, batch in zip(pending, batches, strict=True):
            for kind, value in batch:
                if kind == "log":
                    busy = True
                    if on_first_log:
                        on_first_log()
                        on_first_log = None
                    events.on_log(watch.conn.name, value)
                elif kind == "progress":
                    busy = True
                    if on_first_log:
                        on_first_log()
                        on_first_log = None
                    events.on_progress(watch.conn.name, value)
                else:
                    events.on_node_done(watch.conn.name, value)
        current = {w.conn.name: w.offset for w in watches}
        if save_offsets and current != saved:
            save_offsets(current)
            saved = current
        failed = [w for w in watches if w.done and w.nr.status and w.nr.status.state in ("failed", "lost")]
        if stop_gang_on_failure and failed and not gang_stopped:
            gang_stopped = True
            first = failed[0].nr.status
            assert first is not None
            others = [w for w in watches if not w.done]
            why = f"exit code {first.exit_code}" if first.exit_code is not None else first.detail
            events.on_phase(
                "cancel", f"{first.node} {first.state} ({why}); stopping the other {len(others)} node(s)"
            )

            def stop(w: _Watch) -> None:
                with contextlib.suppress(LeptonError):
                    _agent(w.conn, run_id, "cancel")

            parallel(others, stop)
            continue
        # While lines flow, poll again soon (live logs), but never spin: each poll costs round trips.
        time.sleep(BUSY_POLL_INTERVAL_S if busy else POLL_INTERVAL_S)


# --------------------------------------------------------------------------- collection


def _extract_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None  # e.g. a symlink pointing outside: skip it rather than lose the rest


def _collect_node(n: _NodeRun, run_id: str, local_dir: Path) -> None:
    dest = local_dir / n.name
    dest.mkdir(parents=True, exist_ok=True)

    def consume(stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(dest, filter=_extract_filter)

    _, _, count = n.conn.run_download(_agent_cmd(n.conn.inventory.python, run_id, "pack"), consume)
    n.bytes_collected = count
    state = _read_json(dest / "state.json")
    if state is not None and (n.status is None or not n.status.terminal):
        n.status = NodeStatus.from_agent(n.name, state)


def _collect(nodes: Sequence[_NodeRun], run_id: str, local_dir: Path, events: RunEvents) -> None:
    events.on_phase("collect", f"collecting outputs and logs from {len(nodes)} node(s) into {local_dir}/")

    def one(n: _NodeRun) -> LeptonError | None:
        try:
            _collect_node(n, run_id, local_dir)
        except LeptonError as exc:
            return exc  # one unreachable node must not cost the others' results
        return None

    for n, err in zip(nodes, parallel(list(nodes), one), strict=True):
        if err is not None:
            events.on_phase("collect", f"{n.name}: could not collect: {err}")


def _job_seconds(nodes: Sequence[_NodeRun]) -> dict[str, float]:
    import datetime as dt

    starts, ends = [], []
    for n in nodes:
        if n.status and n.status.started and n.status.ended:
            starts.append(dt.datetime.fromisoformat(n.status.started).timestamp())
            ends.append(dt.datetime.fromisoformat(n.status.ended).timestamp())
    return {"job": round(max(ends) - min(starts), 3)} if starts else {}


# --------------------------------------------------------------------------- run_job


def _check_timeout(connect_timeout: float) -> None:
    if not isinstance(connect_timeout, int | float) or connect_timeout <= 0:
        raise ConfigError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")


def _prepare(nodes: Sequence[_NodeRun], run_id: str, manifest: Manifest, inventory: Inventory) -> int:
    """Reserve the run dir everywhere, learn the missing blobs; returns the rendezvous port."""
    blobs = manifest.blobs()
    blobs[AGENT_DIGEST] = len(AGENT_SOURCE)
    preferred = jobspec.master_port_for(run_id)

    def one(n: _NodeRun) -> dict[str, Any]:
        request: dict[str, Any] = {"run_id": run_id, "blobs": blobs}
        if n.rank == 0:
            request["port_probe"] = {"addr": inventory.master.private_ip, "port": preferred}
        result = n.conn.run(_bootstrap_cmd(inventory.python, "prepare"), stdin=json.dumps(request).encode())
        return _json_out(n.conn, result.stdout, "prepare")

    answers = parallel(list(nodes), one)
    taken = [n.name for n, a in zip(nodes, answers, strict=True) if a.get("exists")]
    if taken:
        # Undo our own reservations; never touch the existing run's files.
        created = [n for n, a in zip(nodes, answers, strict=True) if not a.get("exists")]
        for n, a in zip(nodes, answers, strict=True):
            n.run_dir = a["run_dir"]
        _remove_run_dirs(created)
        raise ConfigError(
            f"run id {run_id!r} already exists on node(s) {', '.join(taken)}; choose another --run-id "
            "(run ids must be unique so two runs never mix files)"
        )
    for n, a in zip(nodes, answers, strict=True):
        n.run_dir = a["run_dir"]
        n.missing = list(a.get("missing", []))
    port = answers[0].get("port")
    return int(port) if port else preferred


def _remove_run_dirs(nodes: Sequence[_NodeRun]) -> None:
    def rm(n: _NodeRun) -> None:
        if n.run_dir:
            with contextlib.suppress(LeptonError):
                n.conn.run(f"rm -rf {shlex.quote(n.run_dir)}", check=False)

    parallel(list(nodes), rm)


def _ship(nodes: Sequence[_NodeRun], manifest: Manifest, inventory: Inventory) -> None:
    def one(n: _NodeRun) -> None:
        def produce(out: IO[bytes]) -> int:
            return write_stream(manifest, n.missing, AGENT_SOURCE, AGENT_DIGEST, out)

        cmd = _bootstrap_cmd(inventory.python, "receive", n.run_dir)
        result, content, _wire = n.conn.run_upload(cmd, produce)
        n.bytes_shipped = content
        n.files_shipped = len([d for d in n.missing if d != AGENT_DIGEST])
        _json_out(n.conn, result.stdout, "receive")

    parallel(list(nodes), one)


def _launch(
    nodes: Sequence[_NodeRun],
    *,
    inventory: Inventory,
    run_id: str,
    entrypoint: str,
    args: Sequence[str],
    nproc_per_node: int,
    master_port: int,
    env: Mapping[str, str],
) -> None:
    def one(n: _NodeRun) -> NodeStatus:
        spec = {
            "run_id": run_id,
            "node": n.name,
            "argv": jobspec.torchrun_argv(
                python=inventory.python,
                nnodes=len(nodes),
                node_rank=n.rank,
                nproc_per_node=nproc_per_node,
                master_addr=inventory.master.private_ip,
                master_port=master_port,
                entrypoint=entrypoint,
                args=args,
            ),
            "env": jobspec.node_env(
                inventory,
                rank=n.rank,
                run_id=run_id,
                output_dir=f"{n.run_dir}/output",
                nproc_per_node=nproc_per_node,
                extra=env,
            ),
            "cwd": f"{n.run_dir}/workload",
        }
        answer = _agent(n.conn, run_id, "launch", stdin=json.dumps(spec).encode())
        n.status = NodeStatus.from_agent(n.name, answer)
        return n.status

    outcomes: list[LeptonError | None] = parallel(list(nodes), lambda n: _try(one, n))
    errors = [e for e in outcomes if e is not None]
    if errors:
        # Some nodes started, some did not: stop the started ones, nothing half-run stays behind.
        parallel(
            [n for n, e in zip(nodes, outcomes, strict=True) if e is None],
            lambda n: _try(_agent, n.conn, run_id, "cancel"),
        )
        raise errors[0]


def _try(fn: Callable[..., Any], *args: Any) -> LeptonError | None:
    try:
        fn(*args)
    except LeptonError as exc:
        return exc
    return None


def run_job(
    inventory: Inventory,
    workload_dir: Path,
    args: Sequence[str] = (),
    *,
    nproc_per_node: int = 1,
    run_id: str | None = None,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    events: RunEvents | None = None,
) -> RunResult:
    """Ship `workload_dir` to every node, run its entrypoint under torchrun on all of them, stream
    logs and progress to `events`, collect outputs and logs into `runs_dir/<run-id>/`.

    Returns the RunResult whatever the job did (status "failed" when a node failed or was lost;
    the other nodes are then stopped). Raises ConfigError for bad input (no workload, no
    entrypoint, bad run id/args/env, a run id already used) before anything runs, and NodeError
    (HostKeyMismatch for a wrong host key) when a node cannot be reached or refuses a command;
    connection problems are found before anything runs on any node."""
    events = events or NullEvents()
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 3)
        return now

    workload_dir = Path(workload_dir)
    entrypoint = jobspec.read_entrypoint(workload_dir)
    args = jobspec.check_args(args)
    nproc_per_node = jobspec.check_nproc(nproc_per_node)
    extra_env = jobspec.check_env(env)
    run_id = jobspec.check_run_id(run_id) if run_id is not None else jobspec.new_run_id()
    _check_timeout(connect_timeout)
    local_dir = Path(runs_dir) / run_id
    if (local_dir / RECORD).exists():
        raise ConfigError(f"run id {run_id!r} already has results in {local_dir}/; choose another run id")
    manifest = build_manifest(workload_dir)
    if entrypoint not in manifest.files:
        raise ConfigError(
            f"entrypoint {entrypoint!r} of {workload_dir} is excluded by .leptonignore; it must ship"
        )

    events.on_phase("connect", f"connecting to {len(inventory.nodes)} node(s) of {inventory.cluster}")
    conns = connect_all(inventory, connect_timeout)
    t = lap("connect", t_start)
    nodes = [_NodeRun(conn, rank) for rank, conn in enumerate(conns)]
    try:
        events.on_phase(
            "prepare", f"run {run_id}: {len(manifest.files)} file(s), {manifest.total_bytes} bytes"
        )
        master_port = _prepare(nodes, run_id, manifest, inventory)
        t = lap("prepare", t)
        try:
            need = {d for n in nodes for d in n.missing if d != AGENT_DIGEST}
            events.on_phase("ship", f"sending {len(need)} changed file(s) of {len(manifest.blobs())}")
            _ship(nodes, manifest, inventory)
        except BaseException:
            _remove_run_dirs(nodes)
            raise
        t = lap("ship", t)
        base: dict[str, Any] = {
            "workload": str(workload_dir.resolve()),
            "entrypoint": entrypoint,
            "args": args,
            "nproc_per_node": nproc_per_node,
            "master_addr": inventory.master.private_ip,
            "master_port": master_port,
            "created": iso(time.time()),
        }
        record = _record(
            run_id=run_id, inventory=inventory, status="running", nodes=nodes, local_dir=local_dir, base=base
        )
        _write_json(local_dir / RECORD, record)  # so `attach`/`status` from another process know the run

        events.on_phase(
            "launch",
            f"torchrun on {len(nodes)} node(s), {nproc_per_node} process(es) each, port {master_port}",
        )
        t_launch = t
        _launch(
            nodes,
            inventory=inventory,
            run_id=run_id,
            entrypoint=entrypoint,
            args=args,
            nproc_per_node=nproc_per_node,
            master_port=master_port,
            env=extra_env,
        )
        t = lap("launch", t)
        record = _record(
            run_id=run_id,
            inventory=inventory,
            status="running",
            nodes=nodes,
            local_dir=local_dir,
            base=record,
            timings=timings,
        )
        _write_json(local_dir / RECORD, record)

        def first_log() -> None:
            now = time.monotonic()
            timings["first_log"] = round(now - t_start, 3)
            timings["launch_to_first_log"] = round(now - t_launch, 3)

        events.on_phase("running", f"run {run_id} started; streaming logs")
        _monitor(
            nodes,
            run_id,
            events,
            offsets={},
            connect_timeout=connect_timeout,
            stop_gang_on_failure=True,
            on_first_log=first_log,
            save_offsets=lambda o: _write_json(local_dir / OFFSETS, o),
        )
        t = lap("run", t_launch)
        _collect(nodes, run_id, local_dir, events)
        lap("collect", t)
        timings.update(_job_seconds(nodes))
        timings["total"] = round(time.monotonic() - t_start, 3)
        status = run_status_of([n.status.state if n.status else "unknown" for n in nodes])
        record = _record(
            run_id=run_id,
            inventory=inventory,
            status=status,
            nodes=nodes,
            local_dir=local_dir,
            base=record,
            timings=timings,
        )
        _write_json(local_dir / RECORD, record)
        events.on_phase("done", f"run {run_id} {status}; results in {local_dir}/")
        return _result(record, local_dir)
    finally:
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------- later processes


def _open_run(
    inventory: Inventory, run_id: str, connect_timeout: float, node: str | None = None
) -> tuple[list[_NodeRun], list[dict[str, Any]]]:
    """Connect and ask every node (or one) for the run's state. ConfigError if no node knows it."""
    jobspec.check_run_id(run_id)
    _check_timeout(connect_timeout)
    targets = [inventory.node(node)] if node is not None else list(inventory.nodes)
    conns = connect_all(inventory, connect_timeout, targets)
    ranks = {n.name: i for i, n in enumerate(inventory.nodes)}
    nodes = [_NodeRun(c, ranks[c.name]) for c in conns]
    try:
        answers = parallel(nodes, lambda n: _agent(n.conn, run_id, "status"))
    except BaseException:
        for c in conns:
            c.close()
        raise
    if all(a.get("detail") == "no such run on this node" for a in answers):
        for c in conns:
            c.close()
        where = node or f"any of the {len(nodes)} node(s)"
        raise ConfigError(f"no run {run_id!r} on {where} of {inventory.cluster}")
    for n, a in zip(nodes, answers, strict=True):
        n.run_dir = str(a.get("run_dir") or "")
        n.status = NodeStatus.from_agent(n.name, a)
    return nodes, answers


def run_status(inventory: Inventory, run_id: str, *, connect_timeout: float = 10.0) -> list[NodeStatus]:
    """Each node's state of the run, read from the nodes (one agent command per node)."""
    nodes, _ = _open_run(inventory, run_id, connect_timeout)
    for n in nodes:
        n.conn.close()
    return [n.status for n in nodes if n.status is not None]


def cancel(inventory: Inventory, run_id: str, *, connect_timeout: float = 10.0) -> list[NodeStatus]:
    """Stop the run on every node: the job's process group gets TERM, then KILL after a grace
    period, and anything else carrying the run's environment is killed. Returns the final states."""
    nodes, _ = _open_run(inventory, run_id, connect_timeout)
    try:
        answers = parallel(nodes, lambda n: _agent(n.conn, run_id, "cancel"))
    finally:
        for n in nodes:
            n.conn.close()
    return [NodeStatus.from_agent(n.name, a) for n, a in zip(nodes, answers, strict=True)]


def _local_dir(runs_dir: Path, run_id: str) -> Path:
    return Path(runs_dir) / run_id


def _update_record(
    inventory: Inventory,
    run_id: str,
    nodes: Sequence[_NodeRun],
    local_dir: Path,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """Merge the nodes' current state (and `timings`) into the local run.json, write it, return it:
    what a later process (`collect`, `attach`) does after talking to the nodes."""
    status = run_status_of([n.status.state if n.status else "unknown" for n in nodes])
    record = _record(
        run_id=run_id,
        inventory=inventory,
        status=status,
        nodes=nodes,
        local_dir=local_dir,
        base=_read_json(local_dir / RECORD) or {},
        timings={**timings, **_job_seconds(nodes)},
    )
    _write_json(local_dir / RECORD, record)
    return record


def collect(
    inventory: Inventory, run_id: str, *, runs_dir: Path = Path("runs"), connect_timeout: float = 10.0
) -> RunResult:
    """(Re)collect every node's outputs, logs and state into `runs_dir/<run-id>/` and rewrite run.json.
    Works while the run is still going (a snapshot; status "running")."""
    t0 = time.monotonic()
    nodes, _ = _open_run(inventory, run_id, connect_timeout)
    local_dir = _local_dir(runs_dir, run_id)
    try:
        _collect(nodes, run_id, local_dir, NullEvents())
    finally:
        for n in nodes:
            n.conn.close()
    record = _update_record(inventory, run_id, nodes, local_dir, {"collect": round(time.monotonic() - t0, 3)})
    return _result(record, local_dir)


def attach(
    inventory: Inventory,
    run_id: str,
    *,
    runs_dir: Path = Path("runs"),
    connect_timeout: float = 10.0,
    events: RunEvents | None = None,
    from_start: bool = False,
) -> RunResult:
    """Reconnect to a run (e.g. after the controller died), stream the rest of its logs (from the
    offsets the last controller saved, or the start), wait for the end, collect everything.
    Like run_job, a failing node gets the others stopped."""
    events = events or NullEvents()
    t0 = time.monotonic()
    local_dir = _local_dir(runs_dir, run_id)
    events.on_phase("connect", f"reattaching to run {run_id} on {len(inventory.nodes)} node(s)")
    nodes, _ = _open_run(inventory, run_id, connect_timeout)
    try:
        saved = {} if from_start else (_read_json(local_dir / OFFSETS) or {})
        offsets = {k: int(v) for k, v in saved.items() if isinstance(v, int)}
        running = [n for n in nodes if n.status and not n.status.terminal and n.status.state != "unknown"]
        events.on_phase("running", f"{len(running)} of {len(nodes)} node(s) still running; streaming logs")
        watch = [n for n in nodes if n.status and n.status.state != "unknown"]
        for n in nodes:
            if n not in watch and n.status is not None:
                events.on_node_done(n.name, n.status)
        _monitor(
            watch,
            run_id,
            events,
            offsets=offsets,
            connect_timeout=connect_timeout,
            stop_gang_on_failure=True,
            save_offsets=lambda o: _write_json(local_dir / OFFSETS, o),
        )
        _collect(nodes, run_id, local_dir, events)
    finally:
        for n in nodes:
            n.conn.close()
    record = _update_record(inventory, run_id, nodes, local_dir, {"attach": round(time.monotonic() - t0, 3)})
    status = record["status"]
    events.on_phase("done", f"run {run_id} {status}; results in {local_dir}/")
    return _result(record, local_dir)


def read_logs(
    inventory: Inventory,
    run_id: str,
    *,
    node: str | None = None,
    follow: bool = False,
    events: RunEvents | None = None,
    connect_timeout: float = 10.0,
) -> dict[str, str]:
    """A run's logs straight from the nodes: {node name: text} (LEPTON_PROGRESS lines left out).
    With `events`, every line also goes to events.on_log (progress to on_progress). With
    `follow`, keeps streaming until every node's job has ended (it never stops or fails the run)."""
    sink: RunEvents = events or NullEvents()
    nodes, _ = _open_run(inventory, run_id, connect_timeout, node)
    texts: dict[str, list[str]] = {n.name: [] for n in nodes}

    class _Tee(RunEvents):
        def on_log(self, node: str, line: str) -> None:
            texts[node].append(line)
            sink.on_log(node, line)

        def on_progress(self, node: str, progress: dict[str, Any]) -> None:
            sink.on_progress(node, progress)

        def on_node_done(self, node: str, status: NodeStatus) -> None:
            if follow:
                sink.on_node_done(node, status)

    try:
        known = [n for n in nodes if n.status and n.status.state != "unknown"]
        if follow:
            _monitor(
                known, run_id, _Tee(), offsets={}, connect_timeout=connect_timeout, stop_gang_on_failure=False
            )
        else:
            tee = _Tee()
            for n in known:
                w = _Watch(n, 0, connect_timeout)
                data = n.conn.read_file(f"{n.run_dir}/logs/node.log") or b""
                for kind, value in w._lines(data, final=True):
                    if kind == "log":
                        tee.on_log(n.name, value)
                    else:
                        tee.on_progress(n.name, value)
    finally:
        for n in nodes:
            n.conn.close()
    return {name: "\n".join(lines) + ("\n" if lines else "") for name, lines in texts.items()}


__all__ = [
    "attach",
    "cancel",
    "collect",
    "read_logs",
    "run_job",
    "run_status",
    "run_status_of",
]
