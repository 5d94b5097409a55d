"""A node with no package index gets the data plane's clients from the controller: on a real sshd
node whose pip can reach no index (PIP_INDEX_URL on a closed port, PIP_NO_INDEX, no pip config) and
whose python has torch but neither boto3 nor obstore (nor pip), the run downloads the wheels for the
node's platform on the controller, ships them into the node's wheel cache and installs them offline;
the next run finds them and does none of it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from lepton_infra.data.client_pins import packages
from lepton_infra.inventory import Inventory
from lepton_infra.local import LocalPool
from lepton_infra.local.pool import node_home
from lepton_infra.workload import run_job
from lepton_infra.workload.models import NullEvents

pytestmark = pytest.mark.slow

JOB = """\
import boto3, obstore, sys
print("clients", boto3.__version__, obstore.__version__, "from", boto3.__file__, flush=True)
"""


def _python_without_the_clients(tmp_path: Path) -> Path:
    """A venv (no pip) that sees this environment's packages (torch) except the clients."""
    venv = tmp_path / "node-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    farm = tmp_path / "farm"
    farm.mkdir()
    hidden = {pin.partition("==")[0] for pin in packages("aws")}
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.split("-")[0].split(".")[0].lower() not in hidden:
            (farm / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "farm.pth").write_text(f"{farm}\n")
    return venv / "bin" / "python"


class _Phases(NullEvents):
    """Keeps the phase lines a user would see; ignores the rest."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_phase(self, phase: str, detail: str) -> None:
        self.seen.append((phase, detail))


def test_node_without_a_package_index_gets_the_clients_from_the_controller(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path / "controller-cache"))
    python = _python_without_the_clients(tmp_path)
    pool = local_pool_factory(1)
    home = node_home(pool.state_dir, "node-0")
    # The node's pip reaches no index, and no pip config (this machine's has local wheel folders).
    (home / ".bashrc").write_text(
        "export PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null\n"
    )
    probe = subprocess.run([str(python), "-c", "import torch, boto3"], capture_output=True, text=True)
    assert "No module named 'boto3'" in probe.stderr  # torch is there, the clients are not
    inv = Inventory.load(pool.inventory_path).model_copy(update={"cloud": "aws", "python": str(python)})
    wl = tmp_path / "wl"
    wl.mkdir()
    (wl / "train.py").write_text(JOB)

    first = _Phases()
    result = run_job(inv, wl, run_id="offline-1", runs_dir=tmp_path / "runs", events=first)  # type: ignore[arg-type]

    log = (tmp_path / "runs" / "offline-1" / "node-0" / "logs" / "node.log").read_text()
    assert result.status == "succeeded", log
    assert f"clients 1.44.8 0.12.1 from {python.parent.parent}" in log  # installed into the node's python
    said = [d for p, d in first.seen if p == "clients"]
    assert any("no package index needed" in d for d in said), first.seen
    cached = sorted(p.name for p in (home / ".lepton" / "wheels").glob("*.whl"))
    assert any(n.startswith("boto3-1.44.8") for n in cached) and any(
        n.startswith("obstore-0.12.1") for n in cached
    )
    assert any(n.startswith("pip-") for n in cached)  # pip came as a wheel too: the venv has none

    downloads = tmp_path / "controller-cache" / "wheels"
    before = {p: p.stat().st_mtime_ns for p in downloads.rglob("*")}
    second = _Phases()
    again = run_job(inv, wl, run_id="offline-2", runs_dir=tmp_path / "runs", events=second)  # type: ignore[arg-type]
    assert again.status == "succeeded"
    assert not [d for p, d in second.seen if p == "clients"]  # the node has them: nothing to bring
    assert {p: p.stat().st_mtime_ns for p in downloads.rglob("*")} == before
    assert os.environ["LEPTON_CACHE_DIR"] == str(tmp_path / "controller-cache")
