"""Whole clusters' resource graphs, on every cloud: `pulumi preview` registers the same resources as
`pulumi up`, and every resource of a kind able to carry tags (labels on GCP) carries ours, judged
from the provider's own typed *Args (so a new resource kind cannot slip through untagged)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest

from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.common import gcp_labels, tags_for
from lepton_infra.components.neutral import TrainingCluster

# The argument that holds tags on each provider (GCP's `tags` are network tags; labels are its tags).
TAG_FIELD = {"aws": "tags", "gcp": "labels", "azure-native": "tags"}
VARIANTS = {
    "public": {},
    "private-nat": {"allowed_ssh_cidrs": ["10.8.0.0/16"]},
    "private-endpoints": {"allowed_ssh_cidrs": ["10.8.0.0/16"], "private_egress": "endpoints"},
    "multi-gpu": {"accelerator": "H100", "gpus_per_node": 8},
}


def cluster(cloud: str, **overrides: Any) -> Any:
    args = TrainingClusterArgs(**harness.demo_spec(cloud, **overrides))
    return lambda: {"inventory": TrainingCluster("demo", args).inventory}


def args_class(token: str) -> type | None:
    """The provider's typed *Args class for a resource token (`aws:ec2/vpc:Vpc` ->
    pulumi_aws.ec2.VpcArgs); None for components and unknown kinds."""
    package, module, name = token.split(":")
    top = {
        "aws": "pulumi_aws",
        "gcp": "pulumi_gcp",
        "azure-native": "pulumi_azure_native",
        "tls": "pulumi_tls",
    }
    if package not in top:
        return None
    path = f"{top[package]}.{module.split('/')[0]}" if module != "index" else top[package]
    try:
        return getattr(importlib.import_module(path), f"{name}Args", None)
    except ImportError:
        return None


def test_the_args_lookup_finds_the_providers_classes() -> None:
    vpc = args_class("aws:ec2/vpc:Vpc")
    assert vpc is not None and "tags" in inspect.signature(vpc).parameters
    assert args_class("lepton:aws:GpuVmPool") is None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_aws_preview_registers_the_same_graph_as_an_update(variant: str) -> None:
    program = cluster("aws", **VARIANTS[variant])
    _, up = harness.build(program)
    _, preview = harness.build(program, preview=True)
    assert sorted((r.type, r.name) for r in preview.resources) == sorted(
        (r.type, r.name) for r in up.resources
    )


@pytest.mark.parametrize(
    ("cloud", "variant"), [("aws", v) for v in sorted(VARIANTS)] + [("gcp", "public"), ("azure", "public")]
)
def test_every_resource_that_can_carry_tags_carries_ours(cloud: str, variant: str) -> None:
    _, rec = harness.build(cluster(cloud, **VARIANTS[variant]))
    ours = tags_for("demo", "dev")
    expected = gcp_labels(ours) if cloud == "gcp" else ours
    kinds_checked, missing = set(), []
    for r in rec.resources:
        cls = args_class(r.type)
        field = TAG_FIELD.get(r.type.split(":")[0])
        if cls is None or field is None or field not in inspect.signature(cls).parameters:
            continue
        kinds_checked.add(r.type)
        got = r.inputs.get(field) or {}  # one word: the wire name is the Python name
        if any(got.get(k) != v for k, v in expected.items()):
            missing.append(f"{r.type} {r.name}: {got}")
    assert not missing, "\n".join(missing)
    assert len(kinds_checked) >= 4, kinds_checked  # not vacuous: the big kinds are among them
