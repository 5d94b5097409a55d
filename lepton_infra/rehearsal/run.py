"""The job on the booted rehearsal nodes, through the real CLI (`lepton-infra run`: preflight, ship,
train, results to the cloud's store emulator, collect), timed: when the first training step's log
line arrived, so boot-to-first-step can be reported beside boot-to-SSH-ready."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lepton_infra.rehearsal.session import Rehearsal

REPO_ROOT = Path(__file__).resolve().parents[2]
# Small: one epoch of a 2,000-sample synthetic set, logged often, so the rehearsal stays ~a minute.
JOB_ARGS = ("--data", "synthetic", "--epochs", "1", "--train-samples", "2000", "--test-samples", "500",
            "--batch-size", "64", "--threads", "1", "--log-every", "5")  # fmt: skip
_STEP = re.compile(r"\bstep\b|\bloss\b", re.IGNORECASE)


@dataclass
class JobRun:
    returncode: int
    output: str
    run_id: str
    runs_dir: Path
    started: float  # monotonic, when the CLI was started
    first_step: float | None  # monotonic, when the first training step's line arrived


def run_cifar(r: Rehearsal, runs_dir: Path, run_id: str, timeout: float = 240.0) -> JobRun:
    """`lepton-infra run workloads/cifar10` on `r`'s inventory; the store emulator's variables are
    set for this process only (collect from the store reads it the way a user's machine would)."""
    assert r.inventory_path is not None
    argv = [sys.executable, "-m", "lepton_infra.cli", "run", str(REPO_ROOT / "workloads" / "cifar10"),
            "--inventory", str(r.inventory_path), "--runs-dir", str(runs_dir), "--run-id", run_id,
            "--", *JOB_ARGS]  # fmt: skip
    env = {**os.environ, **r.host_env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    started, first, lines = time.monotonic(), None, []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        deadline = started + timeout
        for line in proc.stdout:
            lines.append(line)
            if first is None and " | " in line and _STEP.search(line.split(" | ", 1)[1]):
                first = time.monotonic()
            if time.monotonic() > deadline:
                proc.kill()
                lines.append(f"rehearsal: the run took longer than {timeout:.0f} s; killed\n")
                break
        proc.wait(30)
    return JobRun(proc.returncode, "".join(lines), run_id, runs_dir, started, first)
