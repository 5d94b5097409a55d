"""The component package (provider/ + lepton_infra.provider), checked offline.

The schema is produced by the Pulumi SDK's own ComponentProvider, the same object the plugin
serves to `pulumi package get-schema`; one test starts the real plugin process and asks it over
gRPC on loopback. The drift tests compare the package's TypedDicts with the components' `*Args`
dataclasses, and the mocks tests construct the wrappers to show they build the real components.
"""

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pulumi
import pulumi_harness
import pytest
import yaml

from lepton_infra.provider import PACKAGE, components, schema
from lepton_infra.provider.inputs import JobQueueInputs, ObjectStoreInputs, TrainingClusterInputs

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "provider"

# Which dataclass each served component's inputs must mirror (by name in lepton_infra.components.args).
PAIRS: dict[str, tuple[type, str]] = {
    "TrainingCluster": (TrainingClusterInputs, "TrainingClusterArgs"),
    "ObjectStore": (ObjectStoreInputs, "ObjectStoreArgs"),
    "JobQueue": (JobQueueInputs, "JobQueueArgs"),
}

# Dataclass fields deliberately NOT offered to other languages, with the reason. Empty today:
# even `extra` is typed (a map of `pulumi.json#/Any`). Add an entry only with a reason a reviewer
# can check, e.g. a field holding a Python object (a pulumi Resource, a callable) with no schema type.
EXCLUDED: dict[str, dict[str, str]] = {"TrainingCluster": {}, "ObjectStore": {}, "JobQueue": {}}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def drift(inputs: type, dataclass: type, excluded: dict[str, str]) -> list[str]:
    """Differences between a TypedDict and the dataclass it must mirror, as readable lines."""
    fields = {f.name: f for f in dataclasses.fields(dataclass)}
    keys = set(typing.get_type_hints(inputs))
    problems = [
        f"{dataclass.__name__}.{n} is missing from {inputs.__name__}"
        for n in sorted(set(fields) - keys - set(excluded))
    ]
    problems += [
        f"{inputs.__name__}.{n} is not a field of {dataclass.__name__}" for n in sorted(keys - set(fields))
    ]
    problems += [f"{n} is both excluded and offered" for n in sorted(keys & set(excluded))]
    for name in sorted(keys & set(fields)):
        f = fields[name]
        dc_required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        td_required = name in inputs.__required_keys__  # type: ignore[attr-defined]
        if dc_required != td_required:
            problems.append(
                f"{name}: required in {dataclass.__name__}={dc_required} but in {inputs.__name__}={td_required}"
            )
    return problems


@pytest.fixture(scope="module")
def pkg() -> dict[str, Any]:
    return schema()


# --- the schema ---------------------------------------------------------------------------------


def test_plugin_manifest_declares_a_python_runtime_and_an_entry_point() -> None:
    manifest = yaml.safe_load((PLUGIN_DIR / "PulumiPlugin.yaml").read_text(encoding="utf-8"))
    runtime = manifest["runtime"]
    assert (runtime if isinstance(runtime, str) else runtime["name"]) == "python"
    # The Python language host runs the plugin directory's __main__.py.
    assert (PLUGIN_DIR / "__main__.py").is_file()


def test_running_plugin_serves_the_schema_over_grpc(pkg: dict[str, Any]) -> None:
    # What `pulumi package get-schema ./provider` does, minus the CLI: start the plugin (its first
    # argument is the engine address, unused until a resource is constructed), read the port it
    # prints, and call GetSchema. Run from another directory so the plugin's own path set-up counts.
    grpc = pytest.importorskip("grpc")
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    proc = subprocess.Popen(
        [sys.executable, str(PLUGIN_DIR / "__main__.py"), "127.0.0.1:9"],
        cwd=ROOT.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()
        assert port.isdigit(), (
            f"plugin printed no port; stderr: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            reply = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = json.loads(reply.schema)
    assert served == pkg


def test_schema_is_json_naming_our_three_components(pkg: dict[str, Any]) -> None:
    assert json.loads(json.dumps(pkg)) == pkg
    assert pkg["name"] == PACKAGE == "lepton-infra"
    assert set(pkg["resources"]) == {
        "lepton-infra:index:TrainingCluster",
        "lepton-infra:index:ObjectStore",
        "lepton-infra:index:JobQueue",
    }
    assert all(r["isComponent"] for r in pkg["resources"].values())


@pytest.mark.parametrize("component", sorted(PAIRS))
def test_every_input_and_output_is_described(pkg: dict[str, Any], component: str) -> None:
    res = pkg["resources"][f"lepton-infra:index:{component}"]
    assert res["description"] and "\n    " not in res["description"]
    props = {**res["inputProperties"], **res["properties"]}
    undocumented = sorted(name for name, p in props.items() if not p.get("description"))
    assert not undocumented, f"{component}: no description for {undocumented}"


@pytest.mark.parametrize("component", sorted(PAIRS))
def test_every_input_is_described_as_the_model_describes_its_field(
    pkg: dict[str, Any], component: str
) -> None:
    """One description per field, in lepton_infra.components.args: the package's inputs repeat it."""
    from lepton_infra.components import args as model

    inputs, cls_name = PAIRS[component]
    res = pkg["resources"][f"lepton-infra:index:{component}"]
    cls = getattr(model, cls_name)
    differ = [
        name
        for name in typing.get_type_hints(inputs)
        if res["inputProperties"][camel(name)]["description"] != model.description(cls, name)
    ]
    assert not differ, f"{component}: descriptions differ from the model for {differ}"


@pytest.mark.parametrize("component", sorted(PAIRS))
def test_schema_inputs_are_the_typeddict_keys_camel_cased(pkg: dict[str, Any], component: str) -> None:
    inputs, _ = PAIRS[component]
    res = pkg["resources"][f"lepton-infra:index:{component}"]
    assert set(res["inputProperties"]) == {camel(k) for k in typing.get_type_hints(inputs)}
    assert set(res.get("requiredInputs", [])) == {camel(k) for k in inputs.__required_keys__}  # type: ignore[attr-defined]


def test_schema_types_the_inputs_users_set_most(pkg: dict[str, Any]) -> None:
    tc = pkg["resources"]["lepton-infra:index:TrainingCluster"]
    ins = tc["inputProperties"]
    assert set(tc["requiredInputs"]) == {"cloud", "accelerator"}
    assert ins["nodes"]["type"] == "integer"
    assert ins["gpusPerNode"]["type"] == "integer"
    assert ins["spot"]["type"] == "boolean"
    assert ins["allowedSshCidrs"]["type"] == "array" and ins["allowedSshCidrs"]["items"]["type"] == "string"
    assert ins["tags"]["additionalProperties"]["type"] == "string"
    assert ins["extra"]["additionalProperties"]["$ref"] == "pulumi.json#/Any"
    # Plain: the component needs known values to validate and to lay out the resource graph.
    assert all(p.get("plain") for p in ins.values())
    assert tc["properties"]["inventory"]["type"] == "string"
    # What a YAML/TypeScript program needs beside the inventory (issue: a generated key was unusable).
    outs = tc["properties"]
    assert {k: outs[k]["type"] for k in ("privateKey", "storeUrl", "queueUrl", "hourlyCostUsd")} == {
        "privateKey": "string",
        "storeUrl": "string",
        "queueUrl": "string",
        "hourlyCostUsd": "number",
    }
    assert tc["required"] == ["inventory"]
    q = pkg["resources"]["lepton-infra:index:JobQueue"]["properties"]
    assert set(q) == {"url", "deadLetterUrl"}
    assert set(pkg["resources"]["lepton-infra:index:ObjectStore"]["properties"]) == {"url"}


# --- drift against the components' dataclasses --------------------------------------------------


def test_drift_check_reports_added_removed_and_requiredness_changes() -> None:
    # The checker itself, on made-up classes, so the real comparison below cannot pass vacuously.
    @dataclasses.dataclass
    class Args:
        cloud: str
        nodes: int = 1
        brand_new: bool = False

    class Inputs(typing.TypedDict):
        cloud: typing.NotRequired[str]
        nodes: typing.NotRequired[int]
        stale: typing.NotRequired[str]

    assert drift(Inputs, Args, {}) == [
        "Args.brand_new is missing from Inputs",
        "Inputs.stale is not a field of Args",
        "cloud: required in Args=True but in Inputs=False",
    ]
    assert "Args.brand_new is missing from Inputs" not in drift(Inputs, Args, {"brand_new": "reason"})


def test_inputs_file_is_what_the_generator_renders_from_the_models() -> None:
    """inputs.py is generated (the analyzer reads descriptions from source): a model field added,
    renamed or re-described without `python -m lepton_infra.provider.generate` fails here."""
    from lepton_infra.provider import generate

    assert generate.INPUTS_FILE.read_text(encoding="utf-8") == generate.render(), (
        "lepton_infra/provider/inputs.py is out of date: run python -m lepton_infra.provider.generate"
    )
    assert generate.main(["--check"]) == 0


def test_generator_refuses_a_field_type_it_has_no_schema_type_for() -> None:
    from lepton_infra.provider.generate import type_text

    assert type_text(dict[str, typing.Any] | None) == "dict[str, Any]"
    with pytest.raises(TypeError, match="SCHEMA_TYPES"):
        type_text(set[int])


@pytest.mark.parametrize("component", sorted(PAIRS))
def test_typeddict_fields_match_the_component_dataclass(component: str) -> None:
    from lepton_infra.components import args as component_args

    inputs, dataclass_name = PAIRS[component]
    dataclass = getattr(component_args, dataclass_name)
    assert not drift(inputs, dataclass, EXCLUDED[component])


def test_served_classes_are_the_wrappers_with_their_own_tokens() -> None:
    assert [c.__name__ for c in components()] == ["TrainingCluster", "ObjectStore", "JobQueue"]


# --- constructing the wrappers under mocks ------------------------------------------------------


class RecordingMocks(pulumi_harness.Recorder):
    """The shared mocks (plausible outputs, invokes answered), also keeping each registration's raw
    arguments (components included) in `raw`."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.raw.append(args)
        return super().new_resource(args)


@pytest.fixture
def mocks() -> RecordingMocks:
    m = RecordingMocks()
    # Before the wrapper imports lepton_infra.components (it does so lazily, at construction).
    pulumi_harness.install(m, stack="ci")
    return m


@pulumi.runtime.test
def test_object_store_wrapper_builds_the_real_component_as_its_child(mocks: RecordingMocks) -> Any:
    from lepton_infra.provider.components import ObjectStore

    wrapper = ObjectStore("data", {"cloud": "aws", "region": "us-east-1", "retention_days": 30})

    def check(values: list[Any]) -> None:
        child_urn, url = values
        # The child's URN carries its parent's type: the real component lives under the wrapper.
        assert "lepton-infra:index:ObjectStore$lepton:storage:ObjectStore::data" in child_urn
        assert url.startswith("s3://")
        types = [r.typ for r in mocks.raw]
        assert "aws:s3/bucket:Bucket" in types

    return pulumi.Output.all(wrapper.store.urn, wrapper.url).apply(check)


@pulumi.runtime.test
def test_training_cluster_wrapper_exports_the_generated_key_as_a_secret_and_the_urls(
    mocks: RecordingMocks,
) -> Any:
    from lepton_infra.provider.components import TrainingCluster

    wrapper = TrainingCluster(
        "c",
        {"cloud": "aws", "accelerator": "T4", "region": "us-east-1", "allowed_ssh_cidrs": ["203.0.113.0/24"]},
    )
    secret = wrapper.private_key.is_secret()

    def check(values: list[Any]) -> None:
        key, is_secret, store, queue, cost = values
        assert "OPENSSH PRIVATE KEY" in key and is_secret is True
        assert store.startswith("s3://") and queue.startswith("https://sqs.")
        assert cost > 0

    return pulumi.Output.all(
        wrapper.private_key, secret, wrapper.store_url, wrapper.queue_url, wrapper.hourly_cost_usd
    ).apply(check)


@pulumi.runtime.test
def test_job_queue_wrapper_builds_the_real_component_as_its_child(mocks: RecordingMocks) -> Any:
    from lepton_infra.provider.components import JobQueue

    wrapper = JobQueue("jobs", {"cloud": "aws", "region": "us-east-1", "max_receive_count": 3})

    def check(values: list[Any]) -> None:
        child_urn, url, dlq = values
        assert "lepton-infra:index:JobQueue$lepton:queue:JobQueue::jobs" in child_urn
        assert url and dlq and url != dlq
        assert [r.typ for r in mocks.raw].count("aws:sqs/queue:Queue") == 2

    return pulumi.Output.all(wrapper.queue.urn, wrapper.url, wrapper.dead_letter_url).apply(check)


@pulumi.runtime.test
def test_provider_construct_maps_camel_case_inputs_onto_the_component(mocks: RecordingMocks) -> Any:
    # The path a YAML/TypeScript program takes: the engine calls Construct with schema (camelCase)
    # names and wire values (numbers as floats); the host maps them onto the TypedDict.
    from pulumi.provider.experimental.component import ComponentProvider

    provider = ComponentProvider(components(), PACKAGE, None, "0.0.0")
    result = provider.construct(
        "jobs",
        "lepton-infra:index:JobQueue",
        {"cloud": "aws", "maxReceiveCount": 7.0, "visibilityTimeoutS": 120.0},
    )

    def check(_: Any) -> None:
        (main_queue,) = [
            r for r in mocks.raw if r.typ == "aws:sqs/queue:Queue" and "redrivePolicy" in r.inputs
        ]
        assert json.loads(main_queue.inputs["redrivePolicy"])["maxReceiveCount"] == 7
        assert main_queue.inputs["visibilityTimeoutSeconds"] == 120
        assert set(result.state) == {"url", "deadLetterUrl"}

    # Wait for the outputs too: the queue registers only once its redrive policy (the DLQ's ARN) is known.
    return pulumi.Output.all(result.urn, *result.state.values()).apply(check)


@pulumi.runtime.test
def test_invalid_input_surfaces_the_component_config_error(mocks: RecordingMocks) -> None:
    from lepton_infra.errors import ConfigError
    from lepton_infra.provider.components import ObjectStore

    with pytest.raises(ConfigError) as err:
        ObjectStore("data", {"cloud": "ibm"})
    assert "ibm" in str(err.value)


def test_yaml_example_in_the_docs_uses_only_what_the_schema_offers(pkg: dict[str, Any]) -> None:
    doc = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    (program,) = [b for b in blocks if isinstance(b, dict) and b.get("runtime") == "yaml"]
    used = {name: r for name, r in program["resources"].items() if r["type"].startswith(f"{PACKAGE}:")}
    assert any(r["type"] == "lepton-infra:index:TrainingCluster" for r in used.values())
    for name, r in used.items():
        spec = pkg["resources"][r["type"]]
        assert set(r["properties"]) <= set(spec["inputProperties"]), name
        assert set(spec.get("requiredInputs", [])) <= set(r["properties"]), name
    for expr in program["outputs"].values():
        resource, prop = re.fullmatch(r"\$\{(\w+)\.(\w+)\}", expr).groups()  # type: ignore[union-attr]
        assert prop in pkg["resources"][used[resource]["type"]]["properties"], expr
