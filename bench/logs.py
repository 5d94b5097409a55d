"""Log streaming under load: N nodes each printing L lines as fast as they can, run through the
real `lepton-infra run` (live view on, output to a pipe); how long the controller takes after the
last node's job ended, and whether every line is in the collected logs.

    .venv/bin/python bench/logs.py [--nodes 16] [--lines 50000]

Prints: the nodes' own job time (first start to last end, from run.json), the controller's wall
time, the gap between them, lines written to the terminal, and lines kept in the collected
node.log files (must equal nodes x lines; the terminal may summarise)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import _bench  # noqa: E402

from lepton_infra.local import LocalPool  # noqa: E402

JOB = """import os, sys
name = os.environ["LEPTON_NODE_NAME"]
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(f"{name} line {i} [bold]not markup[/] of {n}\\n")
out.flush()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    opts = parser.parse_args()
    _bench.print_environment(f"logs: {opts.nodes} nodes x {opts.lines} lines through `lepton-infra run`")
    with tempfile.TemporaryDirectory(prefix="lepton-bench-logs-") as tmp:
        root = Path(tmp)
        workload = root / "workload"
        workload.mkdir()
        (workload / "train.py").write_text(JOB)
        with LocalPool.start(opts.nodes, root / "pool") as pool:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            cmd = [sys.executable, "-m", "lepton_infra.cli", "run", str(workload), "--inventory"]
            cmd += [str(pool.inventory_path), "--run-id", "bench-logs", "--runs-dir", str(root / "runs")]
            cmd += ["--", str(opts.lines)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        record = json.loads((root / "runs" / "bench-logs" / "run.json").read_text())
        timings = record.get("timings", {})
        kept = sum(
            sum(1 for line in path.read_text().splitlines() if " line " in line)
            for path in (root / "runs" / "bench-logs").glob("*/logs/node.log")
        )
        shown = sum(1 for line in done.stdout.splitlines() if " line " in line)
        job = float(timings.get("job", 0.0))
        print(f"nodes {opts.nodes} x lines {opts.lines}")
        print(f"  nodes' job time          {job:7.1f} s")
        print(f"  controller 'run' phase   {float(timings.get('run', 0.0)):7.1f} s")
        print(f"  controller wall (total)  {wall:7.1f} s")
        print(f"  lines kept in node.log   {kept} of {opts.nodes * opts.lines}")
        print(f"  lines shown on terminal  {shown}")
        _bench.RECORD["logs"] = {
            "nodes": opts.nodes,
            "lines": opts.lines,
            "job_s": job,
            "run_phase_s": float(timings.get("run", 0.0)),
            "controller_wall_s": wall,
            "lines_kept": kept,
            "lines_shown": shown,
        }
    _bench.finish(opts)


if __name__ == "__main__":
    main()
