"""The `--json` documents scripts read, pinned key by key: `run --json` (the run's run.json),
`status --json` (the nodes' own view, in run.json's shape) and `runs --json` (the listing). Written
before the CLI built them from the models instead of by hand; it must keep passing unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.local import LocalPool

CLI = [sys.executable, "-m", "lepton_infra.cli"]

pytestmark = pytest.mark.slow

RUN_KEYS = [
    "run_id", "cluster", "cloud", "status", "workload", "entrypoint", "args", "nproc_per_node",
    "master_addr", "master_port", "created", "updated", "nodes", "bytes", "timings", "cost",
]  # fmt: skip
RUN_NODE_KEYS = [
    "name", "host", "rank", "remote_run_dir", "state", "exit_code", "pid", "started", "ended", "detail",
    "bytes_shipped", "files_shipped", "bytes_collected", "output_dir", "log_path", "store_url",
    "store_error", "preflight", "metrics", "killed", "killed_count", "collect_error", "skipped",
    "skipped_count",
]  # fmt: skip
STATUS_KEYS = ["run_id", "status", "nodes", "cost"]
STATUS_NODE_KEYS = [
    "name", "state", "exit_code", "pid", "started", "ended", "heartbeat", "heartbeat_age_s", "detail",
    "results", "metrics", "killed", "killed_count",
]  # fmt: skip
RUNS_KEYS = ["runs_dir", "since", "runs", "total_usd", "runs_without_price"]
RUNS_ROW_KEYS = ["run_id", "status", "nodes", "started", "cluster", "cloud", "run_dir", "cost"]


def lepton(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def _document(done: subprocess.CompletedProcess[str]) -> Any:
    """The parsed stdout, checked to be exactly what `json.dumps(..., indent=2)` prints."""
    assert done.returncode == 0, done.stdout + done.stderr
    parsed = json.loads(done.stdout)
    assert done.stdout == json.dumps(parsed, indent=2) + "\n"
    return parsed


def test_run_status_and_runs_json_keep_their_keys_order_and_types(
    local_pool: LocalPool, tmp_path: Path, make_workload: Callable[..., Path]
) -> None:
    inventory = str(local_pool.inventory_path)
    ran = lepton(
        "run", str(make_workload()), "-i", inventory, "--run-id", "json-1", "--metrics-every", "0",
        "--json", "--", "lines=1", "delay=0", cwd=tmp_path,
    )  # fmt: skip
    run = _document(ran)
    assert ran.stdout == (tmp_path / "runs" / "json-1" / "run.json").read_text()  # run.json as it is
    assert list(run) == RUN_KEYS and run["run_id"] == "json-1" and run["status"] == "succeeded"
    assert [list(n) for n in run["nodes"]] == [RUN_NODE_KEYS] * 3
    # Shipped may be 0: an earlier test of the session may have left this workload in the nodes' cache.
    assert isinstance(run["bytes"]["shipped"], int) and list(run["bytes"]) == ["shipped", "collected"]
    assert isinstance(run["timings"]["total"], float) and run["args"] == ["lines=1", "delay=0"]

    status = _document(lepton("status", "json-1", "-i", inventory, "--json", cwd=tmp_path))
    assert list(status) == STATUS_KEYS and (status["run_id"], status["status"]) == ("json-1", "succeeded")
    assert [list(n) for n in status["nodes"]] == [STATUS_NODE_KEYS] * 3
    first = status["nodes"][0]
    assert (first["name"], first["state"], first["exit_code"]) == ("node-0", "succeeded", 0)
    assert first["killed"] == [] and first["killed_count"] == 0
    assert first["started"].endswith("+00:00") and first["heartbeat_age_s"] is None
    assert status["cost"] == run["cost"]  # the run is over: run.json's final cost
    assert list(run["cost"]) == ["usd", "usd_per_node_hour", "market", "nodes", "hours", "final"]

    listing = _document(lepton("runs", "--json", cwd=tmp_path))
    assert list(listing) == RUNS_KEYS and (listing["runs_dir"], listing["since"]) == ("runs", None)
    (row,) = listing["runs"]
    assert list(row) == RUNS_ROW_KEYS
    assert row["nodes"] == [{"name": f"node-{i}", "state": "succeeded"} for i in range(3)]
    assert (row["run_id"], row["started"], row["run_dir"]) == ("json-1", run["created"], "runs/json-1")
    assert (row["cluster"], row["cloud"]) == (run["cluster"], "local")
    assert row["cost"] == run["cost"]  # the local pool's price: $0 an hour
    assert (listing["total_usd"], listing["runs_without_price"]) == (0.0, 0)
