"""The report a finished run leaves: summaries, cost and TensorBoard in the controller's process,
metrics.png drawn by a detached process from the saved run.json (real processes, real matplotlib;
no sshd needed: the run folder is written as `collect` leaves it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from lepton_infra.workload import report
from lepton_infra.workload.models import iso
from lepton_infra.workload.record import NodeRecord, RunRecord, RunStore

REPO = Path(__file__).resolve().parents[1]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0pGQ1m3cDAbQx5oFq9kqW6C9oXk6m3q6H3zJ6w2mQe"


def finished_run(runs: Path, run_id: str = "done-1", samples: int = 30) -> Path:
    """A run folder as `collect` leaves it: run.json, and per node its metrics.jsonl and node.log."""
    t0 = time.time() - samples
    ended = iso(t0 + samples)
    nodes = [NodeRecord(name=f"node-{i}", state="succeeded", exit_code=0, ended=ended) for i in range(2)]
    record = RunRecord(
        run_id=run_id,
        cluster="local",
        cloud="local",
        status="succeeded",
        workload="/w/cifar10",
        entrypoint="train.py",
        args=["--data", "synthetic"],
        nodes=nodes,
        created=iso(t0),
    )
    RunStore(runs).save(record)
    for node in nodes:
        logs = runs / run_id / node.name / "logs"
        logs.mkdir(parents=True)
        rows = [
            {"t": t0 + k, "cpu_pct": 40.0 + k, "mem_used": 2**30, "mem_total": 8 * 2**30}
            for k in range(samples)
        ]
        (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        progress = [
            {"epoch": 1, "epochs": 1, "step": k + 1, "steps": samples, "loss": 2.3 / (k + 1), "t": t0 + k}
            for k in range(samples)
        ]
        (logs / "node.log").write_text("".join(f"LEPTON_PROGRESS {json.dumps(p)}\n" for p in progress))
    return runs / run_id


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_the_drawing_process_writes_a_whole_png_and_never_touches_run_json(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "runs")
    before = fingerprint(run_dir / "run.json")
    assert report.start_plot(run_dir) == str(run_dir / "metrics.png")
    png = report.wait_for_plot(run_dir, timeout=60)
    with Image.open(png) as image:
        image.verify()  # every chunk's CRC and the image data: not a half-written file
        assert image.format == "PNG" and image.size == (1500, 420)
    assert fingerprint(run_dir / "run.json") == before
    # Nothing left behind but the plot: no marker, no error, no temporary file.
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.png", "node-0", "node-1", "run.json"]
    assert report.plot_state(run_dir) == ("drawn", str(png))


def test_a_drawing_that_fails_leaves_its_reason_in_the_error_file(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "runs")
    (run_dir / "metrics.png").mkdir()  # where the plot must go is taken: the rename fails
    report.start_plot(run_dir)
    with pytest.raises(report.PlotNotDrawn, match="IsADirectoryError.*metrics.png.error"):
        report.wait_for_plot(run_dir, timeout=60)
    reason = (run_dir / "metrics.png.error").read_text().splitlines()
    assert reason[0].startswith("IsADirectoryError: [Errno 21] Is a directory")
    assert "Traceback" in reason[1]  # the details follow the reason
    assert not list(run_dir.glob("*.pending")) and not list(run_dir.glob(".*.tmp"))
    state, said = report.plot_state(run_dir)
    assert state == "failed" and said.startswith("IsADirectoryError")


def test_a_drawing_process_killed_before_its_result_is_reported_not_waited_for(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "runs")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    (run_dir / "metrics.png.pending").write_text(gone.stdout.strip())  # what a killed drawing leaves
    with pytest.raises(report.PlotNotDrawn, match=rf"PID {gone.stdout.strip()}\) ended without a result"):
        report.wait_for_plot(run_dir, timeout=60)


def test_a_drawing_process_killed_under_a_running_caller_has_its_end_recorded(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "runs")
    report.start_plot(run_dir)
    pending, deadline = run_dir / "metrics.png.pending", time.monotonic() + 60
    while not (pid := pending.read_text().strip()).isdigit() and time.monotonic() < deadline:
        time.sleep(0.02)  # the process names itself once Python runs it, before importing matplotlib
    os.kill(int(pid), signal.SIGKILL)
    error = run_dir / "metrics.png.error"
    # The reaper writes the error, then removes the pending file: wait for both.
    while (not error.exists() or pending.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (
        error.read_text().splitlines()[0]
        == f"the drawing process (PID {pid}) was killed by signal 9 before drawing"
    )
    assert not pending.exists() and not (run_dir / "metrics.png").exists()


def test_without_matplotlib_the_reason_is_given_at_once_and_no_process_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = finished_run(tmp_path / "runs")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees without it
    said = report.start_plot(run_dir)
    assert said.startswith("not written: matplotlib is not installed (pip install matplotlib)")
    assert not (run_dir / "metrics.png.pending").exists()
    with pytest.raises(report.PlotNotDrawn, match=r"pip install matplotlib"):
        report.wait_for_plot(run_dir, timeout=0)


def test_a_run_without_samples_or_progress_has_nothing_to_wait_for(tmp_path: Path) -> None:
    RunStore(tmp_path).save(RunRecord(run_id="empty", cluster="local", cloud="local"))
    with pytest.raises(report.PlotNotDrawn, match="nothing to draw"):
        report.wait_for_plot(tmp_path / "empty", timeout=0)


# The controller's side of the end of a run, in a process of its own: what it imported is what a
# `run` or `collect` pays for between the job's end and returning.
CONTROLLER = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path
    from lepton_infra.inventory import Inventory
    from lepton_infra.workload import NullEvents, follow
    from lepton_infra.workload.record import RunStore

    runs, key = Path(sys.argv[1]), sys.argv[2]
    node = {"name": "node-0", "host": "127.0.0.1", "private_ip": "127.0.0.1", "host_key": key}
    price = {"usd_per_node_hour": 0, "market": "local"}
    inventory = Inventory.model_validate(
        {"version": 1, "cluster": "local", "cloud": "local", "user": "u", "nodes": [node], "price": price}
    )
    store = RunStore(runs)
    follow.write_report(store.load("done-1"), store, inventory, NullEvents())
    print(json.dumps({"matplotlib": sorted(m for m in sys.modules if m.startswith("matplotlib"))}))
    """
)


def test_the_report_leaves_matplotlib_to_a_process_that_outlives_the_controller(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CONTROLLER, str(tmp_path / "runs"), KEY],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"matplotlib": []}
    # The controller has exited; its plot still comes, and the in-process part is in run.json.
    with Image.open(report.wait_for_plot(run_dir, timeout=60)) as image:
        image.verify()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["nodes"][0]["metrics"]["samples"] == 30 and record["cost"]["usd"] == 0
    assert list((run_dir / "tensorboard" / "node-0").glob("events.out.tfevents.*"))
