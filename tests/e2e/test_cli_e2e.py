"""The CLI end to end on real sshd nodes, as a user types it: `local up`, `run -- ARGS`, exit codes,
`status`, `collect`, `local down`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lepton_infra.local import LocalPool, with_foreign_host_key

CLI = [sys.executable, "-m", "lepton_infra.cli"]

pytestmark = pytest.mark.slow


def lepton(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_local_up_run_collect_down_through_the_cli(
    tmp_path: Path, make_workload: Callable[..., Path]
) -> None:
    state = tmp_path / "state"
    up = lepton("local", "up", "--nodes", "2", "--state-dir", str(state), "--name", "cli-pool", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "node-1" in up.stdout and "cli-pool" in up.stdout
    try:
        inventory = state / "inventory.json"
        workload = make_workload()
        ran = lepton(
            "run",
            str(workload),
            "--inventory",
            str(inventory),
            "--run-id",
            "cli-ok",
            "--",
            "lines=4",
            "tag=cli-",
            cwd=tmp_path,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "node-0 | cli-line 0 of 4 from node-0" in ran.stdout
        assert "node-1 | cli-done on node-1" in ran.stdout
        assert "LEPTON_PROGRESS" not in ran.stdout  # progress drives the bar, it is not a log line
        run_json = json.loads((tmp_path / "runs" / "cli-ok" / "run.json").read_text())
        assert json.dumps(run_json).count("succeeded") >= 2
        for node in ("node-0", "node-1"):
            result = json.loads((tmp_path / "runs" / "cli-ok" / node / "output" / "result.json").read_text())
            assert result["tag"] == "cli-" and result["node"] == node

        status = lepton("status", "cli-ok", "--inventory", str(inventory), "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        shape = json.loads(status.stdout)
        assert shape["run_id"] == "cli-ok" and shape["status"] == "succeeded"
        assert [(n["name"], n["state"]) for n in shape["nodes"]] == [
            ("node-0", "succeeded"),
            ("node-1", "succeeded"),
        ]
        assert run_json["cluster"] == "cli-pool" and run_json["status"] == "succeeded"
        assert [n["name"] for n in run_json["nodes"]] == ["node-0", "node-1"]  # the same shape as status

        # Without a RUN_ID, status and logs are about the latest run in ./runs.
        latest = lepton("status", "--inventory", str(inventory), "--json", cwd=tmp_path)
        assert latest.returncode == 0, latest.stderr
        assert json.loads(latest.stdout)["run_id"] == "cli-ok" and "cli-ok" in latest.stderr
        logs = lepton("logs", "--inventory", str(inventory), "--no-follow", "--node", "node-1", cwd=tmp_path)
        assert logs.returncode == 0, logs.stderr
        assert "node-1 | cli-line 3 of 4 from node-1" in logs.stdout and "node-0 |" not in logs.stdout

        failing = lepton(
            "run",
            str(workload),
            "--inventory",
            str(inventory),
            "--run-id",
            "cli-fail",
            "--",
            "lines=30",
            "die_rank=1",
            "die_at=2",
            cwd=tmp_path,
        )
        assert failing.returncode == 1, failing.stdout + failing.stderr
        assert "node-1" in failing.stderr and "cli-fail" in failing.stderr

        listed = lepton("runs", "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        runs = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
        assert runs["cli-ok"]["status"] == "succeeded" and runs["cli-fail"]["status"] == "failed"
        assert runs["cli-ok"]["cluster"] == "cli-pool" and len(runs["cli-ok"]["nodes"]) == 2
        table = lepton("runs", cwd=tmp_path)
        assert "cli-fail" in table.stdout and "cli-pool (local)" in table.stdout

        again = lepton(
            "run", str(workload), "--inventory", str(inventory), "--run-id", "cli-ok", cwd=tmp_path
        )
        assert again.returncode == 2  # an existing run id is never reused: files of two runs never mix
        assert "cli-ok" in again.stderr
    finally:
        down = lepton("local", "down", "--state-dir", str(state), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "stopped 2 node(s)" in down.stdout


def test_tampered_host_key_exits_3_naming_node_and_fingerprints(
    local_pool: LocalPool, tmp_path: Path, make_workload: Callable[..., Path]
) -> None:
    bad = with_foreign_host_key(local_pool.inventory, save_to=tmp_path / "inventory.json")
    real = local_pool.inventory.nodes[-1]
    result = lepton(
        "run", str(make_workload()), "--inventory", str(tmp_path / "inventory.json"), cwd=tmp_path
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert real.name in result.stderr
    assert result.stderr.count("SHA256:") >= 2
    assert bad.nodes[-1].host_key != real.host_key
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_workload_and_entrypoint_exit_2(local_pool: LocalPool, tmp_path: Path) -> None:
    missing = lepton(
        "run", str(tmp_path / "nope"), "--inventory", str(local_pool.inventory_path), cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "nope" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_entry = lepton("run", str(empty), "--inventory", str(local_pool.inventory_path), cwd=tmp_path)
    assert no_entry.returncode == 2
    assert "train.py" in no_entry.stderr
