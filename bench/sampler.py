"""The node metrics sampler's own cost: CPU time of the real `lepton_infra/node/metrics.py` process
while it samples, as a share of one core (target: under 1 %).

    .venv/bin/python bench/sampler.py                      # 60 s at the default 5 s interval
    .venv/bin/python bench/sampler.py --seconds 20 --every 1 --fake-nvml

Steady state is measured between two reads of the process's own CPU counters (/proc/<pid>/stat,
utime + stime), after a warm-up that covers the interpreter's start; the start-up cost is printed
separately (paid once per run). `--fake-nvml` puts the tests' stand-in NVML module (two GPUs)
on its path, to include the per-GPU calls' Python overhead (a real driver's calls cost more)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from _bench import ROOT, parser, print_environment, scratch_dir

SAMPLER = ROOT / "lepton_infra" / "node" / "metrics.py"
FAKE_NVML = ROOT / "tests" / "fixtures" / "fake_nvml"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def main() -> None:
    p = parser("CPU cost of the node metrics sampler", nodes=1, repeat=1)
    p.add_argument("--seconds", type=float, default=60.0, help="steady-state seconds measured (default 60)")
    p.add_argument("--every", type=float, default=5.0, help="sampling interval in seconds (default 5)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    p.add_argument("--fake-nvml", action="store_true", help="sample two stand-in GPUs too")
    args = p.parse_args()
    if args.seconds <= 0 or args.every <= 0 or args.warmup < 0:
        sys.exit("--seconds and --every must be > 0, --warmup >= 0")
    print_environment("node metrics sampler: its own CPU use")
    run_dir = scratch_dir("sampler")
    (run_dir / "logs").mkdir()
    env = {**os.environ, "PYTHONPATH": str(FAKE_NVML) if args.fake_nvml else ""}
    proc = subprocess.Popen([sys.executable, str(SAMPLER), str(run_dir), str(args.every)], env=env)
    try:
        time.sleep(args.warmup)
        start_cpu, start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu, wall = cpu_seconds(proc.pid) - start_cpu, time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    samples = len((run_dir / "logs" / "metrics.jsonl").read_text().splitlines())
    shutil.rmtree(run_dir, ignore_errors=True)
    share = 100.0 * cpu / wall
    print(
        f"interval {args.every:g} s, {samples} sample(s) written, GPUs: {'2 fake' if args.fake_nvml else 'none'}"
    )
    print(f"start-up (interpreter + first sample, once per run): {start_cpu * 1000:.0f} ms of CPU")
    print(f"steady state: {cpu * 1000:.0f} ms of CPU over {wall:.1f} s")
    print(f"sampler cost = {share:.3f} % of one core (target < 1 %): {'ok' if share < 1 else 'OVER TARGET'}")
    print(f"  (counters tick every {1000 / TICK:.0f} ms: runs shorter than ~60 s read coarse)")


if __name__ == "__main__":
    main()
