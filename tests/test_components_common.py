"""The cloud-neutral layer: tags and labels, the `extra` escape hatch, naming, SSH source checks, the
args validation every cloud shares, lazy per-cloud dispatch, and TrainingCluster's own behaviour
(generated login key, inventory, cost) on the real AWS backend under mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pulumi_tls as tls
import pytest

from lepton_infra.catalog import lookup
from lepton_infra.components import (
    JobQueueArgs,
    ObjectStore,
    ObjectStoreArgs,
    TrainingCluster,
    TrainingClusterArgs,
)
from lepton_infra.components.args import GpuVmPoolArgs, check_cidrs, check_public_key
from lepton_infra.components.common import (
    TAG_CLUSTER,
    TAG_ENV,
    compact_name,
    gcp_labels,
    ipv4_ssh_cidrs,
    merge_extra,
    ssh_needs_public_ip,
    tags_for,
    typed_args,
)
from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory

ROOT = Path(__file__).resolve().parent.parent
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
LOGIN_KEY = "tls:index/privateKey:PrivateKey"


# ---------------------------------------------------------------- tags, labels, extra, names


def test_cluster_and_env_tags_cannot_be_overridden_by_user_tags() -> None:
    tags = tags_for("demo", "dev", {"team": "ml", TAG_CLUSTER: "sneaky"}, role="pool")
    assert tags == {"team": "ml", "role": "pool", TAG_CLUSTER: "demo", TAG_ENV: "dev"}


def test_gcp_labels_use_dashes_lowercase_and_63_characters() -> None:
    labels = gcp_labels(
        {"lepton:cluster": "Demo.Cluster", "lepton:idle-shutdown-minutes": "30", "x" * 70: "v"}
    )
    assert labels["lepton-cluster"] == "demo-cluster"
    assert labels["lepton-idle-shutdown-minutes"] == "30"
    assert all(len(k) <= 63 for k in labels)


def test_extra_wins_and_merges_nested_settings_key_by_key() -> None:
    base = {"instance_type": "g4dn.xlarge", "metadata_options": {"http_tokens": "required", "hop": 1}}
    merged = merge_extra(base, {"metadata_options": {"hop": 2}, "ebs_optimized": True})
    assert merged == {
        "instance_type": "g4dn.xlarge",
        "metadata_options": {"http_tokens": "required", "hop": 2},
        "ebs_optimized": True,
    }
    assert base["metadata_options"] == {"http_tokens": "required", "hop": 1}  # input left alone


def test_a_misspelled_provider_argument_is_a_config_error_listing_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        typed_args(tls.PrivateKeyArgs, {"algorythm": "ED25519"})
    assert "algorythm" in str(info.value) and "algorithm" in str(info.value)
    typed = typed_args(tls.PrivateKeyArgs, {"algorithm": "ED25519"})
    assert isinstance(typed, tls.PrivateKeyArgs)


def test_compact_names_fit_the_limit_and_stay_distinct_and_stable() -> None:
    a, b = compact_name("Prod-Cluster_store", 24), compact_name("prod-cluster-store2", 24)
    assert a == compact_name("Prod-Cluster_store", 24)
    assert a != b and all(len(n) <= 24 and n.isalnum() and n.islower() for n in (a, b))


@pytest.mark.parametrize(
    ("cidrs", "public"),
    [
        (["10.8.0.0/16"], False),  # a VPN range: reached through peering, no public IP
        (["100.64.0.0/10", "fd00::/8"], False),
        (["203.0.113.0/24"], True),
        (["10.0.0.0/8", "198.51.100.7/32"], True),
    ],
)
def test_a_public_ip_only_when_ssh_may_come_from_outside_internal_space(
    cidrs: list[str], public: bool
) -> None:
    assert ssh_needs_public_ip(cidrs) is public


def test_ipv4_only_pools_drop_ipv6_sources_and_refuse_an_ipv6_only_list() -> None:
    assert ipv4_ssh_cidrs(["203.0.113.0/24", "2001:db8::/32"], "azure") == ["203.0.113.0/24"]
    with pytest.raises(ConfigError, match="only IPv6"):
        ipv4_ssh_cidrs(["2001:db8::/32"], "azure")


# ---------------------------------------------------------------- shared validation


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        (["10.0.0.1/8"], "host bits set"),
        (["203.0.113.0/24", "not-a-cidr"], "allowed_ssh_cidrs[1]"),
        ("203.0.113.0/24", "a list of CIDR blocks"),
        (["::/0"], "allow_world_ssh"),
    ],
)
def test_bad_ssh_sources_name_the_entry_and_the_fix(cidrs: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_cidrs(cidrs, allow_world=False)


def test_a_public_key_whose_data_disagrees_with_its_type_is_rejected() -> None:
    body = PUBKEY.split()[1]
    with pytest.raises(ConfigError, match="the key data says 'ssh-ed25519'"):
        check_public_key(f"ssh-rsa {body}")
    assert check_public_key(PUBKEY + "  extra words\n") == PUBKEY  # comment kept, rest dropped


def test_pool_args_refuse_an_empty_ssh_list_and_a_missing_key() -> None:
    base: dict[str, Any] = {"cloud": "aws", "accelerator": "T4", "ssh_public_key": PUBKEY}
    with pytest.raises(ConfigError, match="allowed_ssh_cidrs is empty"):
        GpuVmPoolArgs(**base).validate()
    with pytest.raises(ConfigError, match="ssh_public_key is not set"):
        GpuVmPoolArgs(**{**base, "ssh_public_key": None, "allowed_ssh_cidrs": ["10.0.0.0/8"]}).validate()
    with pytest.raises(ConfigError, match="nodes is 65"):
        GpuVmPoolArgs(**base, allowed_ssh_cidrs=["10.0.0.0/8"], nodes=65).validate()


def test_a_bad_queue_option_fails_the_whole_cluster_before_any_resource() -> None:
    with pytest.raises(ConfigError, match="queue_max_receive_count is 0"):
        harness.build(lambda: TrainingCluster("demo", cluster_args(queue_max_receive_count=0)))
    assert harness.MOCKS.resources == []


def test_a_neutral_store_validates_before_registering_anything() -> None:
    with pytest.raises(ConfigError, match="retention_days is 0"):
        harness.build(lambda: ObjectStore("s", ObjectStoreArgs(cloud="aws", retention_days=0)))
    assert harness.MOCKS.resources == []
    with pytest.raises(ConfigError, match="cloud is 'oracle'; allowed: aws, gcp, azure"):
        JobQueueArgs(cloud="oracle").validate()


# ---------------------------------------------------------------- lazy dispatch


def test_an_aws_stack_loads_neither_the_gcp_nor_the_azure_sdk() -> None:
    """Run in a fresh interpreter: this pytest process has long imported every SDK."""
    script = """
import sys
sys.path.insert(0, "tests")
import pulumi_harness as harness
import lepton_infra.components as c
after_import = sorted(m for m in ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native") if m in sys.modules)
harness.build(lambda: c.JobQueue("q", c.JobQueueArgs(cloud="aws")))
after_build = sorted(m for m in ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native") if m in sys.modules)
print(after_import, after_build)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[] ['pulumi_aws']"


# ---------------------------------------------------------------- TrainingCluster


def cluster_args(**overrides: Any) -> TrainingClusterArgs:
    base: dict[str, Any] = {
        "cloud": "aws",
        "accelerator": "T4",
        "nodes": 2,
        "region": "us-east-1",
        "spot": True,
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
    }
    return TrainingClusterArgs(**{**base, **overrides})


def outputs_of(cluster: TrainingCluster) -> dict[str, Any]:
    outs: dict[str, Any] = {"inventory": cluster.inventory, "cost": cluster.hourly_cost_usd}
    if cluster.private_key is not None:
        outs["private_key"] = cluster.private_key
        # Output.from_input turns the awaitable into an output the harness resolves with the rest.
        outs["private_key_is_secret"] = pulumi.Output.from_input(cluster.private_key.is_secret())
    return outs


def test_without_a_public_key_the_cluster_generates_one_and_keeps_the_private_half_secret() -> None:
    out, rec = harness.build(lambda: outputs_of(TrainingCluster("demo", cluster_args())), stack="dev")
    (login,) = [r for r in rec.of(LOGIN_KEY) if r.name == "demo-login"]
    assert login.inputs["algorithm"] == "ED25519"
    assert "PRIVATE KEY" in out["private_key"] and out["private_key_is_secret"] is True
    # The nodes authorise exactly the generated key: it is in every instance's cloud-init.
    generated = login.outputs["publicKeyOpenssh"].strip()
    instances = rec.of("aws:ec2/instance:Instance")
    assert len(instances) == 2 and all(generated in i.inputs["userData"] for i in instances)
    inventory = Inventory.from_json(out["inventory"])
    assert inventory.private_key_path is None  # `lepton-infra inventory --stack` writes the key file
    assert "PRIVATE KEY" not in out["inventory"]


def test_with_a_public_key_no_login_key_is_generated_or_exported() -> None:
    out, rec = harness.build(lambda: outputs_of(TrainingCluster("demo", cluster_args(ssh_public_key=PUBKEY))))
    assert not [r for r in rec.of(LOGIN_KEY) if r.name == "demo-login"]
    assert "private_key" not in out
    assert all(PUBKEY in i.inputs["userData"] for i in rec.of("aws:ec2/instance:Instance"))


def test_inventory_lists_every_node_with_its_pinned_host_key_and_the_store_and_queue() -> None:
    out, rec = harness.build(lambda: outputs_of(TrainingCluster("demo", cluster_args(ssh_public_key=PUBKEY))))
    doc = json.loads(out["inventory"])
    inventory = Inventory.from_json(out["inventory"])
    assert (doc["version"], inventory.cluster, inventory.cloud, inventory.user) == (
        1,
        "demo",
        "aws",
        "lepton",
    )
    host_keys = [r.outputs["publicKeyOpenssh"].strip() for r in rec.of(LOGIN_KEY) if "-hostkey-" in r.name]
    assert [n.host_key for n in inventory.nodes] == host_keys and len(set(host_keys)) == 2
    assert [n.name for n in inventory.nodes] == ["node-0", "node-1"]
    assert [n.host for n in inventory.nodes] != [n.private_ip for n in inventory.nodes]  # SSH via public IP
    assert all(n.gpus == 1 and n.accelerator == "T4" for n in inventory.nodes)
    (bucket,) = rec.of("aws:s3/bucket:Bucket")
    assert inventory.store == f"s3://{bucket.outputs['bucket']}"
    (main_queue,) = [q for q in rec.of("aws:sqs/queue:Queue") if "redrivePolicy" in q.inputs]
    assert inventory.queue == main_queue.outputs["url"]


def test_a_cluster_without_store_and_queue_creates_neither_and_says_so_in_the_inventory() -> None:
    out, rec = harness.build(
        lambda: outputs_of(
            TrainingCluster("demo", cluster_args(ssh_public_key=PUBKEY, store=False, queue=False))
        )
    )
    assert not rec.of("aws:s3/bucket:Bucket") and not rec.of("aws:sqs/queue:Queue")
    inventory = Inventory.from_json(out["inventory"])
    assert inventory.store is None and inventory.queue is None


@pytest.mark.parametrize("spot", [True, False])
def test_hourly_cost_is_the_catalog_price_times_the_nodes(spot: bool) -> None:
    out, _ = harness.build(
        lambda: outputs_of(TrainingCluster("demo", cluster_args(ssh_public_key=PUBKEY, spot=spot, nodes=3)))
    )
    price = lookup("aws", "T4", 1, "us-east-1").hourly_usd(spot)
    assert price is not None and out["cost"] == pytest.approx(price * 3)
    # The inventory carries the same price per node, and the market, for the runs' cost.
    carried = Inventory.from_json(out["inventory"]).price
    assert carried is not None and carried.usd_per_node_hour == pytest.approx(price)
    assert carried.market == ("spot" if spot else "on-demand") and carried.instance_type == "g4dn.xlarge"


def test_every_resource_is_tagged_with_the_cluster_and_the_stack_as_env() -> None:
    _, rec = harness.build(lambda: outputs_of(TrainingCluster("demo", cluster_args())), stack="dev")
    tagged = [r for r in rec.resources if r.type.startswith("aws:") and "tags" in r.inputs]
    assert tagged, "no tagged AWS resources recorded"
    assert all(r.inputs["tags"][TAG_CLUSTER] == "demo" and r.inputs["tags"][TAG_ENV] == "dev" for r in tagged)


def test_user_data_holds_no_key_material_and_is_no_secret() -> None:
    from lepton_infra.components.cloudinit import cloud_init

    def program() -> dict[str, Any]:
        data = cloud_init(
            user="lepton",
            authorized_key=PUBKEY,
            host_public_key=PUBKEY,
            host_key_fetch="secret-store-cli get node-0",
            idle_shutdown_minutes=30,
            max_lifetime_hours=12,
            cluster="demo",
        )
        return {"data": data, "secret": pulumi.Output.from_input(data.is_secret())}

    out, _ = harness.build(program)
    assert out["secret"] is False and "PRIVATE KEY" not in out["data"]
    assert "secret-store-cli get node-0" in out["data"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("storeRetentionDays", "0", "lepton:storeRetentionDays is 0; allowed: a whole number from 1"),
        ("queueVisibilityTimeoutS", "50000", "lepton:queueVisibilityTimeoutS is 50000; allowed"),
        ("queueMaxReceiveCount", "0", "lepton:queueMaxReceiveCount is 0; allowed"),
    ],
)
def test_stack_config_errors_in_store_and_queue_options_name_the_lepton_key(
    key: str, value: str, expected: str
) -> None:
    from lepton_infra import config as stack_config

    raw = {
        "cloud": "aws",
        "region": "us-east-1",
        "accelerator": "T4",
        "allowedSshCidrs": '["203.0.113.0/24"]',
        key: value,
    }
    with pytest.raises(ConfigError) as info:
        stack_config.parse(raw, cluster="c", env="dev")
    assert str(info.value).startswith(expected)


def test_the_cli_can_turn_stack_output_into_an_inventory_without_the_pulumi_sdk(tmp_path: Path) -> None:
    """`lepton-infra inventory --stack` runs where only the base install exists (no `pulumi` extra):
    a fresh interpreter in which importing pulumi fails."""
    outputs = {
        "inventory": json.dumps(
            {
                "version": 1,
                "cluster": "lepton-dev-aws",
                "cloud": "aws",
                "user": "lepton",
                "private_key_path": None,
                "nodes": [
                    {"name": "node-0", "host": "203.0.113.9", "private_ip": "10.0.1.9", "host_key": PUBKEY}
                ],
            }
        ),
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
    }
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    script = f"""
import sys
from pathlib import Path
sys.modules["pulumi"] = None  # `import pulumi` raises ImportError from here on
from lepton_infra.components.stack_inventory import inventory_from_stack_output
inv = inventory_from_stack_output(Path({str(tmp_path / "outputs.json")!r}).read_text(), Path({str(tmp_path)!r}))
print(inv.private_key_path)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    key = Path(out.stdout.strip())
    assert key == (tmp_path / "lepton-dev-aws_id_ed25519").resolve()
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text().endswith("-----\n")


def test_inventories_of_two_stacks_in_one_folder_keep_their_own_login_keys(tmp_path: Path) -> None:
    from lepton_infra.components.stack_inventory import inventory_from_stack_output

    def outputs(cluster: str, key: str) -> str:
        doc = {
            "version": 1,
            "cluster": cluster,
            "cloud": "aws",
            "user": "lepton",
            "nodes": [
                {"name": "node-0", "host": "203.0.113.9", "private_ip": "10.0.1.9", "host_key": PUBKEY}
            ],
        }
        private = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{key}\n-----END OPENSSH PRIVATE KEY-----\n"
        return json.dumps({"inventory": json.dumps(doc), "private_key": private})

    aws_inv = inventory_from_stack_output(outputs("lepton-dev-aws", "aws"), tmp_path)
    gcp_inv = inventory_from_stack_output(outputs("lepton-dev-gcp", "gcp"), tmp_path)
    assert aws_inv.private_key_path != gcp_inv.private_key_path
    assert "aws" in Path(aws_inv.private_key_path or "").read_text()
    assert "gcp" in Path(gcp_inv.private_key_path or "").read_text()


def test_pulumi_yaml_defaults_are_the_component_defaults() -> None:
    """`pulumi config` shows Pulumi.yaml's defaults; they must be what the program really uses."""
    import dataclasses

    import yaml

    from lepton_infra import config as stack_config

    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    field_defaults = {f.name: f.default for f in dataclasses.fields(TrainingClusterArgs)}
    for spec in stack_config.KEYS:
        default = field_defaults.get(spec.field, dataclasses.MISSING)
        if default in (None, dataclasses.MISSING) or spec.required:
            assert "default" not in declared[spec.name], spec.name
        else:
            assert declared[spec.name].get("default") == default, spec.name


def test_one_args_object_can_build_two_clusters_each_with_its_own_name_and_key() -> None:
    args = cluster_args(nodes=1)

    def program() -> dict[str, Any]:
        first, second = TrainingCluster("alpha", args), TrainingCluster("beta", args)
        return {"alpha": first.inventory, "beta": second.inventory, "beta_key": second.private_key}

    out, rec = harness.build(program, stack="dev")
    assert args.cluster is None and args.ssh_public_key is None  # the caller's args are left alone
    assert json.loads(out["alpha"])["cluster"] == "alpha" and json.loads(out["beta"])["cluster"] == "beta"
    assert "PRIVATE KEY" in out["beta_key"]
    keys = {r.name: r.outputs["publicKeyOpenssh"].strip() for r in rec.of(LOGIN_KEY)}
    by_cluster = {
        i.inputs["tags"][TAG_CLUSTER]: i.inputs["userData"] for i in rec.of("aws:ec2/instance:Instance")
    }
    assert keys["alpha-login"] in by_cluster["alpha"] and keys["beta-login"] not in by_cluster["alpha"]
    assert keys["beta-login"] in by_cluster["beta"]


# ---------------------------------------------------------------- the program, configured like the engine does


def run_program_with_engine_config(monkeypatch: pytest.MonkeyPatch, config: dict[str, str]) -> dict[str, Any]:
    """The language host hands a program its stack config as JSON in PULUMI_CONFIG (not through
    `set_all_config`); `__main__.py` must read and check keys that arrive that way too."""
    import runpy

    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))

    def program() -> dict[str, Any]:
        namespace = runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        return {"inventory": namespace["cluster"].inventory}

    out, _ = harness.build(program, stack="dev-aws")
    return out


ENGINE_CONFIG = {
    "lepton:cloud": "aws",
    "lepton:region": "us-east-1",
    "lepton:accelerator": "T4",
    "lepton:nodes": "2",
    "lepton:allowedSshCidrs": '["203.0.113.0/24"]',
}


def test_the_program_reads_stack_config_handed_over_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = run_program_with_engine_config(monkeypatch, ENGINE_CONFIG)
    inventory = Inventory.from_json(out["inventory"])
    assert inventory.cluster.endswith("-dev-aws")  # <project>-<stack>
    assert len(inventory.nodes) == 2


def test_a_misspelled_key_in_the_environment_is_rejected_before_any_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="unknown config key lepton:node \\(did you mean lepton:nodes"):
        run_program_with_engine_config(monkeypatch, {**ENGINE_CONFIG, "lepton:node": "3"})
    assert harness.MOCKS.resources == []


# ---------------------------------------------------------------- each cloud's own checks, up front


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"lepton:zone": "us-west-2a"}, "lepton:zone is 'us-west-2a'; allowed on aws"),
        ({"lepton:image": "ubuntu-22.04"}, "lepton:image is 'ubuntu-22.04'; allowed on aws"),
        (
            {"lepton:cloud": "gcp", "lepton:region": "us-central1", "lepton:zone": "europe-west1-b"},
            "lepton:zone 'europe-west1-b' is not in region 'us-central1'",
        ),
        (
            {"lepton:cloud": "gcp", "lepton:region": "us-central1", "lepton:image": "ubuntu 22.04"},
            "lepton:image is 'ubuntu 22.04'; allowed on gcp",
        ),
        (
            {"lepton:cloud": "azure", "lepton:region": "eastus", "lepton:zone": "eastus-1"},
            "lepton:zone is 'eastus-1'; allowed on azure",
        ),
        (
            {"lepton:cloud": "azure", "lepton:region": "eastus", "lepton:image": "ubuntu"},
            "lepton:image is 'ubuntu'; allowed on azure",
        ),
    ],
)
def test_a_cloud_specific_mistake_fails_the_program_before_any_resource(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, str], expected: str
) -> None:
    """Zone and image forms are each cloud's business, but they must still fail before the cluster's
    store and queue exist, naming the config key."""
    with pytest.raises(ConfigError) as info:
        run_program_with_engine_config(monkeypatch, {**ENGINE_CONFIG, **config})
    assert str(info.value).startswith(expected)
    assert harness.MOCKS.resources == []


def test_a_library_user_gets_the_cloud_checks_before_any_resource_too() -> None:
    args = cluster_args(ssh_public_key=PUBKEY, network={"subnet_id": "subnet-1"})  # AWS needs vpc_id too
    with pytest.raises(ConfigError, match="network for aws is"):
        harness.build(lambda: TrainingCluster("demo", args))
    assert harness.MOCKS.resources == []
    typo = cluster_args(ssh_public_key=PUBKEY, extra={"metadata_option": {"http_tokens": "optional"}})
    with pytest.raises(ConfigError, match="metadata_option"):
        harness.build(lambda: TrainingCluster("demo", typo))
    assert harness.MOCKS.resources == []


def test_a_config_mistake_reaches_pulumi_as_a_clean_run_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pulumi.RunError is printed as its message alone (Pulumi's own config errors are RunErrors),
    not as a traceback with program source; it is still a ConfigError for code and tests."""
    with pytest.raises(pulumi.RunError) as info:
        run_program_with_engine_config(monkeypatch, {**ENGINE_CONFIG, "lepton:nodes": "0"})
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == "lepton:nodes is 0; allowed: a whole number from 1 to 64"
