"""The bench/ scripts still run: each one, with tiny sizes, against real local sshd nodes, exits 0
and prints its environment, the noise caveat and its ratio lines. Correctness only: no timing is
asserted here (speed lives in bench/, measured against OpenSSH/rsync/parallel-ssh in the same run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.local.sshd_config import find_sshd

ROOT = Path(__file__).resolve().parent.parent
# Tiny sizes: enough that every approach runs once on more than one node, except job_overhead's CPU
# profile of one job (its subject is a node's CPU by role; the gang start is launch.py's, on 2 nodes),
# which runs on one node: half its torch processes, the smoke test's costliest part.
SCRIPTS = {
    "fanout.py": (["--nodes", "2", "--repeat", "1"], 4),
    "ship.py": (["--nodes", "2", "--repeat", "1", "--files", "20", "--big-mb", "1", "--one-file-mb", "1"], 5),
    "logs.py": (["--nodes", "2", "--lines", "200"], 0),
    "ship_profile.py": (["--upload-mb", "1", "--files", "20"], 0),  # CPU and counts, no ratios
    "launch.py": (["--nodes", "2", "--repeat", "1", "--warmup", "0"], 4),
    "job_overhead.py": (["--nodes", "1", "--repeat", "1", "--warmup", "0", "--samples", "200"], 2),  # CIFAR
    "store.py": (["--mb", "1", "--repeat", "1"], 6),  # against the S3, GCS and Azure emulators
    "sampler.py": (["--seconds", "1", "--every", "0.5", "--warmup", "0.5", "--fake-nvml"], 0),  # no pool
}
RATIO = re.compile(r"^ratio (\S+) (.+?) = (\d+\.\d+)x \(lower is better\)$", re.M)
SKIPPED = re.compile(r"^ratio (\S+) (.+?) = n/a \(skipped: (.+)\)$", re.M)


def _missing_tools() -> str | None:
    try:
        find_sshd()
    except ConfigError as exc:
        return str(exc)
    missing = [tool for tool in ("ssh", "scp", "rsync", "xargs") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} on PATH" if missing else None


@pytest.mark.slow
def test_every_bench_script_runs_on_tiny_sizes_and_prints_its_ratios(tmp_path: Path) -> None:
    reason = _missing_tools()
    if reason is not None:
        pytest.skip(f"bench scripts compare against OpenSSH tools: {reason}")
    ran = sorted(p.name for p in (ROOT / "bench").glob("[!_]*.py"))
    assert ran == sorted(SCRIPTS), f"bench/ has scripts this smoke test does not run: {ran}"
    for script, (args, ratios) in SCRIPTS.items():
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,  # nothing may depend on the caller's directory, nor litter it
        )
        out = proc.stdout
        assert proc.returncode == 0, (
            f"{script} exited {proc.returncode}:\n{out[-2000:]}\n{proc.stderr[-3000:]}"
        )
        assert "caveat:" in out and "environment:" in out and "OpenSSH" in out, out[:800]
        bench = script.removesuffix(".py")
        measured = [m for m in RATIO.findall(out) if m[0] == bench]
        skipped = SKIPPED.findall(out)
        # Only a missing optional baseline (parallel-ssh) may be skipped, and it must say why.
        assert all("parallel-ssh" in why for _, _, why in skipped), skipped
        assert len(measured) + len(skipped) == ratios, out
        assert all(float(value) > 0 for _, _, value in measured), measured
        assert list(tmp_path.iterdir()) == [], f"{script} left files in its working directory"
