"""The nodes' clients know the cluster's region: every cloud's stack writes it into the inventory
(under Pulumi mocks; the provider's region when the args name none), the inventory validates it and
still loads without it, and the workload layer hands it to everything it starts on a node (jobs,
their uploader, sweep workers) as the names the clients read."""

from __future__ import annotations

import json

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest

from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec


def _inventory(cloud: str, region: str | None, **extra: object) -> Inventory:
    args = TrainingClusterArgs(
        cloud=cloud, accelerator="T4", region=region, allowed_ssh_cidrs=["203.0.113.0/24"], **extra
    )
    out, _ = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    return Inventory.from_json(out["inventory"])


@pytest.mark.parametrize(
    ("cloud", "region", "expected"),
    [
        ("aws", "eu-west-1", "eu-west-1"),
        ("aws", None, harness.AWS_REGION),  # the provider's own region, as the instances get it
        ("gcp", "europe-west4", "europe-west4"),
        ("azure", "westeurope", "westeurope"),
    ],
)
def test_every_clouds_inventory_names_the_nodes_region(cloud: str, region: str | None, expected: str) -> None:
    assert _inventory(cloud, region).region == expected


def test_gcp_region_follows_the_zone_when_only_the_zone_is_set() -> None:
    assert _inventory("gcp", None, zone="europe-west4-b").region == "europe-west4"


def _doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "version": 1,
        "cluster": "c",
        "cloud": "aws",
        "user": "u",
        "nodes": [
            {
                "name": "node-0",
                "host": "10.0.0.1",
                "private_ip": "10.0.0.1",
                "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            }
        ],
    }
    doc.update(changes)
    return doc


def test_inventory_without_region_still_loads_and_a_bad_one_is_named() -> None:
    assert Inventory.from_dict(_doc()).region is None  # written before the field existed
    assert Inventory.from_dict(_doc(region="eu-west-1")).region == "eu-west-1"
    with pytest.raises(ConfigError, match=r"region: .*pattern.*'EU West 1'"):
        Inventory.from_dict(_doc(region="EU West 1"))


def test_jobs_get_the_region_under_the_names_the_clients_read_and_user_env_wins() -> None:
    inv = Inventory.from_dict(_doc(region="eu-west-1"))
    env = jobspec.node_env(inv, rank=0, run_id="r", output_dir="/o", nproc_per_node=1)
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == env["LEPTON_REGION"] == "eu-west-1"
    mine = jobspec.node_env(
        inv, rank=0, run_id="r", output_dir="/o", nproc_per_node=1, extra={"AWS_DEFAULT_REGION": "us-west-2"}
    )
    assert mine["AWS_DEFAULT_REGION"] == "us-west-2"
    gcp = Inventory.from_dict(_doc(cloud="gcp", region="europe-west4"))
    assert jobspec.cluster_env(gcp) == {"LEPTON_REGION": "europe-west4"}  # no AWS names elsewhere
    assert jobspec.cluster_env(Inventory.from_dict(_doc())) == {}
    assert json.loads(inv.to_json())["region"] == "eu-west-1"
