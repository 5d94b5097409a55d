"""The interpreter the inventory names on GCP and Azure nodes exists there with torch: the image
table's rows are the pools' defaults, the GCP node points /opt/lepton/bin/python at the image's
interpreter that imports torch (the real first-boot script, against real interpreters here), and the
Azure node installs the pinned CUDA torch into the venv the inventory names (script checked, and
re-running it on a venv that already has torch changes nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest

from lepton_infra.components import azure, gcp, images, node_clients
from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.inventory import Inventory


def test_the_table_rows_are_the_pools_defaults() -> None:
    gcp_row, azure_row = images.default_image("gcp"), images.default_image("azure")
    assert gcp_row is not None and azure_row is not None
    assert gcp_row.image == gcp.DEFAULT_IMAGE and gcp_row.python == gcp.PYTHON_WRAPPER
    assert azure_row.image == azure.DEFAULT_IMAGE and azure_row.python == f"{azure.VENV}/bin/python"
    for row in (gcp_row, azure_row):
        assert row.read_on and row.source.startswith("https://")


@pytest.mark.parametrize(
    ("cloud", "region", "python"),
    [("gcp", "us-central1", "/opt/lepton/bin/python"), ("azure", "eastus", "/opt/lepton/venv/bin/python")],
)
def test_the_inventory_names_the_tables_interpreter(cloud: str, region: str, python: str) -> None:
    args = TrainingClusterArgs(
        cloud=cloud, accelerator="T4", region=region, allowed_ssh_cidrs=["203.0.113.0/24"]
    )
    out, _ = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    assert Inventory.from_json(out["inventory"]).python == python


def fake_interpreter(path: Path, *, torch: bool) -> Path:
    """An executable standing for an image's python: the real one here if it has torch."""
    target = sys.executable if torch else "/nonexistent/python3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    path.chmod(0o755)
    return path


def test_gcp_first_boot_points_the_wrapper_at_the_interpreter_with_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "find-python"
    script.write_text(gcp.FIND_PYTHON)
    without = fake_interpreter(tmp_path / "conda" / "python3", torch=False)
    with_torch = fake_interpreter(tmp_path / "system" / "python3", torch=True)
    wrapper = tmp_path / "opt-lepton" / "bin" / "python"
    env = {
        **os.environ,
        "LEPTON_PYTHON_WRAPPER": str(wrapper),
        "LEPTON_PYTHON_CANDIDATES": f"{without} {with_torch}",
    }
    out = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ran = subprocess.run(
        [str(wrapper), "-c", "import torch, sys; print(torch.__version__)"], capture_output=True, text=True
    )
    assert ran.returncode == 0 and ran.stdout.strip()


def test_gcp_first_boot_says_so_when_no_interpreter_has_torch(tmp_path: Path) -> None:
    script = tmp_path / "find-python"
    script.write_text(gcp.FIND_PYTHON)
    none = fake_interpreter(tmp_path / "a" / "python3", torch=False)
    wrapper = tmp_path / "bin" / "python"
    env = {**os.environ, "LEPTON_PYTHON_WRAPPER": str(wrapper), "LEPTON_PYTHON_CANDIDATES": str(none)}
    out = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no interpreter with torch" in out.stderr
    assert not wrapper.exists()


def test_azure_install_is_pinned_checked_by_sh_and_a_no_op_when_torch_is_there(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert "'torch==2.9.1+cu126'" in azure.INSTALL_TORCH
    assert "--extra-index-url https://download.pytorch.org/whl/cu126" in azure.INSTALL_TORCH
    script = tmp_path / "install-torch"
    script.write_text(azure.INSTALL_TORCH)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    venv = tmp_path / "venv"
    fake_interpreter(venv / "bin" / "python", torch=True)
    env = {**os.environ, "LEPTON_VENV": str(venv), "PATH": "/nonexistent"}  # apt/pip would fail here
    out = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "already has torch" in out.stdout


def test_azure_nodes_install_torch_only_on_the_default_image() -> None:
    import base64

    _, rec = harness.build(lambda: azure.AzureGpuVmPool("p", _azure_args()))
    text = base64.b64decode(
        rec.of("azure-native:compute:VirtualMachine")[0].inputs["osProfile"]["customData"]
    ).decode()
    assert azure.INSTALL_TORCH_PATH in text and "torch==2.9.1+cu126" in text
    _, rec = harness.build(
        lambda: azure.AzureGpuVmPool("p", _azure_args(image="canonical:ubuntu-24_04-lts:server:latest"))
    )
    text = base64.b64decode(
        rec.of("azure-native:compute:VirtualMachine")[0].inputs["osProfile"]["customData"]
    ).decode()
    assert azure.INSTALL_TORCH_PATH not in text


def test_gcp_nodes_make_the_wrapper_at_first_boot() -> None:
    import yaml

    _, rec = harness.build(lambda: gcp.GcpGpuVmPool("p", _gcp_args()))
    doc = yaml.safe_load(rec.of("gcp:compute/instance:Instance")[0].inputs["metadata"]["user-data"])
    # Then the data plane's clients go into the wrapper's interpreter (test_node_clients.py).
    assert [c.strip() for c in doc["runcmd"][-2:]] == [gcp.FIND_PYTHON_PATH, node_clients.INSTALL_PATH]
    assert any(f["path"] == gcp.FIND_PYTHON_PATH for f in doc["write_files"])


PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 user@test"


def _azure_args(**kw: object) -> object:
    from lepton_infra.components.args import GpuVmPoolArgs

    return GpuVmPoolArgs(
        cloud="azure",
        accelerator="T4",
        region="eastus",
        allowed_ssh_cidrs=["203.0.113.0/24"],
        ssh_public_key=PUBKEY,
        **kw,
    )  # type: ignore[arg-type]


def _gcp_args() -> object:
    from lepton_infra.components.args import GpuVmPoolArgs

    return GpuVmPoolArgs(
        cloud="gcp",
        accelerator="T4",
        region="us-central1",
        allowed_ssh_cidrs=["203.0.113.0/24"],
        ssh_public_key=PUBKEY,
    )


def test_gcp_first_boot_finds_torch_in_a_conda_environment_of_the_image(tmp_path: Path) -> None:
    """Deep Learning VM generations kept torch in different places (/opt/conda, a conda env under
    /opt/conda/envs, a venv under /opt): the search covers them, globs included, in that order."""
    pytest.importorskip("torch")
    script = tmp_path / "find-python"
    script.write_text(gcp.FIND_PYTHON)
    root = tmp_path / "image"
    fake_interpreter(root / "opt" / "conda" / "bin" / "python3", torch=False)
    env_python = fake_interpreter(root / "opt" / "conda" / "envs" / "pytorch" / "bin" / "python3", torch=True)
    wrapper = tmp_path / "opt-lepton" / "bin" / "python"
    env = {**os.environ, "LEPTON_PYTHON_WRAPPER": str(wrapper), "LEPTON_PYTHON_ROOT": str(root)}
    out = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"exec {env_python} " in wrapper.read_text()
    assert f"{root}/opt/conda/bin/python3 has no torch" in out.stderr  # what it tried is in the boot log


def test_every_image_row_says_what_was_read_where_and_when() -> None:
    from datetime import date

    from lepton_infra.components.images import IMAGES

    for row in IMAGES:
        assert date.fromisoformat(row.read_on) <= date.today(), row
        assert row.source.startswith("https://") and row.python_source, row
