"""Run a Pulumi program under mocks, record every resource it registers, and run the policy pack's
rules over the records the way the engine would (wire-format props, provider default tags, stack
rules over the whole set). Used by tests/test_policy.py for the stacks and the insecure fixture."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "policy") not in sys.path:
    sys.path.insert(0, str(ROOT / "policy"))

import pulumi_harness  # noqa: E402
from lepton_policy import rules  # noqa: E402


@dataclass
class Recorded:
    """One resource as the engine would show it to the policy pack."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider_ref: str | None
    id: str

    @property
    def urn(self) -> str:
        return f"urn:pulumi:test::lepton-infra::{self.type}::{self.name}"


def _plain(value: Any) -> Any:
    # Mock inputs are plain JSON-like values once resolved; round-trip to drop anything exotic.
    return json.loads(json.dumps(value, default=str))


def stack_config(stack_file: Path) -> dict[str, Any]:
    """Project defaults from Pulumi.yaml's `config:` schema, overlaid with the stack file's values."""
    config: dict[str, Any] = {}
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text()) if (ROOT / "Pulumi.yaml").exists() else {}
    name = (project or {}).get("name", "lepton-infra")
    for key, spec in ((project or {}).get("config") or {}).items():
        full = key if ":" in key else f"{name}:{key}"
        if isinstance(spec, Mapping) and "default" in spec:
            config[full] = spec["default"]
        elif not isinstance(spec, Mapping):
            config[full] = spec
    stack = yaml.safe_load(stack_file.read_text()) or {}
    config.update(stack.get("config") or {})
    return config


def run_program(
    program: Path, config: Mapping[str, Any], *, stack: str = "test", region: str = "us-east-1"
) -> list[Recorded]:
    """Evaluate a Pulumi program file under mocks with `config`; return every registered resource."""
    # The one shared mocks implementation (tests/pulumi_harness.py): the same plausible outputs and
    # invoke answers the component tests use.
    mocks = pulumi_harness.Recorder()
    pulumi_harness.install(
        mocks, stack=stack, config={k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    )

    @pulumi.runtime.test
    def evaluate() -> None:
        runpy.run_path(str(program), run_name="__main__")

    evaluate()
    return [Recorded(r.type, r.name, r.inputs, r.provider, r.id) for r in mocks.resources]


@dataclass(frozen=True)
class Finding:
    policy: str
    level: EnforcementLevel
    resource: str | None
    type: str | None
    message: str


def _opts() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def _provider_for(r: Recorded, by_urn: Mapping[str, Recorded]) -> PolicyProviderResource | None:
    if not r.provider_ref:
        return None
    urn = r.provider_ref.rsplit("::", 1)[0]
    type_, _, name = urn.rpartition("::")
    type_ = type_.rsplit("::", 1)[-1]
    match = by_urn.get(f"{type_}::{name}")
    if match is None:
        return None
    return PolicyProviderResource(match.type, unknown_checking_proxy(match.inputs), match.urn, match.name)


def analyze(
    resources: list[Recorded], config: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Finding]:
    """Every violation every rule reports over the recorded resources."""
    config = config or {}
    by_key = {f"{r.type}::{r.name}": r for r in resources}
    findings: list[Finding] = []
    for policy in rules.RESOURCE_POLICIES:
        for r in resources:
            args = ResourceValidationArgs(
                r.type,
                unknown_checking_proxy(r.inputs),
                r.urn,
                r.name,
                _opts(),
                _provider_for(r, by_key),
                dict(config.get(policy.name, {})),
            )
            reported: list[str] = []
            policy.validate(args, lambda message, urn=None, out=reported: out.append(message))
            findings += [Finding(policy.name, policy.enforcement_level, r.name, r.type, m) for m in reported]
    stack_resources = [
        PolicyResource(
            r.type,
            unknown_checking_proxy({**r.inputs, "id": r.id}),
            r.urn,
            r.name,
            _opts(),
            None,
            None,
            [],
            {},
        )
        for r in resources
    ]
    names = {r.urn: r for r in resources}
    from pulumi_policy import StackValidationArgs

    for spolicy in rules.STACK_POLICIES:
        reported_s: list[tuple[str, str | None]] = []
        spolicy.validate(
            StackValidationArgs(stack_resources, dict(config.get(spolicy.name, {}))),
            lambda message, urn=None, out=reported_s: out.append((message, urn)),
        )
        for message, urn in reported_s:
            rec = names.get(urn or "")
            findings.append(
                Finding(
                    spolicy.name,
                    spolicy.enforcement_level,
                    rec.name if rec else None,
                    rec.type if rec else None,
                    message,
                )
            )
    return findings


def mandatory(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == EnforcementLevel.MANDATORY]
