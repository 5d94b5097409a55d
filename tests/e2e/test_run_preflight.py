"""Preflight on real sshd nodes: while the run is prepared and shipped, and before anything is
launched, every node's python is asked for torch and its GPUs; a node without torch, or with fewer
GPUs than the inventory says, fails the run (exit 3) naming the node and what it found, and the
run's folders are taken off the nodes again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError, NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import run_job, run_status

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "lepton_infra.cli"]


def _python_without_torch(tmp_path: Path) -> str:
    """This interpreter without its site-packages (-S): the standard library, no torch."""
    wrapper = tmp_path / "python-no-torch"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _with_gpus(inv: Inventory, index: int, gpus: int) -> Inventory:
    nodes = list(inv.nodes)
    nodes[index] = nodes[index].model_copy(update={"gpus": gpus, "accelerator": "T4"})
    return inv.model_copy(update={"nodes": nodes})


def _nothing_ran(inv: Inventory, run_id: str, runs: Path) -> None:
    with pytest.raises(ConfigError, match="no run"):
        run_status(inv, run_id)  # no node has the run's folder: nothing was prepared or launched
    record = json.loads((runs / run_id / "run.json").read_text())  # the local record says why
    assert record["status"] == "failed" and "preflight" in record["error"]


def test_node_without_torch_fails_before_anything_is_launched(
    pool2: Inventory, make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    python = _python_without_torch(tmp_path)
    inv = pool2.model_copy(update={"python": python})
    runs = tmp_path / "runs"
    with pytest.raises(NodeError) as err:
        run_job(inv, make_workload(), run_id="pre-torch", runs_dir=runs)
    message = str(err.value)
    assert err.value.exit_code == 3
    assert "node 'node-0'" in message and "node 'node-1'" in message  # every node's finding at once
    assert "no torch" in message and "ModuleNotFoundError" in message
    assert sys.executable in message  # the interpreter that ran, as the node reports it
    _nothing_ran(pool2, "pre-torch", runs)


def test_node_with_fewer_gpus_than_the_inventory_says_fails_naming_it(
    pool2: Inventory, make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    import torch

    seen = torch.cuda.device_count()  # the local pool's nodes run this interpreter
    inv = _with_gpus(pool2, 1, seen + 2)
    runs = tmp_path / "runs"
    with pytest.raises(NodeError) as err:
        run_job(inv, make_workload(), run_id="pre-gpus", runs_dir=runs)
    message = str(err.value)
    assert "node 'node-1'" in message and "node-0" not in message
    assert f"says {seen + 2} GPU(s) (T4)" in message and f"sees {seen}" in message
    assert f"torch {torch.__version__}" in message
    _nothing_ran(pool2, "pre-gpus", runs)


def test_preflight_findings_are_recorded_and_nproc_defaults_to_one_without_gpus(
    pool2: Inventory, make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    result = run_job(pool2, make_workload(), ["lines=1"], run_id="pre-ok", runs_dir=runs)
    assert result.succeeded
    record = json.loads((runs / "pre-ok" / "run.json").read_text())
    assert record["nproc_per_node"] == 1  # the local pool's inventory says 0 GPUs: CPU, one process
    import torch

    for node in record["nodes"]:
        found = node["preflight"]
        assert found["torch"] == torch.__version__
        assert found["gpus"] == torch.cuda.device_count() and found["cuda"] == torch.cuda.is_available()
    assert "preflight" in result.timings
    # A warm node answers the next run's preflight from its cache, with the same findings.
    run_job(pool2, make_workload(), ["lines=1"], run_id="pre-ok-again", runs_dir=runs)
    again = json.loads((runs / "pre-ok-again" / "run.json").read_text())
    for before, after in zip(record["nodes"], again["nodes"], strict=True):
        assert after["preflight"]["cached"] is True
        assert {**after["preflight"], "cached": None} == {**before["preflight"], "cached": None}


def test_cli_run_exits_3_naming_the_node_when_preflight_fails(
    pool2: Inventory, make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.json"
    import torch

    _with_gpus(pool2, 0, torch.cuda.device_count() + 1).save(inventory)
    ran = subprocess.run(
        [*CLI, "run", str(make_workload()), "--inventory", str(inventory), "--run-id", "pre-cli"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "node-0" in ran.stderr and "GPU(s) (T4) but torch" in ran.stderr
    assert "Traceback" not in ran.stderr
