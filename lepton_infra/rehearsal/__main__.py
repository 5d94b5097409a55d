"""`python -m lepton_infra.rehearsal CLOUD [--nodes N]` (what `make rehearse CLOUD=...` runs): boot
the cloud's nodes from their rendered user data, check the first boot, run the CIFAR-10 job on them
through the CLI, trip the watchdog, print the timings, and tear everything down. Each node's console
log is kept under `--workdir`. Exit 0 when nothing was found, 1 with findings, 2 when this machine
cannot rehearse (the reason is printed)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from lepton_infra.rehearsal import session


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lepton_infra.rehearsal", description=__doc__)
    parser.add_argument("cloud", choices=("aws", "gcp", "azure"))
    parser.add_argument("--nodes", type=int, default=1, help="nodes to boot (2 runs the two-node job)")
    parser.add_argument("--state-dir", type=Path, default=Path(".lepton"), help="where the rootfs is cached")
    parser.add_argument("--workdir", type=Path, default=None, help="console logs, inventory, runs (kept)")
    args = parser.parse_args(argv)
    # A TERM (a CI timeout, `kill`) unwinds like Ctrl-C: every container, namespace and server goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = session.unavailable()
    if reason is not None:
        print(f"cannot rehearse here: {reason}", file=sys.stderr)
        return 2
    from lepton_infra.rehearsal.checks import first_boot_findings, trip_watchdog
    from lepton_infra.rehearsal.run import run_cifar

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = (args.workdir or args.state_dir / "rehearsal" / "runs" / f"{args.cloud}-{stamp}").resolve()
    findings: list[str] = []
    with session.rehearsal(args.cloud, args.nodes, args.state_dir.resolve(), workdir) as r:
        print(f"boot -> SSH ready with the pinned key: {', '.join(f'{s:.1f} s' for s in r.ssh_ready_s)}")
        for k in range(len(r.machines)):
            findings += first_boot_findings(r, k)
        job = run_cifar(r, workdir / "runs", f"rehearsal-{args.cloud}-{stamp}")
        print(job.output, end="")
        if job.returncode != 0:
            findings.append(f"the CIFAR-10 job failed (exit {job.returncode})")
        elif job.first_step is not None:
            print(f"boot -> first training step: {max(r.ssh_ready_s) + job.first_step - job.started:.1f} s")
        for k in range(len(r.machines)):
            findings += trip_watchdog(r, k)
    print(f"console logs, inventory and runs: {workdir}")
    for finding in findings:
        print(f"finding: {finding}")
    print("first boot rehearsed: no findings" if not findings else f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
