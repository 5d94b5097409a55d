"""No private key anywhere a read-only role or the node's metadata service can read it: every
resource input of a whole cluster (user data, instance metadata, custom data, tags, descriptions),
base64-decoded where it decodes, holds no 'PRIVATE KEY' except the cloud secret store's own value."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest

from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster

# The one place each cloud keeps a node's host private key (its secret store's value).
SECRET_VALUES = {
    "aws:secretsmanager/secretVersion:SecretVersion",
    "gcp:secretmanager/secretVersion:SecretVersion",
    "azure-native:keyvault:Secret",
}
REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}


def texts(value: Any) -> Iterator[str]:
    """Every string in `value`, and the decoded text of every string that is base64 (Azure's
    custom_data is)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from texts(v)
    elif isinstance(value, str):
        yield value
        try:
            yield base64.b64decode(value, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            pass


def test_the_scan_finds_a_key_hidden_in_base64() -> None:
    hidden = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----").decode()
    assert any("PRIVATE KEY" in t for t in texts({"customData": [hidden]}))


@pytest.mark.parametrize(
    "cloud",
    ["aws", "gcp", "azure"],
)
def test_no_resource_but_the_secret_store_holds_a_private_key(cloud: str) -> None:
    args = TrainingClusterArgs(
        cloud=cloud, accelerator="T4", nodes=2, region=REGION[cloud], allowed_ssh_cidrs=["203.0.113.0/24"]
    )
    _, rec = harness.build(lambda: {"inventory": TrainingCluster("demo", args).inventory})
    holders = {r.name for r in rec.resources if any("PRIVATE KEY" in t for t in texts(r.inputs))}
    stores = {r.name for r in rec.resources if r.type in SECRET_VALUES}
    assert len(stores) == 2  # one secret value per node
    assert holders == stores
