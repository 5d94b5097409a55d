"""Results reach the store from the nodes themselves: a run on the local pool leaves every node's
output, log and final state in `<store>/runs/<run-id>/<node>/`, run.json says where, and `collect` /
`attach` fetch from there once a node is gone."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lepton_infra.data import open_store
from lepton_infra.data.snapshots import latest_snapshot
from lepton_infra.errors import NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import runner

JOB = textwrap.dedent(
    """\
    import json, os
    name = os.environ["LEPTON_NODE_NAME"]
    print("hello from", name, flush=True)
    with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "result.json"), "w") as f:
        json.dump({"node": name, "rank": int(os.environ["LEPTON_NODE_RANK"])}, f)
    """
)


@pytest.mark.slow
def test_node_stopped_right_after_its_job_still_has_its_results_in_the_store(
    local_pool_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(2)
    inventory = Inventory.load(pool.inventory_path)
    workload = tmp_path / "wl"
    workload.mkdir()
    (workload / "train.py").write_text(JOB)

    result = runner.run_job(inventory, workload, run_id="stored-1", runs_dir=tmp_path / "runs")
    assert result.status == "succeeded"
    record = json.loads((tmp_path / "runs" / "stored-1" / "run.json").read_text())
    assert [n["store_url"] for n in record["nodes"]] == [
        f"{inventory.store}/runs/stored-1/node-0",
        f"{inventory.store}/runs/stored-1/node-1",
    ]
    pool.stop_node("node-1")  # powered off right after its job ended

    with pytest.raises(NodeError):  # the node is really gone
        runner.run_status(inventory, "stored-1", connect_timeout=3)
    fresh = runner.collect(inventory, "stored-1", runs_dir=tmp_path / "elsewhere", connect_timeout=3)
    assert fresh.status == "succeeded"
    for rank, node in enumerate(("node-0", "node-1")):
        got = json.loads((tmp_path / "elsewhere" / "stored-1" / node / "output" / "result.json").read_text())
        assert got == {"node": node, "rank": rank}
        assert "hello from" in (tmp_path / "elsewhere" / "stored-1" / node / "logs" / "node.log").read_text()
    again = json.loads((tmp_path / "elsewhere" / "stored-1" / "run.json").read_text())
    assert {n["collected_from"] for n in again["nodes"]} == {"store"}
    assert [n["state"] for n in again["nodes"]] == ["succeeded", "succeeded"]

    attached = runner.attach(inventory, "stored-1", runs_dir=tmp_path / "third", connect_timeout=3)
    assert attached.status == "succeeded" and all(n.output_dir for n in attached.nodes)
    assert open_store(inventory.store or "").manifest("runs/stored-1/node-1") is not None


def test_collect_of_an_unknown_run_with_nodes_gone_keeps_the_original_error(
    local_pool_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(1)
    inventory = Inventory.load(pool.inventory_path)
    pool.stop_node("node-0")
    with pytest.raises(NodeError, match="node-0"):
        runner.collect(inventory, "never-ran", runs_dir=tmp_path, connect_timeout=3)


def test_run_with_a_missing_store_fails_before_any_node_is_touched(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.errors import ConfigError

    missing = f"file://{tmp_path}/no-such-store"
    inventory = Inventory.load(local_pool.inventory_path).model_copy(update={"store": missing})
    workload = tmp_path / "wl"
    workload.mkdir()
    (workload / "train.py").write_text(JOB)
    with pytest.raises(ConfigError) as err:
        runner.run_job(inventory, workload, run_id="never-1", runs_dir=tmp_path / "runs")
    assert missing in str(err.value)
    with pytest.raises(ConfigError, match="no run 'never-1'"):  # nothing reached any node
        runner.run_status(inventory, "never-1")


CHECKPOINTING_JOB = textwrap.dedent(
    """\
    import os, time
    out = os.environ["LEPTON_OUTPUT_DIR"]
    for epoch in range(1, 1000):
        tmp = os.path.join(out, ".ckpt.tmp")
        with open(tmp, "w") as f:
            f.write(f"epoch {epoch}")
        os.replace(tmp, os.path.join(out, "checkpoint.txt"))
        print("epoch", epoch, flush=True)
        time.sleep(1)
    """
)


@pytest.mark.slow
def test_node_lost_mid_run_leaves_its_last_checkpoint_in_the_store(
    local_pool_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    pool = local_pool_factory(1)
    inventory = Inventory.load(pool.inventory_path)
    workload = tmp_path / "wl"
    workload.mkdir()
    (workload / "train.py").write_text(CHECKPOINTING_JOB)
    store = open_store(inventory.store or "")
    runner_thread = threading.Thread(
        target=lambda: _swallow(
            lambda: runner.run_job(
                inventory,
                workload,
                run_id="ckpt-1",
                runs_dir=tmp_path / "runs",
                env={"CHECKPOINT_UPLOAD_S": "1"},
            )
        ),
        daemon=True,
    )
    runner_thread.start()
    deadline = time.monotonic() + 90
    while latest_snapshot(store, "runs/ckpt-1/node-0") is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert latest_snapshot(store, "runs/ckpt-1/node-0") is not None, "no checkpoint snapshot was stored"
    pool.stop_node("node-0")  # the node is lost mid-run (its job never ends)

    got = runner.collect(inventory, "ckpt-1", runs_dir=tmp_path / "elsewhere", connect_timeout=3)
    [node] = got.nodes
    assert node.state == "lost" and "checkpoint snapshot" in node.detail
    assert (
        (tmp_path / "elsewhere" / "ckpt-1" / "node-0" / "output" / "checkpoint.txt")
        .read_text()
        .startswith("epoch ")
    )
    assert store.manifest("runs/ckpt-1/node-0") is None  # the final upload never happened


def _swallow(fn):  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception:
        pass  # the controller loses the node too; this test looks at the store
