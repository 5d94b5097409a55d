"""Seeded fault injection on a real local pool, with the run's invariants checked after each fault.

One iteration: start a run of a small job (numbered lines, then a result file and its sha256 in
LEPTON_OUTPUT_DIR), inject one fault at a random moment (from the seeded RNG), let the run end,
then check:
  1. the run ended `succeeded` with every node's result collected, or `failed` naming a node
     (a node `failed`/`lost`), or was refused before launch with an error naming a node;
  2. no process of the run is left on any node (the run's id in a process's environment);
  3. every result file that was produced is present locally and intact (its sha256).
Faults: kill-train (SIGKILL the job's python on one node), kill-sshd (SIGKILL every sshd process of
one node; a supervisor - like systemd - restarts it a few seconds later), hang (SIGSTOP a node's
sshd and job, until the controller's heartbeat limit gives the node up), kill-controller (SIGKILL the controller
process, then `attach`), late-sshd (a node's sshd starts only 15 s after `run` begins).

Used by tests/chaos/test_chaos.py (a bounded subset in `make test`) and tests/chaos/run.py
(`make chaos`, the full loop). Local nodes are processes of this machine, so "on the node" means
/proc here."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_infra.errors import LeptonError
from lepton_infra.local import LocalPool, pool_processes, procs
from lepton_infra.local.records import POOL_FILE, read_network, read_records, write_records
from lepton_infra.workload import NodeStatus, RunEvents, RunResult, attach, run_job

REPO = Path(__file__).resolve().parents[2]
FAULTS = ("kill-train", "kill-sshd", "hang", "kill-controller", "late-sshd")

JOB = textwrap.dedent(
    """\
    import hashlib, os, sys, time
    lines, delay = int(sys.argv[1]), float(sys.argv[2])
    name = os.environ["LEPTON_NODE_NAME"]
    for i in range(lines):
        print(f"chaos line {i} of {lines} from {name}", flush=True)
        time.sleep(delay)
    out = os.environ["LEPTON_OUTPUT_DIR"]
    data = hashlib.sha256(name.encode()).digest() * 2048
    with open(os.path.join(out, "result.bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(out, "result.sha256"), "w") as f:
        f.write(hashlib.sha256(data).hexdigest())
    print(f"chaos done on {name}", flush=True)
    """
)


@dataclass
class Iteration:
    index: int
    fault: str
    node: str
    at_s: float  # when the fault was injected, seconds after the run began
    outcome: str = ""  # succeeded | failed | refused | xfail
    detail: str = ""
    detection_s: float | None = None  # fault -> the controller saw a node end badly
    violations: list[str] = field(default_factory=list)


@dataclass
class Report:
    seed: int
    iterations: list[Iteration] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [f"#{i.index} {i.fault}@{i.node}: {v}" for i in self.iterations for v in i.violations]

    def summary(self) -> str:
        kinds = Counter(i.fault for i in self.iterations)
        outcomes = Counter(f"{i.fault}->{i.outcome}" for i in self.iterations)
        detections = [i.detection_s for i in self.iterations if i.detection_s is not None]
        mean = f"{sum(detections) / len(detections):.1f} s over {len(detections)}" if detections else "n/a"
        lines = [
            f"chaos: seed {self.seed}, {len(self.iterations)} iteration(s)",
            "faults per kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
            "outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())),
            f"mean detection time (fault -> controller saw the node end): {mean}",
            f"invariant violations: {len(self.violations)}",
            *(f"  {v}" for v in self.violations),
        ]
        return "\n".join(lines)


class _Events(RunEvents):
    """Notes when the controller first saw a node end in anything but success."""

    def __init__(self) -> None:
        self.bad_at: float | None = None

    def on_node_done(self, node: str, status: NodeStatus) -> None:
        if status.state != "succeeded" and self.bad_at is None:
            self.bad_at = time.monotonic()


# --------------------------------------------------------------------------- the nodes' processes


def processes_of_run(run_id: str) -> list[int]:
    marker = f"LEPTON_RUN_ID={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _node_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"LEPTON_NODE_NAME="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        return None
    return None


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def sshd_pids(pool: LocalPool, node: str) -> list[int]:
    """The node's sshd listener and its session processes (not the detached job)."""
    return [p.pid for p in pool_processes(pool.state_dir).get(node, []) if "sshd" in p.cmdline.split(" ")[0]]


def job_pids(run_id: str, node: str) -> list[int]:
    """The job's own python processes on `node` (not torchrun's agent, not the supervisor)."""
    return [
        pid
        for pid in processes_of_run(run_id)
        if _node_of(pid) == node
        and "train.py" in _cmdline(pid)
        and "torch.distributed.run" not in _cmdline(pid)
    ]


def start_sshd(pool: LocalPool, node: str) -> None:
    """Start the node's sshd again with its recorded command and config (its host key unchanged),
    as a service manager would after a crash; `local down` sweeps it like any process of the node."""
    # The pool's records of its sshds (pool.json) are the one way to restart a node as it was.
    records = {r.name: r for r in read_records(pool.state_dir) or []}
    r = records[node]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LANG": "C.UTF-8",
        "HOME": r.home,
        "LEPTON_LOCAL_NODE": r.node_dir,
    }
    with open(r.log, "ab") as log:
        proc = subprocess.Popen(
            r.cmdline,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=r.node_dir,
            env=env,
        )
    # Recorded as the node's sshd, so `local down` stops it: OpenSSH's process title overwrites
    # its environment, and it runs in /, so no sweep by HOME, marker or cwd can find it (before
    # this, every chaos session left its restarted listeners running).
    r.pid, r.start_time = proc.pid, procs.start_time(proc.pid)
    sshd = Path(json.loads((pool.state_dir / POOL_FILE).read_text(encoding="utf-8"))["sshd"])
    write_records(pool.state_dir, list(records.values()), sshd, read_network(pool.state_dir))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((r.host, r.port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{node}: sshd did not come back on {r.host}:{r.port}")


# --------------------------------------------------------------------------- one iteration

_CONTROLLER = """
import sys
from pathlib import Path
from lepton_infra.inventory import Inventory
from lepton_infra.workload import run_job
inventory = Inventory.from_json(sys.stdin.readline())
run_job(inventory, Path(sys.argv[1]), sys.argv[4:], run_id=sys.argv[3], runs_dir=Path(sys.argv[2]))
"""


def _check(it: Iteration, run_id: str, result: RunResult | None, runs: Path, nodes: list[str]) -> None:
    """The invariants, appended to it.violations."""
    deadline = time.monotonic() + 20
    while (left := processes_of_run(run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        it.violations.append(f"processes of the run left: {[_cmdline(p)[:80] for p in left]}")
    if result is not None:
        it.outcome = result.status
        states = {n.name: n.state for n in result.nodes}
        if result.status == "succeeded":
            missing = [n for n in nodes if not (runs / run_id / n / "output" / "result.bin").is_file()]
            if missing:
                it.violations.append(f"succeeded but results missing from {missing}")
        elif result.status == "failed":
            bad = [n for n, s in states.items() if s in ("failed", "lost")]
            if not bad:
                it.violations.append(f"failed without a node that failed or was lost: {states}")
            it.detail = ", ".join(f"{n} {states[n]}" for n in bad)
        else:
            it.violations.append(f"run ended {result.status!r}: {states}")
    for node in nodes:
        out = runs / run_id / node / "output"
        if (out / "result.bin").is_file():
            want = (out / "result.sha256").read_text().strip() if (out / "result.sha256").is_file() else ""
            got = hashlib.sha256((out / "result.bin").read_bytes()).hexdigest()
            if want != got:
                it.violations.append(f"{node}: result.bin corrupted or its checksum missing")


def one_iteration(
    pool: LocalPool,
    workload: Path,
    runs: Path,
    rng: random.Random,
    index: int,
    fault: str,
    *,
    job_s: float = 4.0,
    late_s: float = 15.0,
    hang_supported: bool = True,
    heartbeat_s: float = 30.0,
) -> Iteration:
    inv = pool.inventory
    nodes = [n.name for n in inv.nodes]
    node = rng.choice(nodes)
    run_id = f"chaos-{index}-{fault}"
    lines, delay = 20, job_s / 20
    args = [str(lines), str(delay)]
    # Faults land anywhere from connecting to the job's end (ship and launch take ~1-3 s here).
    at = rng.uniform(0.0, job_s + 2.0)
    it = Iteration(index, fault, node, round(at, 2))
    if fault == "hang" and not hang_supported:
        it.outcome = "xfail"
        it.detail = "hang faults switched off"
        return it

    if fault == "kill-controller":
        proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROLLER, str(workload), str(runs), run_id, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdin is not None
        proc.stdin.write(inv.model_dump_json() + "\n")
        proc.stdin.close()
        time.sleep(at + 1.5)  # + the controller's own start (imports)
        proc.kill()
        proc.wait()
        events = _Events()
        try:
            result: RunResult | None = attach(inv, run_id, runs_dir=runs, events=events)
        except LeptonError as exc:
            # Killed before the run existed on the nodes (connect/prepare/ship): nothing may run.
            it.outcome, it.detail, result = "refused", f"attach: {exc}", None
        _check(it, run_id, result, runs, nodes)
        return it

    events = _Events()
    box: dict[str, Any] = {}
    if fault == "late-sshd":
        _signal(sshd_pids(pool, node), signal.SIGKILL)
        time.sleep(0.3)

    def target() -> None:
        try:
            box["result"] = run_job(
                inv,
                workload,
                args,
                run_id=run_id,
                runs_dir=runs,
                events=events,
                connect_timeout=late_s + 15,
                heartbeat_timeout=heartbeat_s,
            )
        except LeptonError as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    fault_at = None
    if fault == "late-sshd":
        time.sleep(late_s)
        start_sshd(pool, node)
        it.at_s = late_s
    else:
        if fault in ("kill-train", "hang"):
            # These need the job: a random moment of its life (first line to last).
            deadline = time.monotonic() + 60
            while not job_pids(run_id, node) and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.05)
            at = rng.uniform(0.0, job_s if fault == "kill-train" else job_s / 2)
            it.at_s = round(time.monotonic() - started + at, 2)
        time.sleep(at)
        fault_at = time.monotonic()
        if fault == "kill-train":
            pids = job_pids(run_id, node)
            if not pids:
                it.detail = "no job process at that moment (not started yet, or done)"
            _signal(pids, signal.SIGKILL)
        elif fault == "kill-sshd":
            _signal(sshd_pids(pool, node), signal.SIGKILL)
            time.sleep(rng.uniform(1.0, 4.0))  # then its service manager restarts it
            start_sshd(pool, node)
        elif fault == "hang":
            if not job_pids(run_id, node):
                it.detail = "the node's job had already ended when it was frozen"
            frozen = sshd_pids(pool, node) + [p for p in processes_of_run(run_id) if _node_of(p) == node]
            _signal(frozen, signal.SIGSTOP)
            # Frozen until the controller gives the node up and ends the run (or 3 heartbeats).
            thread.join(timeout=3 * heartbeat_s + 15)
            _signal(frozen, signal.SIGCONT)
    thread.join(timeout=300)
    if thread.is_alive():
        it.violations.append("run did not end within 300 s")
        return it
    if "error" in box:
        err = box["error"]
        it.outcome, it.detail = "refused", str(err)[:160]
        if not getattr(err, "node", None) and node not in str(err):
            it.violations.append(f"refused without naming a node: {err}")
    if events.bad_at is not None and fault_at is not None and events.bad_at >= fault_at:
        it.detection_s = round(events.bad_at - fault_at, 2)
    _check(it, run_id, box.get("result"), runs, nodes)
    return it


def run_chaos(
    pool: LocalPool,
    workdir: Path,
    *,
    seed: int,
    faults: list[str],
    job_s: float = 4.0,
    late_s: float = 15.0,
    hang_supported: bool = True,
    heartbeat_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> Report:
    """One iteration per entry of `faults` (in order), on `pool`; a Report of what happened."""
    rng = random.Random(seed)
    workload = workdir / "workload"
    workload.mkdir(parents=True, exist_ok=True)
    (workload / "train.py").write_text(JOB)
    runs = workdir / "runs"
    report = Report(seed)
    for index, fault in enumerate(faults):
        it = one_iteration(
            pool,
            workload,
            runs,
            rng,
            index,
            fault,
            job_s=job_s,
            late_s=late_s,
            hang_supported=hang_supported,
            heartbeat_s=heartbeat_s,
        )
        report.iterations.append(it)
        log(json.dumps(it.__dict__))
    return report
