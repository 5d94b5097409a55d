"""The Pulumi program (`__main__.py`) evaluated under mocks with each stack's own config, the way
`pulumi preview -s <stack>` would, plus the config validation that runs before any resource."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path
from typing import Any

import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest
import yaml

from lepton_infra import config as stack_config
from lepton_infra.components.stack_inventory import inventory_from_stack_output
from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "__main__.py"
STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"


def stack_config_of(path: Path) -> dict[str, str]:
    """A stack file's config as the Pulumi engine hands it to a program: strings, JSON for lists."""
    doc = yaml.safe_load(path.read_text())
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (doc.get("config") or {}).items()}


def cloud_module_missing(cloud: str) -> bool:
    return importlib.util.find_spec(f"lepton_infra.components.{cloud}") is None


def cluster_outputs(cluster: Any) -> dict[str, Any]:
    """A TrainingCluster's outputs as __main__.py exports them (those it has)."""
    outs: dict[str, Any] = {"inventory": cluster.inventory}
    for key in ("store_url", "queue_url", "private_key"):
        if getattr(cluster, key) is not None:
            outs[key] = getattr(cluster, key)
    return outs


def stack_program() -> dict[str, Any]:
    """__main__.py run as the engine runs it; its stack outputs (the mocks' config is the stack's)."""
    namespace = runpy.run_path(str(PROGRAM), run_name="__main__")
    return {
        **cluster_outputs(namespace["cluster"]),
        "hourly_cost_usd": namespace["validated"].hourly_cost_usd,
    }


def run_program(config: dict[str, str], stack: str = "test") -> tuple[dict[str, Any], harness.Recorder]:
    return harness.build(stack_program, stack=stack, config=config)


@pytest.mark.parametrize("stack_file", STACKS, ids=[p.name.split(".")[1] for p in STACKS])
def test_every_stack_file_builds_a_cluster_with_a_valid_inventory(stack_file: Path, tmp_path: Path) -> None:
    config = stack_config_of(stack_file)
    cloud = config["lepton:cloud"]
    if cloud_module_missing(cloud):
        pytest.skip(f"lepton_infra/components/{cloud}.py is not there yet")
    stack = stack_file.name.split(".")[1]
    outputs, rec = run_program(config, stack=stack)

    inventory = Inventory.from_json(outputs["inventory"])
    assert inventory.cloud == cloud
    assert len(inventory.nodes) == int(config["lepton:nodes"])
    assert all(node.host_key.startswith("ssh-ed25519 ") for node in inventory.nodes)
    assert len({node.host_key for node in inventory.nodes}) == len(inventory.nodes)
    assert inventory.store == outputs["store_url"] and inventory.queue == outputs["queue_url"]
    assert inventory.store and inventory.store.split("://")[0] in ("s3", "gs", "az")
    assert outputs["hourly_cost_usd"] is None or outputs["hourly_cost_usd"] > 0
    # No sshPublicKey in the stack files: the program generated one and exports it (secret).
    assert "PRIVATE KEY" in outputs["private_key"]
    written = inventory_from_stack_output(json.dumps(outputs), tmp_path)
    assert Path(written.private_key_path or "").stat().st_mode & 0o777 == 0o600
    # Every resource the program registered is part of the cluster, tagged or labelled with it.
    assert any(r.type.endswith("TrainingCluster") for r in rec.resources)


def test_cost_output_is_catalog_price_times_nodes() -> None:
    config = stack_config_of(ROOT / "stacks" / "Pulumi.dev-gcp.yaml")
    raw = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("lepton:")}
    validated = stack_config.parse(raw, cluster="c", env="dev")
    from lepton_infra.catalog import lookup

    entry = lookup("gcp", "T4", 1, "us-central1")
    assert validated.hourly_cost_usd == pytest.approx(entry.hourly_usd(True) * 1)


GOOD = {
    "cloud": "gcp",
    "region": "us-central1",
    "accelerator": "T4",
    "gpusPerNode": "1",
    "nodes": "2",
    "allowedSshCidrs": '["203.0.113.0/24"]',
}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"cloud": "oracle"}, "lepton:cloud"),
        ({"accelerator": "V100"}, "lepton:accelerator"),
        ({"gpusPerNode": "3"}, "lepton:gpusPerNode"),
        ({"region": "mars-central1"}, "lepton:region"),
        ({"nodes": "0"}, "lepton:nodes is 0"),
        ({"nodes": "two"}, "lepton:nodes is 'two'"),
        ({"allowedSshCidrs": '["0.0.0.0/0"]'}, "lepton:allowWorldSsh"),
        ({"allowedSshCidrs": '["203.0.113.0/33"]'}, "lepton:allowedSshCidrs[0]"),
        ({"sshPublicKey": "ssh-ed25519 not-base64!"}, "lepton:sshPublicKey"),
        ({"sshPublicKey": "hello"}, "lepton:sshPublicKey"),
        ({"spot": "maybe"}, "lepton:spot is 'maybe'"),
        ({"nodez": "2"}, "did you mean lepton:nodes"),
        ({"cloud": None}, "lepton:cloud is not set"),
    ],
)
def test_bad_config_names_the_key_before_any_resource_exists(override: dict[str, Any], expected: str) -> None:
    raw = {**GOOD, **override}
    config = {f"lepton:{k}": v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        run_program(config)
    assert expected in str(info.value)
    assert harness.MOCKS.resources == [], "a resource was registered before validation failed"


def test_world_open_ssh_is_accepted_only_when_explicitly_allowed() -> None:
    raw = {**GOOD, "allowedSshCidrs": '["0.0.0.0/0"]', "allowWorldSsh": "true", "sshPublicKey": PUBKEY}
    validated = stack_config.parse(raw, cluster="c", env="dev")
    assert list(validated.args.allowed_ssh_cidrs) == ["0.0.0.0/0"]


def test_pulumi_yaml_declares_every_config_key_with_its_type() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "lepton" and project["stackConfigDir"] == "stacks"
    declared = project["config"]
    for key, schema in stack_config.schema().items():
        name = key.split(":", 1)[1]
        assert declared[name]["type"] == schema["type"], name
    assert set(declared) == {k.split(":", 1)[1] for k in stack_config.schema()}


def test_stack_inventory_accepts_the_inventory_output_alone_and_rejects_garbage(tmp_path: Path) -> None:
    doc = {
        "version": 1,
        "cluster": "c",
        "cloud": "aws",
        "user": "lepton",
        "private_key_path": None,
        "nodes": [{"name": "node-0", "host": "203.0.113.9", "private_ip": "10.0.0.9", "host_key": PUBKEY}],
    }
    inv = inventory_from_stack_output(json.dumps(json.dumps(doc)), tmp_path)
    assert inv.private_key_path is None and inv.nodes[0].host == "203.0.113.9"
    with pytest.raises(ConfigError, match="not JSON"):
        inventory_from_stack_output("nope", tmp_path)
    with pytest.raises(ConfigError, match="nodes"):
        inventory_from_stack_output(json.dumps({"inventory": {**doc, "nodes": []}}), tmp_path)
