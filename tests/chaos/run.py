"""`make chaos`: the full seeded fault loop on a fresh local pool, then the report.

    python tests/chaos/run.py [--iterations 25] [--seed 1] [--nodes 3] [--faults kill-train,...]

Exit status 1 if any invariant was violated. Iterations cycle through the fault kinds in a
seeded random order; `--heartbeat-s` is the controller's heartbeat limit (a hung node is given
up after it)."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_harness import FAULTS, run_chaos  # noqa: E402

from lepton_infra.local import LocalPool  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)}")
    p.add_argument("--late-s", type=float, default=15.0, help="late-sshd: seconds before the sshd starts")
    p.add_argument("--heartbeat-s", type=float, default=30.0, help="the controller's heartbeat limit")
    args = p.parse_args()
    kinds = [k for k in args.faults.split(",") if k]
    unknown = sorted(set(kinds) - set(FAULTS))
    if unknown or args.iterations < 1 or args.nodes < 2:
        sys.exit(f"bad arguments: unknown faults {unknown}, iterations >= 1 and nodes >= 2 required")
    rng = random.Random(args.seed)
    faults = [kinds[i % len(kinds)] for i in range(args.iterations)]
    rng.shuffle(faults)
    work = Path(tempfile.mkdtemp(prefix="lepton-chaos-"))
    try:
        with LocalPool.start(args.nodes, work / "pool") as pool:
            report = run_chaos(
                pool, work, seed=args.seed, faults=faults, late_s=args.late_s, heartbeat_s=args.heartbeat_s
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
