"""Test workload: the real CIFAR-10 job (workloads/cifar10) with the hooks fault tests need, kept
out of the real job. Every other argument goes to the real job unchanged.

    --fail-at-step N    the process of rank --fail-rank exits with code 17 after global step N,
                        like a crash: no clean-up, its peers see the rank vanish
    --fail-rank R       (default 0)
    --sleep-per-step S  sleep S seconds after every step, so a run lasts long enough to interrupt
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

FAULT_EXIT_CODE = 17
JOB = Path(__file__).resolve().parents[3] / "workloads" / "cifar10"


def main() -> int:
    hooks = argparse.ArgumentParser(add_help=False)
    hooks.add_argument("--fail-at-step", type=int)
    hooks.add_argument("--fail-rank", type=int, default=0)
    hooks.add_argument("--sleep-per-step", type=float, default=0.0)
    ours, rest = hooks.parse_known_args()

    def on_step(rank: int, step: int) -> None:
        if step == ours.fail_at_step and rank == ours.fail_rank:
            print(f"--fail-at-step {step}: rank {rank} exits with code {FAULT_EXIT_CODE}", flush=True)
            sys.stderr.flush()
            os._exit(FAULT_EXIT_CODE)
        if ours.sleep_per_step:
            time.sleep(ours.sleep_per_step)

    sys.path.insert(0, str(JOB))  # the real job imports its sibling modules
    spec = importlib.util.spec_from_file_location("cifar10_train", JOB / "train.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    code: int = job.main(rest, on_step=on_step)
    return code


if __name__ == "__main__":
    sys.exit(main())
