"""Node metrics on the real local pool: sampled while the job runs, shown live (the CLI's live view,
`top`, `status --json`), summarised in run.json with the run's cost, and drawn into metrics.png and
TensorBoard files. The pool has no GPU (GPU fields absent); a fake NVML module on the nodes'
PYTHONPATH drives the GPU path through the real sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.inventory import Inventory
from lepton_infra.workload import run_job
from lepton_infra.workload.report import wait_for_plot

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "lepton_infra.cli"]
FAKE_NVML = Path(__file__).parent.parent / "fixtures" / "fake_nvml"

# Reports progress until the test drops the release file (or a minute passes).
WAITING_JOB = textwrap.dedent(
    """\
    import json, os, sys, time
    release, i = sys.argv[1], 0
    deadline = time.time() + 60
    # A few progress lines whatever the release says: on a loaded machine the samplers can report
    # (and the test release the job) before torchrun has started it.
    while (i < 3 or not os.path.exists(release)) and time.time() < deadline:
        i += 1
        p = {"epoch": 1, "epochs": 1, "step": min(i, 99), "steps": 100, "loss": 2.0 / i, "t": time.time()}
        print("LEPTON_PROGRESS " + json.dumps(p), flush=True)
        time.sleep(0.2)
    print("released", flush=True)
    """
)


def lepton(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120, env=env, check=False
    )


def samplers_of(run_id: str) -> list[str]:
    """Sampler processes of this run still alive (every local node is this machine)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"/{run_id}/.agent/metrics.py" in cmdline:
            found.append(cmdline)
    return found


def test_a_cpu_pool_run_shows_node_lines_live_and_records_metrics_cost_plot_and_tensorboard(
    pool: Inventory, tmp_path: Path, make_workload: Callable[..., Path]
) -> None:
    inventory = tmp_path / "inventory.json"
    pool.model_copy(update={"nodes": pool.nodes[:2]}).save(inventory)
    assert pool.price is not None and pool.price.usd_per_node_hour == 0  # the local pool costs nothing
    workload, release, run_id = make_workload(job=WAITING_JOB), tmp_path / "release", "metrics-cpu"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    argv = [*CLI, "run", str(workload), "-i", str(inventory), "--run-id", run_id, "--metrics-every", "0.5"]
    controller = subprocess.Popen(
        [*argv, "--", str(release)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # While it runs: `top` and `status --json` carry each node's newest sample, without GPU fields.
        deadline, shown = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            top = lepton("top", run_id, "-i", str(inventory), "--once", "--json", cwd=tmp_path)
            if top.returncode == 0 and all(n["metrics"] for n in json.loads(top.stdout)["nodes"]):
                shown = json.loads(top.stdout)
                break
            time.sleep(0.5)
        assert shown is not None, f"no sample from every node within 60 s: {top.stdout} {top.stderr}"
        for node in shown["nodes"]:
            assert (
                node["state"] == "running" and "cpu_pct" in node["metrics"] and "gpus" not in node["metrics"]
            )
        assert shown["cost"]["usd"] == 0 and shown["cost"]["market"] == "local" and not shown["cost"]["final"]
        text = lepton("top", run_id, "-i", str(inventory), "--once", cwd=tmp_path)
        assert text.returncode == 0, text.stderr
        assert "node-0 | GPU - | CPU" in text.stdout and "node-1 | GPU - | CPU" in text.stdout
        status = json.loads(lepton("status", run_id, "-i", str(inventory), "--json", cwd=tmp_path).stdout)
        assert all("mem_total" in n["metrics"] for n in status["nodes"])
    finally:
        release.touch()
        out, err = controller.communicate(timeout=120)
    assert controller.returncode == 0, out + err
    # Piped output gets the node lines as a block at the end (a terminal sees them in place).
    assert "node-0 | GPU - | CPU" in out and "RAM" in out and "CPU mean/peak" in out
    record = json.loads((tmp_path / "runs" / run_id / "run.json").read_text())
    for node in record["nodes"]:
        summary = node["metrics"]
        assert summary["samples"] >= 2 and summary["cpu_pct"]["peak"] >= summary["cpu_pct"]["mean"] >= 0
        assert not [k for k in summary if k.startswith("gpu")]
    assert record["cost"] == {
        "usd": 0.0,
        "usd_per_node_hour": 0.0,
        "market": "local",
        "nodes": 2,
        "hours": record["cost"]["hours"],
        "final": True,
    }
    run_dir = tmp_path / "runs" / run_id
    assert f"node metrics over time: {Path('runs') / run_id / 'metrics.png'}" in out  # where it will be
    # Drawn by a background process once run.json was saved; the controller has already exited.
    assert wait_for_plot(run_dir, timeout=60).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((run_dir / "tensorboard" / "node-0").glob("events.out.tfevents.*"))
    assert events and b"node/cpu_pct" in events[0].read_bytes() and b"job/loss" in events[0].read_bytes()
    assert not samplers_of(run_id)  # the sampler ended with the job
    runs = json.loads(lepton("runs", "--since", "1d", "--json", cwd=tmp_path).stdout)
    assert [r["run_id"] for r in runs["runs"]] == [run_id] and runs["total_usd"] == 0


def test_gpu_figures_come_from_nvml_on_the_node_through_the_real_sampler(
    pool: Inventory, tmp_path: Path, make_workload: Callable[..., Path], recorder: Any
) -> None:
    class MetricsRecorder(recorder):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.samples: list[tuple[str, dict[str, Any]]] = []

        def on_metrics(self, node: str, sample: dict[str, Any]) -> None:
            self.samples.append((node, sample))

    one = pool.model_copy(update={"nodes": pool.nodes[:1]})
    events = MetricsRecorder()
    result = run_job(
        one,
        make_workload(),
        ["lines=8", "delay=0.4"],
        runs_dir=tmp_path / "runs",
        env={"PYTHONPATH": str(FAKE_NVML)},  # where a node's nvidia-ml-py would be
        metrics_every=0.5,
        events=events,
    )
    assert result.succeeded
    assert events.samples and all(s["gpus"][0]["util_pct"] == 90 for _, s in events.samples)
    record = json.loads((result.run_dir / "run.json").read_text())
    summary = record["nodes"][0]["metrics"]
    assert summary["gpu_util_pct"] == {"mean": 60.0, "peak": 60.0} and summary["gpus"] == 2
    assert summary["gpu_temp_c"]["peak"] == 66 and summary["gpu_power_w"]["peak"] == 212.5
    collected = (result.run_dir / "node-0" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert len(collected) == summary["samples"]
    tb = next((result.run_dir / "tensorboard" / "node-0").glob("events.out.tfevents.*")).read_bytes()
    assert b"gpu/util_pct" in tb and b"gpu0/power_w" in tb and b"gpu1/power_w" not in tb
