"""Launch: from "run this" to the job's first log line, and the whole run, with `run_job` vs the
hand-written OpenSSH way, same run, same pool; prints the ratios and our phase breakdown.

    .venv/bin/python bench/launch.py [--nodes 4] [--repeat 3]
    .venv/bin/python bench/launch.py --cifar --nodes 2     # issue 11 target 4: <= 1.03x torchrun
    .venv/bin/python bench/launch.py --cifar --nodes 2 --edit   # the edit-run loop (issue 18)

The workload is a `train.py` that prints one line at once and exits; with `--cifar` it is the real
CIFAR-10 job (workloads/cifar10) on synthetic data, and the plain-python approach is left out
(one process would not be the same training). Approaches:
  lepton run_job          connect (pinned) + content-hashed ship + detached supervisor under
                          torchrun + log streaming + collection of logs/outputs/run.json
  openssh rsync+torchrun  `rsync` the workload, then `ssh node 'cd dir && python -m
                          torch.distributed.run ... train.py'` on every node at once: the same
                          launcher, none of the safety (dies with the SSH session, nothing collected)
  openssh rsync+python    the same with plain `python train.py`: what a user would type by hand
"first line" is when the job's own line ("first line from ...") reached this machine. With `--edit`,
one file of the workload changes before every launch of either approach (the loop a user repeats all
day: edit, run, read the first line), so each ships one changed file instead of nothing."""

from __future__ import annotations

import contextlib
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from _bench import OpenSSH, Row  # noqa: E402

from lepton_infra.errors import LeptonError  # noqa: E402
from lepton_infra.inventory import Inventory  # noqa: E402
from lepton_infra.local import LocalPool  # noqa: E402
from lepton_infra.workload import RunEvents, run_job  # noqa: E402
from lepton_infra.workload.report import wait_for_plot  # noqa: E402

MARK = "first line from"
REPO = Path(__file__).resolve().parents[1]
CIFAR_MARK = "process(es) up"  # rank 0's first line
# Small enough for 2 shared cores, long enough that the training dominates the launch.
CIFAR_ARGS = ["--data", "synthetic", "--train-samples", "6000", "--test-samples", "1000", "--epochs", "2"]
CIFAR_ARGS += ["--batch-size", "32", "--threads", "1"]
TRAIN_PY = f"""import os, socket
print("{MARK} rank", os.environ.get("RANK", "-"), "node", os.environ.get("LEPTON_NODE_NAME", "-"), flush=True)
"""
PHASES = (
    "connect",
    "preflight",
    "prepare",
    "ship",
    "preflight_wait",
    "launch",
    "launch_to_first_log",
    "run",
    "job",
    "collect",
    "total",
)


class _FirstLine(RunEvents):
    """Notes when the job's own first line arrives (not the phase messages)."""

    def __init__(self, t0: float, mark: str) -> None:
        self.t0, self.mark = t0, mark
        self.first: float | None = None
        self.lines = 0

    def on_log(self, node: str, line: str) -> None:
        if self.mark in line:
            self.lines += 1
            if self.first is None:
                self.first = time.perf_counter() - self.t0


def lepton_once(
    inv: Inventory, workload: Path, runs: Path, run_id: str, job: list[str], mark: str, lines: int
) -> tuple[float, float, dict[str, float]]:
    t0 = time.perf_counter()
    events = _FirstLine(t0, mark)
    result = run_job(inv, workload, job, runs_dir=runs, run_id=run_id, events=events)
    total = time.perf_counter() - t0
    with contextlib.suppress(LeptonError, TimeoutError):  # metrics.png is drawn in the background:
        wait_for_plot(result.run_dir, timeout=60)  # not timed, and not left to slow the next approach
    if not result.succeeded or events.first is None:
        raise RuntimeError(f"run_job {run_id}: status {result.status}, first line seen: {events.first}")
    if events.lines != lines:
        raise RuntimeError(f"run_job {run_id}: {events.lines} job lines, expected {lines}")
    return events.first, total, result.timings


def _edit(workload: Path, tag: str) -> None:
    """Change one file of the workload the way an edit does: new content, same name."""
    with (workload / "train.py").open("a", encoding="utf-8") as f:
        f.write(f"# edited: {tag}\n")


def _free_port(host: str) -> int:
    # Below Linux's ephemeral range, like the pool's own ports, so no outgoing socket takes it.
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host}")


def openssh_once(
    ssh: OpenSSH, pool: LocalPool, workload: Path, *, torchrun: bool, job_args: list[str], mark: str
) -> tuple[float, float]:
    """rsync to every node, then one ssh per node running the job; (first line, total) seconds."""
    inv = pool.inventory
    t0 = time.perf_counter()
    dests = {n.name: pool.home(n.name) / "hand" / "workload" for n in inv.nodes}
    _bench.run_parallel(
        [
            [
                "rsync",
                "-a",
                "--mkpath",
                "-e",
                ssh.rsh(n),
                f"{workload}/",
                f"{inv.user}@{n.host}:{dests[n.name]}/",
            ]
            for n in inv.nodes
        ]  # fmt: skip
    )
    py = shlex.quote(inv.python)
    port = _free_port(inv.master.private_ip) if torchrun else 0
    procs = []
    for rank, n in enumerate(inv.nodes):
        if torchrun:
            job = (
                f"GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 exec {py} -m torch.distributed.run "
                f"--nnodes {len(inv.nodes)} --node-rank {rank} --nproc-per-node 1 "
                f"--master-addr {inv.master.private_ip} --master-port {port} "
                f"--rdzv-conf timeout=60 --max-restarts 0 train.py {shlex.join(job_args)}"
            )
        else:
            job = f"exec {py} train.py {shlex.join(job_args)}"
        remote = f"cd {shlex.quote(str(dests[n.name]))} && {job}"
        cmd = ["ssh", *ssh.options(), ssh.destination(n), remote]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    first: list[float] = []
    lock = threading.Lock()

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if mark in line:
                with lock:
                    first.append(time.perf_counter() - t0)

    readers = [threading.Thread(target=read, args=(p,)) for p in procs]
    for r in readers:
        r.start()
    for r in readers:
        r.join(timeout=180)
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        if p.returncode != 0:
            errors.append(f"exit {p.returncode}: {err.strip()[-300:]}")
    total = time.perf_counter() - t0
    if errors or not first:
        raise RuntimeError(f"hand-written ssh launch: {len(first)} job lines; {'; '.join(errors)}")
    return min(first), total


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=8, repeat=3)
    p.add_argument(
        "--warmup", type=int, default=1, help="uncounted torchrun launches first (default 1; 0: none)"
    )
    p.add_argument(
        "--cifar", action="store_true", help="the CIFAR-10 job (synthetic data) instead of one line"
    )
    p.add_argument(
        "--edit", action="store_true", help="change one workload file before every launch (edit-run loop)"
    )
    args = p.parse_args()
    _bench.check_counts(args)
    what = ("the CIFAR-10 job" if args.cifar else "tiny job") + (
        ", one file edited per run" if args.edit else ""
    )
    _bench.print_environment(f"launch: {what} on {args.nodes} nodes, {args.repeat} repeats")
    work = _bench.scratch_dir("launch")
    job_args, mark, lines = (CIFAR_ARGS, CIFAR_MARK, 1) if args.cifar else ([], MARK, args.nodes)
    try:
        workload = work / "workload"
        if args.cifar:
            shutil.copytree(
                REPO / "workloads" / "cifar10", workload, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            workload.mkdir()
            (workload / "train.py").write_text(TRAIN_PY, encoding="utf-8")
        with _bench.local_pool(args.nodes) as pool:
            inv = pool.inventory
            ssh = OpenSSH(inv, work / "ssh")
            rows: dict[str, Row] = {
                key: Row(name)
                for key, name in [
                    ("l_first", "lepton run_job: first line"),
                    ("l_total", "lepton run_job: whole run (incl. collect)"),
                    ("t_first", "openssh rsync+torchrun: first line"),
                    ("t_total", "openssh rsync+torchrun: whole run"),
                    ("p_first", "openssh rsync+python: first line"),
                    ("p_total", "openssh rsync+python: whole run"),
                ]
            }
            timings: list[dict[str, float]] = []
            # Warm-up (not counted): the first `import torch` after a while reads it from disk.
            for _ in range(args.warmup):
                openssh_once(ssh, pool, workload, torchrun=True, job_args=job_args, mark=mark)
            # Interleaved per repeat so a slow spell of the shared machine hits every approach.
            edit = _edit if args.edit else lambda _workload, _tag: None
            for i in range(args.repeat):
                edit(workload, f"lepton {i}")
                first, total, t = lepton_once(
                    inv, workload, work / "runs", f"launch-{i}", job_args, mark, lines
                )
                rows["l_first"].seconds.append(first)
                rows["l_total"].seconds.append(total)
                timings.append(t)
                edit(workload, f"openssh {i}")
                first, total = openssh_once(ssh, pool, workload, torchrun=True, job_args=job_args, mark=mark)
                rows["t_first"].seconds.append(first)
                rows["t_total"].seconds.append(total)
                if args.cifar:
                    continue
                first, total = openssh_once(ssh, pool, workload, torchrun=False, job_args=job_args, mark=mark)
                rows["p_first"].seconds.append(first)
                rows["p_total"].seconds.append(total)
            if args.cifar:
                del rows["p_first"], rows["p_total"]
            _bench.print_table(f"launch {what} on {args.nodes} nodes", list(rows.values()))
            print("## lepton run_job phases (RunResult.timings, median s)")
            breakdown: dict[str, Any] = {
                k: statistics.median(t[k] for t in timings if k in t)
                for k in PHASES
                if any(k in t for t in timings)
            }
            print("  " + "  ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))
            _bench.RECORD["lepton_phases"] = breakdown
            print(
                "  (run = launch start to the last node's end as the controller saw it; job = first "
                "node's start to last node's end as the nodes recorded it; launch_to_first_log includes "
                "torchrun start-up and the 0.1-0.5 s log polling)\n"
            )
            _bench.ratio("launch", "first-line lepton/openssh-torchrun", rows["l_first"], rows["t_first"])
            _bench.ratio("launch", "whole-run lepton/openssh-torchrun", rows["l_total"], rows["t_total"])
            if not args.cifar:
                _bench.ratio("launch", "first-line lepton/openssh-python", rows["l_first"], rows["p_first"])
                _bench.ratio("launch", "whole-run lepton/openssh-python", rows["l_total"], rows["p_total"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _bench.finish(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
