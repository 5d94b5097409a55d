"""End to end on real sshd nodes: a node's process dying, the controller being SIGKILLed,
cancel, and two runs at once. The nodes must end clean (no process of the run left anywhere) and
no result may be lost or mixed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import attach, cancel, run_job, run_status


@pytest.mark.slow
def test_one_node_dying_fails_the_run_stops_the_others_and_keeps_its_logs(
    pool: Inventory,
    make_workload: Callable[..., Path],
    recorder: Callable[[], Any],
    leftover_processes: Callable[[str], list[str]],
    tmp_path: Path,
) -> None:
    events = recorder()
    runs = tmp_path / "runs"
    # node-1's process SIGKILLs itself after its 2nd line; the others would run for ~40 s.
    args = ["lines=200", "delay=0.2", "die_rank=1", "die_at=2"]
    result = run_job(pool, make_workload(), args, run_id="dies-1", runs_dir=runs, events=events)

    assert result.status == "failed"
    states = {n.name: n.state for n in result.nodes}
    assert states == {"node-0": "cancelled", "node-1": "failed", "node-2": "cancelled"}
    assert result.node("node-1").exit_code not in (0, None)
    assert any(p == "cancel" and "node-1 failed" in d for p, d in events.phases)
    assert leftover_processes("dies-1") == []
    log = (runs / "dies-1" / "node-1" / "logs" / "node.log").read_text()
    assert "line 1 of 200 from node-1" in log and "line 2 of 200" not in log
    record = json.loads((runs / "dies-1" / "run.json").read_text())
    assert record["status"] == "failed"
    assert [n["state"] for n in record["nodes"]] == ["cancelled", "failed", "cancelled"]


_CONTROLLER = """
import sys
from pathlib import Path
from lepton_infra.inventory import Inventory
from lepton_infra.workload import RunEvents, run_job

class Print(RunEvents):
    def on_log(self, node, line):
        print(node, line, flush=True)

inventory = Inventory.from_json(sys.stdin.readline())
run_job(inventory, Path(sys.argv[1]), ["lines=16", "delay=0.25"], run_id="sigkill-1",
        runs_dir=Path(sys.argv[2]), events=Print())
"""


@pytest.mark.slow
def test_killed_controller_loses_nothing_attach_streams_the_rest_and_collects(
    pool2: Inventory, make_workload: Callable[..., Path], recorder: Callable[[], Any], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    controller = subprocess.Popen(
        [sys.executable, "-c", _CONTROLLER, str(make_workload()), str(runs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert controller.stdin is not None and controller.stdout is not None
    controller.stdin.write(pool2.model_dump_json() + "\n")
    controller.stdin.flush()
    seen = []
    for line in controller.stdout:
        seen.append(line)
        if "line 1 of 16" in line:
            break
    controller.kill()  # SIGKILL: no cleanup, no goodbye
    controller.wait()
    assert any("line 1 of 16" in s for s in seen), seen
    assert json.loads((runs / "sigkill-1" / "run.json").read_text())["status"] == "running"
    assert {s.state for s in run_status(pool2, "sigkill-1")} <= {"running", "succeeded"}

    events = recorder()
    result = attach(pool2, "sigkill-1", runs_dir=runs, events=events)

    assert result.status == "succeeded"
    for node in ("node-0", "node-1"):
        assert f"done on {node}" in events.lines(node)  # the rest was streamed
        log = (runs / "sigkill-1" / node / "logs" / "node.log").read_text().splitlines()
        assert [x for x in log if " of 16 from" in x] == [f"line {i} of 16 from {node}" for i in range(16)]
        assert json.loads((runs / "sigkill-1" / node / "output" / "result.json").read_text())["node"] == node
    record = json.loads((runs / "sigkill-1" / "run.json").read_text())
    assert record["status"] == "succeeded" and record["args"] == ["lines=16", "delay=0.25"]


@pytest.mark.slow
def test_cancel_stops_every_node_and_the_run_reads_cancelled(
    pool2: Inventory,
    make_workload: Callable[..., Path],
    leftover_processes: Callable[[str], list[str]],
    tmp_path: Path,
    controller_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, dict[str, Any]]],
) -> None:
    workload = make_workload()
    thread, box = controller_thread(
        lambda: run_job(
            pool2, workload, ["lines=300", "delay=0.2"], run_id="cancel-1", runs_dir=tmp_path / "runs"
        )
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if [s.state for s in run_status(pool2, "cancel-1")] == ["running", "running"]:
                break
        except ConfigError:
            pass  # not shipped yet
        time.sleep(0.3)
    statuses = cancel(pool2, "cancel-1")
    assert [(s.node, s.state) for s in statuses] == [("node-0", "cancelled"), ("node-1", "cancelled")]
    thread.join(60)
    assert "error" not in box, box
    assert box["result"].status == "cancelled"
    assert leftover_processes("cancel-1") == []


@pytest.mark.slow
def test_two_runs_at_once_on_one_pool_do_not_mix_files(
    pool2: Inventory,
    make_workload: Callable[..., Path],
    recorder: Callable[[], Any],
    tmp_path: Path,
    controller_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, dict[str, Any]]],
) -> None:
    runs = tmp_path / "runs"
    a_dir = make_workload({"only_a.txt": "a"})
    b_dir = make_workload({"only_b.txt": "b"})
    a_events, b_events = recorder(), recorder()
    a, a_box = controller_thread(
        lambda: run_job(
            pool2, a_dir, ["lines=8", "delay=0.25", "tag=A"], run_id="mix-a", runs_dir=runs, events=a_events
        )
    )
    b, b_box = controller_thread(
        lambda: run_job(
            pool2, b_dir, ["lines=8", "delay=0.25", "tag=B"], run_id="mix-b", runs_dir=runs, events=b_events
        )
    )
    a.join(240)
    b.join(240)
    assert "error" not in a_box and "error" not in b_box, (a_box, b_box)
    assert a_box["result"].status == b_box["result"].status == "succeeded"
    for run_id, tag, own, other, events in (
        ("mix-a", "A", "only_a.txt", "only_b.txt", a_events),
        ("mix-b", "B", "only_b.txt", "only_a.txt", b_events),
    ):
        for node in ("node-0", "node-1"):
            out = json.loads((runs / run_id / node / "output" / "result.json").read_text())
            assert (out["run_id"], out["tag"]) == (run_id, tag)
            assert own in out["files"] and other not in out["files"]
            other_tag = "B" if tag == "A" else "A"
            lines = events.lines(node)
            own_lines = [x for x in lines if x.startswith(f"{tag}line")]
            assert own_lines == [f"{tag}line {i} of 8 from {node}" for i in range(8)]
            assert not any(x.startswith((f"{other_tag}line", f"{other_tag}done")) for x in lines), lines
            assert len(list((runs / run_id / node / "output").iterdir())) == 1


def _kill_node_processes(remote_run_dir: str) -> int:
    """SIGKILL everything of one node's run (supervisor included), as if the node had crashed."""
    import os
    import signal

    markers = (remote_run_dir.encode(), f"LEPTON_OUTPUT_DIR={remote_run_dir}/output".encode())
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if markers[0] in cmdline or markers[1] in environ:
            os.kill(int(entry), signal.SIGKILL)
            killed += 1
    return killed


@pytest.mark.slow
def test_node_whose_supervisor_vanished_is_lost_and_the_others_are_stopped(
    pool2: Inventory,
    make_workload: Callable[..., Path],
    leftover_processes: Callable[[str], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    controller_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, dict[str, Any]]],
) -> None:
    runs = tmp_path / "runs"
    workload = make_workload()
    # heartbeat_timeout: the default (30 s) is too patient for a test
    thread, box = controller_thread(
        lambda: run_job(
            pool2,
            workload,
            ["lines=300", "delay=0.2"],
            run_id="crash-1",
            runs_dir=runs,
            heartbeat_timeout=6.0,  # not less: its half bounds node-0's reads on a loaded machine
        )
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if [s.state for s in run_status(pool2, "crash-1")] == ["running", "running"]:
                break
        except ConfigError:
            pass
        time.sleep(0.3)
    node1_dir = json.loads((runs / "crash-1" / "run.json").read_text())["nodes"][1]["remote_run_dir"]
    assert _kill_node_processes(node1_dir) >= 1
    thread.join(120)
    assert "error" not in box, box
    result = box["result"]
    assert result.status == "failed"
    assert [(n.name, n.state) for n in result.nodes] == [("node-0", "cancelled"), ("node-1", "lost")]
    assert "supervisor gone" in result.node("node-1").detail
    assert leftover_processes("crash-1") == []
