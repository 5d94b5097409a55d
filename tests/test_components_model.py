"""The cluster's one typed model (`lepton_infra.components.args`): validated and normalised once, at
construction; `validate()` changes nothing; the stack's config keys, Pulumi.yaml and the component
package's inputs are derived from or checked against its fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest

from lepton_infra import config as stack_config
from lepton_infra.components import JobQueueArgs, ObjectStoreArgs, TrainingCluster, TrainingClusterArgs
from lepton_infra.components import args as model
from lepton_infra.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
BASE: dict[str, Any] = {
    "cloud": "aws",
    "accelerator": "T4",
    "region": "us-east-1",
    "allowed_ssh_cidrs": ["203.0.113.0/24"],
    "ssh_public_key": PUBKEY,
}


def test_an_upper_case_cloud_is_normalised_and_builds_the_aws_cluster() -> None:
    """`cloud="AWS"` once passed validation and then failed importing lepton_infra.components.AWS."""
    args = TrainingClusterArgs(**{**BASE, "cloud": "AWS"})
    assert args.cloud == "aws"
    assert (
        ObjectStoreArgs(cloud="GCP").cloud == "gcp" and JobQueueArgs(cloud=" Azure".strip()).cloud == "azure"
    )
    out, rec = harness.build(lambda: {"inventory": TrainingCluster("up", args).inventory}, stack="dev")
    assert json.loads(out["inventory"])["cloud"] == "aws"
    assert len(rec.of("aws:ec2/instance:Instance")) == 1


def test_validate_changes_nothing_and_building_a_cluster_leaves_the_args_alone() -> None:
    args = TrainingClusterArgs(**{**BASE, "ssh_public_key": None, "jump": None})
    before = dataclasses.asdict(args)
    entry = args.validate()
    assert entry.instance_type == "g4dn.xlarge" and dataclasses.asdict(args) == before
    harness.build(lambda: TrainingCluster("c", args), stack="dev")
    assert dataclasses.asdict(args) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 0}, "nodes is 0; allowed: a whole number from 1 to 64"),
        ({"nodes": True}, "nodes is True"),
        ({"spot": "yes"}, "spot is 'yes'; allowed: true or false"),
        ({"cloud": "oracle"}, "cloud is 'oracle'; allowed: aws, gcp, azure"),
        ({"colud": "aws"}, "unknown argument 'colud'"),
        ({"tags": {"a": 1}}, "tags is"),
        ({"user": "Root!"}, "user is 'Root!'"),
        ({"private_egress": "vpn"}, "private_egress is 'vpn'"),
        ({"store_retention_days": 0}, "store_retention_days is 0"),
    ],
)
def test_a_bad_field_is_a_config_error_at_construction(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainingClusterArgs(**{**BASE, **overrides})


def test_a_part_of_a_valid_cluster_is_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """pool/store/queue parts and the cluster's named copy come from valid values: no second check."""
    args = TrainingClusterArgs(**BASE)
    calls: list[str] = []
    monkeypatch.setattr(model, "check_cidrs", lambda *a, **k: calls.append("cidrs") or [])
    pool, store, queue = args.pool_args(), args.store_args(), args.queue_args()
    named = args.with_values(cluster="x")
    assert calls == []
    assert pool.allowed_ssh_cidrs == ["203.0.113.0/24"] and store.cloud == queue.cloud == "aws"
    assert named.cluster == "x" and args.cluster is None


def test_the_stack_keys_come_from_the_model() -> None:
    fields = {f.name for f in dataclasses.fields(TrainingClusterArgs)}
    for key in stack_config.KEYS:
        assert key.field in fields
        assert key.description == model.description(TrainingClusterArgs, key.field)
    assert [k.name for k in stack_config.KEYS if k.required] == ["cloud", "accelerator", "allowedSshCidrs"]
    kinds = {k.name: k.kind for k in stack_config.KEYS}
    assert kinds["nodes"] == "integer" and kinds["spot"] == "boolean" and kinds["jump"] == "json"
    assert kinds["allowedSshCidrs"] == "array" and kinds["storeRetentionDays"] == "integer"


def test_pulumi_yaml_config_block_is_generated_from_the_model() -> None:
    """Regenerate with `python -m lepton_infra.config > Pulumi.yaml.new && mv Pulumi.yaml.new Pulumi.yaml`."""
    current = (ROOT / "Pulumi.yaml").read_text()
    assert current == stack_config.render_pulumi_yaml(current)


def test_a_config_value_is_normalised_by_the_model_too() -> None:
    raw = {"cloud": "AWS", "accelerator": "T4", "allowedSshCidrs": "203.0.113.0/24", "sshPublicKey": PUBKEY}
    assert stack_config.parse(raw, cluster="c", env="dev").args.cloud == "aws"
    with pytest.raises(ConfigError, match=r"^lepton:queueMaxReceiveCount is 0"):
        stack_config.parse({**raw, "queueMaxReceiveCount": "0"}, cluster="c", env="dev")
