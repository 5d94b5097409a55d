"""End to end on real sshd nodes: a run ships, launches, streams and collects; shipping is
content-hashed; bad workloads are refused before anything is sent."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.local import node_home
from lepton_infra.workload import read_logs, run_job, run_status


@pytest.mark.slow
def test_run_on_three_nodes_streams_logs_and_progress_and_collects_everything(
    pool: Inventory, make_workload: Callable[..., Path], recorder: Callable[[], Any], tmp_path: Path
) -> None:
    workload = make_workload(
        {"lib/helper.py": "X = 1\n", "data/skip.bin": b"\0" * 10, ".leptonignore": "data/\n"}
    )
    events = recorder()
    runs = tmp_path / "runs"
    result = run_job(pool, workload, ["lines=3", "tag=T-"], run_id="basic-1", runs_dir=runs, events=events)

    assert result.status == "succeeded", result
    assert [n.name for n in result.nodes] == ["node-0", "node-1", "node-2"]
    assert result.run_dir == runs / "basic-1"
    for rank, node in enumerate(result.nodes):
        assert node.state == "succeeded" and node.exit_code == 0
        # live log: every line, in order, progress kept out of it
        # (torchrun itself may add warnings around the job's lines, e.g. at shutdown)
        job_lines = [x for x in events.lines(node.name) if x.startswith("T-")]
        assert job_lines == [f"T-line {i} of 3 from {node.name}" for i in range(3)] + [
            f"T-done on {node.name}"
        ]
        assert not any("LEPTON_PROGRESS" in x for x in events.lines(node.name))
        assert [p["step"] for n, p in events.progress if n == node.name] == [1, 2, 3]
        assert events.done[node.name].state == "succeeded"
        # collected: outputs under <node>/output, the raw log (progress lines included), state
        assert node.output_dir == runs / "basic-1" / node.name / "output"
        out = json.loads((node.output_dir / "result.json").read_text())
        assert out == {
            "run_id": "basic-1",
            "node": node.name,
            "rank": rank,
            "tag": "T-",
            "num_nodes": "3",
            "world_size": "3",
            "files": [".leptonignore", "lib", "train.py"],  # data/ was ignored
        }
        raw_log = (runs / "basic-1" / node.name / "logs" / "node.log").read_text()
        assert raw_log.count("LEPTON_PROGRESS ") == 3 and f"T-done on {node.name}" in raw_log
        assert json.loads((runs / "basic-1" / node.name / "state.json").read_text())["exit_code"] == 0
        assert node.bytes_collected > 0

    record = json.loads((runs / "basic-1" / "run.json").read_text())
    assert record["status"] == "succeeded" and record["run_id"] == "basic-1"
    assert record["cluster"] == pool.cluster and record["args"] == ["lines=3", "tag=T-"]
    assert [n["exit_code"] for n in record["nodes"]] == [0, 0, 0]
    assert record["bytes"]["collected"] == sum(n.bytes_collected for n in result.nodes)
    for key in ("connect", "preflight", "ship", "launch", "first_log", "run", "collect", "total"):
        assert key in record["timings"], key
    # The preflight runs while the run is prepared and shipped; its findings come before the launch.
    assert [p for p, _ in events.phases] == [
        "connect",
        "preflight",
        "prepare",
        "ship",
        "preflight",
        "launch",
        "running",
        "collect",
        "done",
    ]
    print(
        f"\ntime from run_job() to the first log line: {result.timings['first_log']:.2f} s; timings {result.timings}"
    )

    # Later processes see the same run, from the nodes themselves.
    assert [s.state for s in run_status(pool, "basic-1")] == ["succeeded"] * 3
    logs = read_logs(pool, "basic-1", node="node-2")
    assert list(logs) == ["node-2"] and "LEPTON_PROGRESS" not in logs["node-2"]
    assert [x for x in logs["node-2"].splitlines() if x.startswith("T-")] == [
        f"T-line {i} of 3 from node-2" for i in range(3)
    ] + ["T-done on node-2"]


@pytest.mark.slow
def test_second_run_ships_zero_bytes_of_unchanged_files(
    pool2: Inventory, local_pool: tuple[Inventory, Path], make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    # Unique content (no earlier test cached it), over 1 MB: hashed while sent to node 0, which
    # node 1 then fetches it from by digest (the relay).
    blob = os.urandom(1_200_000)
    workload = make_workload({"weights.bin": blob, "copy.bin": blob, "lib/a.py": "A = 1\n"})
    runs = tmp_path / "runs"
    first = run_job(pool2, workload, ["lines=1"], run_id="ship-1", runs_dir=runs)
    assert first.status == "succeeded"
    assert all(n.bytes_shipped >= len(blob) for n in first.nodes)
    for node in pool2.nodes:
        tree = node_home(local_pool[1], node.name) / ".lepton" / "runs" / "ship-1" / "workload"
        assert (tree / "weights.bin").read_bytes() == blob and (tree / "copy.bin").read_bytes() == blob
    # The blobs reach each node's cache in the background settle after the ship: wait for it.
    cached = [
        node_home(local_pool[1], n.name) / ".lepton" / "cache" / hashlib.sha256(blob).hexdigest()
        for n in pool2.nodes
    ]
    deadline = time.monotonic() + 60
    while not all(p.is_file() for p in cached):
        assert time.monotonic() < deadline, "the ship's settle never cached the blob"
        time.sleep(0.05)

    second = run_job(pool2, workload, ["lines=1"], run_id="ship-2", runs_dir=runs)
    assert second.status == "succeeded"
    assert [(n.bytes_shipped, n.files_shipped) for n in second.nodes] == [(0, 0), (0, 0)]
    assert json.loads((runs / "ship-2" / "run.json").read_text())["bytes"]["shipped"] == 0

    # A run id that exists on the nodes is refused; the existing run's files stay untouched.
    with pytest.raises(ConfigError, match="'ship-2' already exists on node\\(s\\) node-0, node-1"):
        run_job(pool2, workload, ["lines=1"], run_id="ship-2", runs_dir=tmp_path / "elsewhere")
    assert [s.state for s in run_status(pool2, "ship-2")] == ["succeeded", "succeeded"]


def test_missing_workload_dir_is_refused_before_connecting(pool: Inventory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        run_job(pool, tmp_path / "nope", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_workload_without_entrypoint_is_refused(pool: Inventory, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.py").write_text("")
    with pytest.raises(ConfigError, match="no entrypoint 'train.py'"):
        run_job(pool, tmp_path / "w", runs_dir=tmp_path / "runs")


def test_bad_run_id_and_ignored_entrypoint_are_refused(
    pool: Inventory, make_workload: Callable[..., Path]
) -> None:
    with pytest.raises(ConfigError, match="run id '../x' is not allowed"):
        run_job(pool, make_workload(), run_id="../x")
    with pytest.raises(ConfigError, match="excluded by .leptonignore"):
        run_job(pool, make_workload({".leptonignore": "*.py\n"}))
