"""Nodes get the data plane's clients: each cloud's rendered user data (under Pulumi mocks) installs
its pinned packages into the interpreter the inventory names, last in runcmd (after GCP/Azure made
that interpreter), and cloud-init's own schema accepts it; the pins lie inside pyproject.toml's
ranges; the real first-boot script installs (from a local wheel, offline), skips a second time, and
retries then fails naming the pins when the index is unreachable."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest
import yaml
from packaging.requirements import Requirement

from lepton_infra.components import node_clients
from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.inventory import Inventory

ROOT = Path(__file__).resolve().parent.parent
REGIONS = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}


def test_every_pin_is_exact_and_inside_pyprojects_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    declared += [Requirement(r) for r in project.get("dependencies", [])]
    ranges = {r.name.lower(): r.specifier for r in declared}
    for cloud in ("aws", "gcp", "azure"):
        for pin in node_clients.packages(cloud):
            name, _, version = pin.partition("==")
            assert version and name.lower() in ranges, pin
            assert ranges[name.lower()].contains(version), f"{pin} outside pyproject's {ranges[name.lower()]}"
    assert "obstore==0.12.1" in node_clients.packages("aws")
    with pytest.raises(ValueError, match="allowed: aws, azure, gcp"):
        node_clients.packages("ibm")


def user_data_of(cloud: str, rec: harness.Recorder) -> list[str]:
    if cloud == "aws":
        return [i.inputs["userData"] for i in rec.of("aws:ec2/instance:Instance")]
    if cloud == "gcp":
        return [i.inputs["metadata"]["user-data"] for i in rec.of("gcp:compute/instance:Instance")]
    vms = rec.of("azure-native:compute:VirtualMachine")
    return [base64.b64decode(v.inputs["osProfile"]["customData"]).decode() for v in vms]


@pytest.fixture(scope="module", params=["aws", "gcp", "azure"])
def built(request: pytest.FixtureRequest) -> tuple[str, str, list[str]]:
    cloud = request.param
    args = TrainingClusterArgs(
        cloud=cloud, accelerator="T4", region=REGIONS[cloud], nodes=2, allowed_ssh_cidrs=["203.0.113.0/24"]
    )
    out, rec = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    return cloud, Inventory.from_json(out["inventory"]).python, user_data_of(cloud, rec)


def test_user_data_installs_the_clouds_pins_into_the_inventorys_python_last(
    built: tuple[str, str, list[str]],
) -> None:
    cloud, python, texts = built
    assert len(texts) == 2
    for text in texts:
        doc = yaml.safe_load(text)
        files = {f["path"]: f for f in doc["write_files"]}
        script = files[node_clients.INSTALL_PATH]
        assert script["permissions"] == "0755"
        assert script["content"] == node_clients.install_script(cloud, python)
        assert f"\npy={python}\n" in script["content"]
        for pin in node_clients.packages(cloud):
            assert pin in script["content"]
        others = {
            c for other in ("aws", "gcp", "azure") if other != cloud for c in node_clients.PER_CLOUD[other]
        }
        assert not [p for p in others if p in script["content"]], "only this cloud's clients"
        runcmd = [c if isinstance(c, str) else " ".join(c) for c in doc["runcmd"]]
        assert runcmd[-1].strip() == node_clients.INSTALL_PATH
        makes_python = {"gcp": "lepton-find-python", "azure": "lepton-install-torch"}.get(cloud)
        if makes_python:  # the interpreter exists before the clients go into it
            assert any(makes_python in c for c in runcmd[:-1])


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_configured_python_is_the_one_the_clients_go_into_and_the_inventory_names(cloud: str) -> None:
    """`lepton:python`: one interpreter per cluster, from config to the first boot to the inventory."""
    python = "/opt/custom env/bin/python3"  # a space: the script must keep it one word
    args = TrainingClusterArgs(
        cloud=cloud,
        accelerator="T4",
        region=REGIONS[cloud],
        allowed_ssh_cidrs=["203.0.113.0/24"],
        python=python,
    )
    out, rec = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    assert Inventory.from_json(out["inventory"]).python == python
    (text,) = user_data_of(cloud, rec)
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    script = files[node_clients.INSTALL_PATH]["content"]
    assert script == node_clients.install_script(cloud, python)
    assert "\npy='/opt/custom env/bin/python3'\n" in script


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_nodes_without_a_package_index_leave_the_clients_to_the_first_run(cloud: str) -> None:
    """`privateEgress: endpoints`: no pip retries at boot (the index is unreachable by design)."""
    args = TrainingClusterArgs(
        cloud=cloud,
        accelerator="T4",
        region=REGIONS[cloud],
        allowed_ssh_cidrs=["10.0.0.0/8"],
        private_egress="endpoints",
    )
    _, rec = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    (text,) = user_data_of(cloud, rec)
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    assert '"${LEPTON_PACKAGE_INDEX:-none}" = none' in files[node_clients.INSTALL_PATH]["content"]


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs the cloud-init package")
def test_each_clouds_user_data_with_the_clients_passes_cloud_inits_schema(
    built: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    doc = tmp_path / "user-data.yaml"
    doc.write_text(built[2][0])
    out = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(doc)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- the real script


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel `lepton-probe==1.0`, so pip installs offline from a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "lepton_probe-1.0-py3-none-any.whl"
    info = "lepton_probe-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("lepton_probe/__init__.py", "VALUE = 1\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: lepton-probe\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(
            f"{info}/RECORD",
            f"lepton_probe/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n",
        )
    return folder


def run_script(tmp_path: Path, python: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "install-clients"
    script.write_text(node_clients.install_script("aws", str(python)))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    return subprocess.run(
        ["/bin/sh", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    return tmp_path / "venv" / "bin" / "python"


def test_the_script_installs_the_pins_then_a_rerun_changes_nothing(tmp_path: Path, venv: Path) -> None:
    links = probe_wheel(tmp_path / "wheels")
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links), "LEPTON_CLIENT_PINS": "lepton-probe==1.0"}
    first = run_script(tmp_path, venv, **offline)
    assert first.returncode == 0, first.stderr
    assert "has lepton-probe==1.0" in first.stdout and "already" not in first.stdout
    ran = subprocess.run(
        [str(venv), "-c", "import lepton_probe; print(lepton_probe.VALUE)"], capture_output=True
    )
    assert ran.stdout.strip() == b"1"
    (links / "lepton_probe-1.0-py3-none-any.whl").unlink()  # a second run must not need the index
    again = run_script(tmp_path, venv, **offline)
    assert again.returncode == 0 and "already has lepton-probe==1.0" in again.stdout, again.stderr


def test_the_script_retries_then_gives_up_without_failing_the_boot(tmp_path: Path, venv: Path) -> None:
    """The node stays usable: the first run brings the clients from the controller (workload/clients.py)."""
    out = run_script(
        tmp_path,
        venv,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",  # discard port: nothing answers
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
        LEPTON_CLIENT_PINS="lepton-probe==1.0",
        LEPTON_INSTALL_TRIES="2",
        LEPTON_INSTALL_WAIT="0",
    )
    assert out.returncode == 0
    assert "(try 1 of 2)" in out.stderr
    assert f"pip install of lepton-probe==1.0 into {venv} failed after 2 tries" in out.stderr
    assert "the first `lepton-infra run` installs them from the controller" in out.stderr


def test_without_a_package_index_the_script_tries_nothing_and_says_who_installs(
    tmp_path: Path, venv: Path
) -> None:
    script = tmp_path / "install-clients"
    script.write_text(node_clients.install_script("aws", str(venv), package_index=False))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    out = subprocess.run(["/bin/sh", str(script)], env=base, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "try" not in out.stderr
    assert "no package index on this node's network (privateEgress: endpoints)" in out.stdout


def test_the_script_says_so_when_the_interpreter_is_missing(tmp_path: Path) -> None:
    out = run_script(tmp_path, tmp_path / "no" / "python")
    assert out.returncode == 1 and "no interpreter" in out.stderr and "obstore==0.12.1" in out.stderr


def test_aws_node_user_data_still_fits_the_ec2_limit_with_the_clients(built: Any) -> None:
    cloud, _, texts = built
    if cloud == "aws":
        assert max(len(t.encode()) for t in texts) < 16384
