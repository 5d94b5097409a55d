"""What a refactor of the components must not change: every resource's URN (type, name and parent
chain: a changed URN is a delete and a create on the next `pulumi up`), the inputs each one is
registered with (a changed input is an update, or a replacement of a node), and the stack outputs.
Recorded under the mocks for the four stack files and the usual variants of a cluster on each cloud,
and compared with `tests/fixtures/resource_snapshot.json`.

After a change that is MEANT to alter the graph, rewrite the snapshot and review its diff:
    LEPTON_WRITE_SNAPSHOT=1 pytest tests/test_resource_snapshot.py"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest

from lepton_infra.components.args import TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "fixtures" / "resource_snapshot.json"
STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}
VARIANTS: dict[str, dict[str, Any]] = {
    "public": {},
    "private-nat": {"allowed_ssh_cidrs": ["10.8.0.0/16"]},
    "private-endpoints": {"allowed_ssh_cidrs": ["10.8.0.0/16"], "private_egress": "endpoints"},
    "multi-gpu": {"accelerator": "H100", "gpus_per_node": 8, "spot": True},
    "given-key-no-queue": {"ssh_public_key": PUBKEY, "queue": False, "nodes": 1},
}


def _stack_program(stack_file: Path) -> Callable[[], dict[str, Any]]:
    from test_program import stack_config_of, stack_program  # __main__.py as the engine runs it

    def program() -> dict[str, Any]:
        return stack_program()

    program.config = stack_config_of(stack_file)  # type: ignore[attr-defined]
    return program


def _variant_program(cloud: str, overrides: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from test_program import cluster_outputs

    base: dict[str, Any] = {
        "cloud": cloud,
        "accelerator": "T4",
        "nodes": 2,
        "region": REGION[cloud],
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "cluster": "demo",
        "env": "dev",
    }

    def program() -> dict[str, Any]:
        return cluster_outputs(TrainingCluster("demo", TrainingClusterArgs(**{**base, **overrides})))

    return program


def cases() -> Iterator[tuple[str, Callable[[], dict[str, Any]], str]]:
    for stack_file in STACKS:
        stack = stack_file.name.split(".")[1]
        yield f"stack/{stack}", _stack_program(stack_file), stack
    for cloud in REGION:
        for variant, overrides in VARIANTS.items():
            yield f"{cloud}/{variant}", _variant_program(cloud, overrides), "test"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(program: Callable[[], dict[str, Any]], stack: str) -> dict[str, Any]:
    """URN -> {input key: digest of its value} for every registered resource, plus the outputs."""
    harness.MOCKS.stable_ids = True
    try:
        outputs, rec = harness.build(program, stack=stack, config=getattr(program, "config", None))
    finally:
        harness.MOCKS.stable_ids = False
    assert all(r.urn for r in rec.resources), "every registration has its URN"
    resources = {
        r.urn: {key: _digest(value) for key, value in sorted(r.inputs.items())} for r in rec.resources
    }
    assert len(resources) == len(rec.resources), "URNs are unique"
    return {
        "resources": dict(sorted(resources.items())),
        "outputs": json.loads(json.dumps(outputs, default=str)),
    }


CASES = list(cases())


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    if os.environ.get("LEPTON_WRITE_SNAPSHOT"):
        SNAPSHOT.write_text(
            json.dumps({name: record(p, stack) for name, p, stack in CASES}, indent=1, sort_keys=True) + "\n"
        )
    return json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize(("name", "program", "stack"), CASES, ids=[c[0] for c in CASES])
def test_resources_urns_inputs_and_outputs_are_as_recorded(
    name: str, program: Callable[[], dict[str, Any]], stack: str, snapshot: dict[str, Any]
) -> None:
    want = snapshot[name]
    got = record(program, stack)
    assert sorted(set(got["resources"]) - set(want["resources"])) == [], "new URNs (creates)"
    assert sorted(set(want["resources"]) - set(got["resources"])) == [], "vanished URNs (deletes)"
    changed = {
        urn: sorted(
            key
            for key in {*want["resources"][urn], *got["resources"][urn]}
            if want["resources"][urn].get(key) != got["resources"][urn].get(key)
        )
        for urn in want["resources"]
        if want["resources"][urn] != got["resources"][urn]
    }
    assert changed == {}, "resources whose inputs changed (updates or replacements)"
    assert got["outputs"] == want["outputs"]


def test_the_recording_is_deterministic() -> None:
    """Two builds of one cluster record the same thing, so a difference above is the code's."""
    name, program, stack = next(c for c in CASES if c[0] == "aws/public")
    assert record(program, stack) == record(program, stack)
