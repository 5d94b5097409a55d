"""The inventory is the contract between the infrastructure and the workload layer: bad files must be
refused with a message that names the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0pGQ1m3cDAbQx5oFq9kqW6C9oXk6m3q6H3zJ6w2mQe"


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "cluster": "dev-aws",
        "cloud": "aws",
        "user": "lepton",
        "private_key_path": "/keys/id_ed25519",
        "python": "python3",
        "nodes": [
            {
                "name": "node-0",
                "host": "203.0.113.7",
                "port": 22,
                "private_ip": "10.0.1.5",
                "host_key": KEY,
                "accelerator": "T4",
                "gpus": 1,
            },
            {
                "name": "node-1",
                "host": "203.0.113.8",
                "port": 22,
                "private_ip": "10.0.1.6",
                "host_key": KEY + " comment",
                "accelerator": "T4",
                "gpus": 1,
            },
        ],
        "store": "s3://bucket/prefix",
        "queue": None,
    }
    doc.update(overrides)
    return doc


def test_valid_inventory_round_trips_and_node_zero_is_master(tmp_path: Path) -> None:
    inv = Inventory.from_json(json.dumps(_doc()))
    assert inv.master.name == "node-0"
    assert inv.nodes[1].host_key == KEY  # the comment is dropped: only type + key are pinned
    path = tmp_path / "inv.json"
    inv.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Inventory.load(path) == inv


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_doc(version=2), "field 'version' is 2"),
        ({k: v for k, v in _doc().items() if k != "version"}, "field 'version' is None"),
        (_doc(nodes=[_doc()["nodes"][0], _doc()["nodes"][0]]), "duplicate node name 'node-0'"),
        (_doc(nodes=[{**_doc()["nodes"][0], "port": 70000}]), "nodes[0].port"),
        (_doc(nodes=[{k: v for k, v in _doc()["nodes"][0].items() if k != "host_key"}]), "nodes[0].host_key"),
        (_doc(nodes=[{**_doc()["nodes"][0], "host_key": "not-a-key"}]), "nodes[0].host_key"),
        (_doc(nodes=[{**_doc()["nodes"][0], "private_ip": "ten.0.0.1"}]), "nodes[0].private_ip"),
        (_doc(cloud="oracle"), "cloud"),
        (_doc(nodes=[]), "nodes"),
        (_doc(store="http://bucket"), "store"),
        (_doc(surprise=True), "surprise"),
    ],
)
def test_bad_inventory_is_refused_naming_the_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Inventory.from_json(json.dumps(doc))
    assert expected in str(info.value)


def test_not_json_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        Inventory.from_json("{nope")
    with pytest.raises(ConfigError, match="does not exist"):
        Inventory.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Inventory.from_json("[1, 2]")
