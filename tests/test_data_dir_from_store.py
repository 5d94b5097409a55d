"""`train.py --data-dir <store URL>` on a real local node: the data set uploaded by the controller's
store client to the pool's file:// store is fetched by the node client the run ships (the agent
names it in LEPTON_STORE_CLIENT), verified, cached on the node, and reused by the next run; the real
CIFAR-10 job trains on it. Without the shipped client (a plain `python train.py`) a URL is refused
in one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_job import write_fake_cifar

from lepton_infra.data import open_store
from lepton_infra.inventory import Inventory
from lepton_infra.workload import runner

JOB = Path(__file__).resolve().parent.parent / "workloads" / "cifar10"


@pytest.mark.slow
def test_the_cifar10_job_trains_on_a_store_url_fetched_once_per_node(
    local_pool_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(1)
    inventory = Inventory.load(pool.inventory_path)
    assert inventory.store and inventory.store.startswith("file://")
    write_fake_cifar(tmp_path / "cifar" / "cifar-10-batches-py", per_batch=8)
    store = open_store(inventory.store)
    store.upload_dir(tmp_path / "cifar", "datasets/cifar10")
    url = f"{inventory.store}/datasets/cifar10"
    workload = tmp_path / "wl"
    shutil.copytree(JOB, workload)
    cache = pool.home("node-0") / ".lepton" / "data-cache"  # the job's default, on the node
    args = ["--data-dir", url, "--epochs", "1", "--batch-size", "8", "--threads", "1", "--log-every", "50"]

    first = runner.run_job(inventory, workload, args, run_id="data-1", runs_dir=tmp_path / "runs")
    log = (tmp_path / "runs" / "data-1" / "node-0" / "logs" / "node.log").read_text()
    assert first.status == "succeeded", log
    metrics = json.loads((tmp_path / "runs" / "data-1" / "node-0" / "output" / "metrics.json").read_text())
    assert metrics["data"]["data_dir"] == url and metrics["data"]["train_samples"] == 40
    (entry,) = cache.iterdir()
    cached = entry / "data" / "cifar-10-batches-py" / "data_batch_1"
    assert cached.read_bytes() == (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1").read_bytes()

    # The next run reuses the node's copy: the store's data objects are gone, its manifest stays.
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ):
        store.delete(f"datasets/cifar10/cifar-10-batches-py/{name}")
    second = runner.run_job(inventory, workload, args, run_id="data-2", runs_dir=tmp_path / "runs")
    log = (tmp_path / "runs" / "data-2" / "node-0" / "logs" / "node.log").read_text()
    assert second.status == "succeeded", log


def test_a_store_url_without_the_shipped_client_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(JOB / "train.py"),
            "--data-dir",
            "s3://bucket/data",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "--data-dir 's3://bucket/data' is a store URL" in proc.stderr
    assert "Traceback" not in proc.stderr
