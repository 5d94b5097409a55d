"""Job overhead: the CIFAR-10 job under our supervisor vs `torchrun` by hand, with the CPU of every
process on the machine counted by role, so the gap is explained by a profile rather than a guess.

    .venv/bin/python bench/job_overhead.py [--nodes 2] [--repeat 3] [--metrics-every 0]

Per repeat, interleaved: `run_job` (agent, log polling, heartbeat, sampler) and rsync + `ssh ...
torchrun` by hand, on the same local pool. While each runs, a thread reads /proc/<pid>/stat of every
process every 50 ms and charges its CPU time (utime + stime) to a role: the job's workers, torchrun,
the node agent (supervisor, status/launch commands), the metrics sampler, the nodes' sshd and
sftp-server, this controller process (paramiko, polling; less the counting thread itself), rsync and
ssh by hand, and everything else on the machine (other users: noise, reported, not charged). On a
2-core pool the workers need both cores, so every CPU second of another role is time they wait.
The job's own epoch times (`epoch N/M ... time=Xs`, rank 0) say how much the training itself slowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import launch  # noqa: E402
from _bench import OpenSSH  # noqa: E402

from lepton_infra.errors import LeptonError  # noqa: E402
from lepton_infra.local import LocalPool  # noqa: E402
from lepton_infra.workload import RunEvents, run_job  # noqa: E402
from lepton_infra.workload.report import wait_for_plot  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ROLES = (
    "workers",
    "torchrun",
    "agent",
    "sampler",
    "preflight",
    "node sshd",
    "controller",
    "hand tools",
    "other",
)


def _role(pid: int, cmdline: str) -> str:
    """The role of one of the pool's processes (or this one), by its command line."""
    if pid == os.getpid():
        return "controller"
    if cmdline.startswith(("rsync", "ssh ")):
        return "hand tools"
    if ".agent/metrics.py" in cmdline:
        return "sampler"
    if ".agent/agent.py" in cmdline or "--drop-snapshots" in cmdline or "--snapshot" in cmdline:
        return "agent"  # launch, supervise, status, pack, and the supervisor's uploads
    if "Node-side preflight" in cmdline or "lepton_bootstrap_" in cmdline:
        return "preflight"  # the preflight and bootstrap (prepare, receive): before the launch
    if "torch.distributed.run" in cmdline:
        return "torchrun"
    if "train.py" in cmdline:
        return "workers"
    if "sshd" in cmdline or "sftp-server" in cmdline:
        return "node sshd"
    return "other"


class CpuByRole:
    """CPU seconds per role over a window, from /proc/<pid>/stat sampled every `every` seconds."""

    def __init__(self, needle: str, every: float = 0.05) -> None:
        self.needle = (
            needle.encode()
        )  # the pool's state dir: in the command line or environment of its processes
        self.every = every
        self.start: dict[tuple[int, int], int] = {}  # (pid, starttime) -> ticks at window start
        self.last: dict[tuple[int, int], int] = {}
        self.roles: dict[tuple[int, int], str] = {}
        self.commands: dict[tuple[int, int], str] = {}
        self.mine_pids: set[int] = set()
        self.errors: list[str] = []
        self.own = 0.0  # this counting thread's own CPU, taken off the controller's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _scan(self) -> dict[tuple[int, int], int]:
        seen = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            key = (int(entry), int(fields[19]))
            seen[key] = int(fields[11]) + int(fields[12])
            if key not in self.roles:
                self.roles[key] = "mine" if self._mine(int(entry), fields[1]) else "other"
            if self.roles[key] != "other":
                # Read again each time: a fork keeps its parent's command line until it execs.
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
                    if cmd:  # empty once it has exited: keep what it ran
                        self.commands[key] = cmd
                except OSError:
                    pass
        return seen

    def _mine(self, pid: int, ppid: bytes) -> bool:
        # Ancestry first: everything under the pool's sshd (or this process) is the pool's.
        if pid == os.getpid() or int(ppid) == os.getpid() or int(ppid) in self.mine_pids:
            self.mine_pids.add(pid)
            return True
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if self.needle in f.read():
                        self.mine_pids.add(pid)
                        return True
            except OSError:
                pass
        return False

    def _loop(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(self.every):
            try:
                self.last.update(self._scan())
            except Exception as exc:  # noqa: BLE001 - a count with a hole beats a dead counter
                self.errors.append(repr(exc))
        self.own = time.thread_time() - t0

    def __enter__(self) -> CpuByRole:
        self.start = self._scan()
        self.last = dict(self.start)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(self._scan())

    def seconds(self) -> dict[str, float]:
        out = dict.fromkeys(ROLES, 0.0)
        for key, ticks in self.last.items():
            out[self._final_role(key)] += (ticks - self.start.get(key, 0)) / TICK
        out["controller"] -= self.own
        return {k: round(v, 2) for k, v in out.items()}

    def mark(self) -> tuple[float, dict[tuple[int, int], int], float]:
        """A point in time to measure a window from: (wall, ticks per process, counter's own CPU)."""
        own = time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident or 0))
        return time.perf_counter(), dict(self.last), own

    def window(
        self,
        a: tuple[float, dict[tuple[int, int], int], float],
        b: tuple[float, dict[tuple[int, int], int], float],
    ) -> dict[str, float]:
        """CPU seconds per role between two marks, and the window's wall seconds under "wall"."""
        out = dict.fromkeys(ROLES, 0.0)
        for key, ticks in b[1].items():
            out[self._final_role(key)] += (ticks - a[1].get(key, 0)) / TICK
        out["controller"] -= b[2] - a[2]
        out["wall"] = b[0] - a[0]
        return {k: round(v, 2) for k, v in out.items()}

    def _final_role(self, key: tuple[int, int]) -> str:
        if self.roles[key] == "other":
            return "other"
        return _role(key[0], self.commands.get(key, ""))

    def top(self, n: int = 8) -> list[tuple[float, str, str]]:
        """The `n` processes that used the most CPU in the window: (seconds, role, command)."""
        used = [
            ((t - self.start.get(k, 0)) / TICK, self._final_role(k), self.commands.get(k, "")[-140:])
            for k, t in self.last.items()
        ]
        return sorted(u for u in used if u[1] != "other")[::-1][:n]


FIRST, LAST = "process(es) up", "epoch 2/2:"  # rank 0's first line and its last epoch line


class _Lines(RunEvents):
    """Every job line, and a CPU mark at the first and the last epoch line (the job window)."""

    def __init__(self, cpu: CpuByRole) -> None:
        self.cpu = cpu
        self.lines: list[str] = []
        self.marks: dict[str, Any] = {"start": cpu.mark()}  # made just before the approach starts

        self.done_at: dict[str, float] = {}

    def on_node_done(self, node: str, status: Any) -> None:
        self.done_at[node] = time.time()  # the nodes are this machine: the same clock as theirs

    def on_log(self, node: str, line: str) -> None:
        self.lines.append(line)
        for name, needle in (("first", FIRST), ("last", LAST)):
            if needle in line and name not in self.marks:
                self.marks[name] = self.cpu.mark()


def epoch_times(lines: list[str]) -> list[float]:
    """rank 0's `epoch N/M: ... time=X.Ys` lines."""
    return [
        float(line.rsplit("time=", 1)[1].rstrip("s"))
        for line in lines
        if "time=" in line and "epoch " in line
    ]


def job_args(samples: int) -> list[str]:
    """launch.py's CIFAR-10 arguments with `samples` training samples (fewer: a quicker check)."""
    out = list(launch.CIFAR_ARGS)
    out[out.index("--train-samples") + 1] = str(samples)
    return out


def by_hand(ssh: OpenSSH, pool: LocalPool, workload: Path, sink: _Lines, args: list[str]) -> float:
    """rsync + one `ssh node torchrun ...` per node (launch.py's baseline), every line kept."""
    inv = pool.inventory
    t0 = time.perf_counter()
    dests = {n.name: pool.home(n.name) / "hand" / "workload" for n in inv.nodes}
    _bench.run_parallel(
        [["rsync", "-a", "--mkpath", "-e", ssh.rsh(n), f"{workload}/", f"{inv.user}@{n.host}:{dests[n.name]}/"]
         for n in inv.nodes]
    )  # fmt: skip
    port = launch._free_port(inv.master.private_ip)
    procs = []
    for rank, n in enumerate(inv.nodes):
        job = (
            f"GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 exec {shlex.quote(inv.python)} -m torch.distributed.run "
            f"--nnodes {len(inv.nodes)} --node-rank {rank} --nproc-per-node 1 "
            f"--master-addr {inv.master.private_ip} --master-port {port} "
            f"--rdzv-conf timeout=60 --max-restarts 0 train.py {shlex.join(args)}"
        )
        remote = f"cd {shlex.quote(str(dests[n.name]))} && {job}"
        cmd = ["ssh", *ssh.options(), ssh.destination(n), remote]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    lock = threading.Lock()

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                sink.on_log("", line.rstrip("\n"))

    readers = [threading.Thread(target=read, args=(proc,)) for proc in procs]
    for r in readers:
        r.start()
    for r, proc in zip(readers, procs, strict=True):
        r.join(timeout=300)
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"by hand: exit {proc.returncode}: {sink.lines[-5:]}")
    return time.perf_counter() - t0


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=2, repeat=3)
    p.add_argument("--metrics-every", type=float, default=None, help="run_job's sampler period (0: off)")
    p.add_argument("--top", type=int, default=0, help="also print the N busiest processes of each window")
    p.add_argument(
        "--poll",
        type=float,
        default=None,
        help="the monitor's log poll interval, busy and idle (an experiment)",
    )
    p.add_argument("--samples", type=int, default=6000, help="training samples (default 6000, as launch.py)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted runs by hand first (default 1)")
    args = p.parse_args()
    job = job_args(args.samples)
    if args.poll is not None:
        from lepton_infra.workload import monitor

        monitor.POLL_INTERVAL_S = monitor.BUSY_POLL_INTERVAL_S = args.poll
    _bench.check_counts(args)
    _bench.print_environment(f"job overhead: CIFAR-10 on {args.nodes} nodes, {args.repeat} repeats")
    work = _bench.scratch_dir("overhead")
    samples: dict[str, list[dict[str, float]]] = {"lepton": [], "hand": []}
    windows: dict[str, list[dict[str, float]]] = {"lepton": [], "hand": []}
    startups: dict[str, list[dict[str, float]]] = {"lepton": [], "hand": []}
    epochs: dict[str, list[float]] = {"lepton": [], "hand": []}
    walls: dict[str, list[float]] = {"lepton": [], "hand": []}
    phases: list[dict[str, float]] = []
    ends: dict[str, list[float]] = {"job": [], "end seen": []}
    loads: list[float] = []
    try:
        workload = work / "workload"
        shutil.copytree(
            launch.REPO / "workloads" / "cifar10", workload, ignore=shutil.ignore_patterns("__pycache__")
        )
        with _bench.local_pool(args.nodes) as pool:
            ssh = OpenSSH(pool.inventory, work / "ssh")
            for _ in range(args.warmup):  # the first `import torch` after a while reads it from disk
                with CpuByRole(str(pool.state_dir)) as cpu:
                    by_hand(ssh, pool, workload, _Lines(cpu), job)
            extra = {} if args.metrics_every is None else {"metrics_every": args.metrics_every}
            for i in range(args.repeat):
                loads.append(os.getloadavg()[0])
                with CpuByRole(str(pool.state_dir)) as cpu:
                    sink = _Lines(cpu)
                    t0 = time.perf_counter()
                    result = run_job(
                        pool.inventory, workload, job, runs_dir=work / "runs",
                        run_id=f"overhead-{i}", events=sink, **extra,
                    )  # fmt: skip
                    walls["lepton"].append(time.perf_counter() - t0)
                with contextlib.suppress(LeptonError, TimeoutError):  # drawn in the background: let it
                    wait_for_plot(result.run_dir, timeout=60)  # end before the next approach is timed
                if not result.succeeded:
                    raise RuntimeError(f"run_job: {result.status}")
                for node, seen in sink.done_at.items():
                    # state.json keeps the node's own float times (run.json rounds them to seconds)
                    state = json.loads((work / "runs" / f"overhead-{i}" / node / "state.json").read_text())
                    ends["job"].append(state["ended"] - state["started"])
                    ends["end seen"].append(seen - state["ended"])
                samples["lepton"].append(cpu.seconds())
                windows["lepton"].append(cpu.window(sink.marks["first"], sink.marks["last"]))
                startups["lepton"].append(cpu.window(sink.marks["start"], sink.marks["first"]))
                for row in cpu.top(args.top):
                    print(f"  lepton {i}: {row[0]:6.2f} s {row[1]:<10} {row[2]}")
                epochs["lepton"] += epoch_times(sink.lines)
                phases.append(result.timings)
                with CpuByRole(str(pool.state_dir)) as cpu:
                    sink = _Lines(cpu)
                    walls["hand"].append(by_hand(ssh, pool, workload, sink, job))
                samples["hand"].append(cpu.seconds())
                windows["hand"].append(cpu.window(sink.marks["first"], sink.marks["last"]))
                startups["hand"].append(cpu.window(sink.marks["start"], sink.marks["first"]))
                for row in cpu.top(args.top):
                    print(f"  hand {i}: {row[0]:6.2f} s {row[1]:<10} {row[2]}")
                epochs["hand"] += epoch_times(sink.lines)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average (1 min) before each repeat: {', '.join(f'{x:.2f}' for x in loads)}")
    print(f"{'median':<12} {'wall s':>7} {'epoch s':>8}  " + "  ".join(f"{r:>10}" for r in ROLES))
    for name in ("lepton", "hand"):
        cpu = {r: statistics.median(s[r] for s in samples[name]) for r in ROLES}
        print(
            f"{name:<12} {statistics.median(walls[name]):>7.2f} {statistics.median(epochs[name]):>8.2f}  "
            + "  ".join(f"{cpu[r]:>10.2f}" for r in ROLES)
        )
    print("CPU s per role in the job window (rank 0's first line to its last epoch line), median:")
    print(f"{'median':<12} {'window s':>8}  " + "  ".join(f"{r:>10}" for r in ROLES))
    for name in ("lepton", "hand"):
        cpu = {r: statistics.median(s[r] for s in windows[name]) for r in (*ROLES, "wall")}
        print(f"{name:<12} {cpu['wall']:>8.2f}  " + "  ".join(f"{cpu[r]:>10.2f}" for r in ROLES))
    cores = os.cpu_count() or 1
    print(
        "CPU s per role in the start-up window (the approach's start to rank 0's first line), median;"
        f" busy = all CPU used on the machine / ({cores} cores x window):"
    )
    print(f"{'median':<12} {'window s':>8}  " + "  ".join(f"{r:>10}" for r in ROLES) + f"  {'busy':>6}")
    for name in ("lepton", "hand"):
        cpu = {r: statistics.median(s[r] for s in startups[name]) for r in (*ROLES, "wall")}
        busy = statistics.median(sum(s[r] for r in ROLES) / (cores * s["wall"]) for s in startups[name])
        print(
            f"{name:<12} {cpu['wall']:>8.2f}  "
            + "  ".join(f"{cpu[r]:>10.2f}" for r in ROLES)
            + f"  {busy:>6.0%}"
        )
    print(
        f"per node, median: job (supervisor's start to the job's end, node clock) {statistics.median(ends['job']):.3f} s; "
        f"end recorded -> controller saw it {statistics.median(ends['end seen']):.3f} s "
        f"(max {max(ends['end seen']):.3f}; includes the results upload to the pool's store)"
    )
    keys = ("launch_to_first_log", "job", "run", "collect", "total")
    print("lepton phases (median s): " + "  ".join(
        f"{k} {statistics.median(t[k] for t in phases if k in t):.3f}" for k in keys if any(k in t for t in phases)
    ))  # fmt: skip
    print()
    rows = {}
    for name in ("lepton", "hand"):
        rows[name, "window"] = _bench.Row(f"{name}: job window", [w["wall"] for w in windows[name]])
        rows[name, "whole"] = _bench.Row(f"{name}: whole run", walls[name])
    _bench.print_table("job overhead", list(rows.values()))
    _bench.ratio(
        "job_overhead", "job-window lepton/torchrun-by-hand", rows["lepton", "window"], rows["hand", "window"]
    )
    _bench.ratio(
        "job_overhead", "whole-run lepton/torchrun-by-hand", rows["lepton", "whole"], rows["hand", "whole"]
    )
    _bench.finish(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
